# The Quiver sender image (ECS Fargate, linux/amd64). Built by `cdk deploy` from the
# repo root; .dockerignore keeps the context to what the package needs.
# The base comes from image/base-image (python:3.11-slim@sha256:<digest> once pinned
# with scripts/pin-base-image.sh); cdk/sender_service.py passes it. No default here:
# a build that names no base fails instead of taking whatever the tag points at today.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/quiver
# Runtime dependencies at the exact versions the tests ran against, each file checked
# against its hash (image/requirements.lock); then the package alone, no resolving.
COPY image/requirements.lock ./
COPY pyproject.toml README.md ./
COPY quiver ./quiver
# A non-root user with no shell and no home: the sender needs neither.
RUN pip install --no-compile --require-hashes --prefer-binary -r requirements.lock \
 && pip install --no-compile --no-deps . \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin quiver \
 && rm -rf /opt/quiver/quiver

USER 10001:10001
WORKDIR /tmp
# The sender drains on SIGTERM (stop receiving, finish or abandon open transactions,
# make unfinished messages visible); ECS sends it and waits the task's stopTimeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["quiver"]
CMD ["sender", "--config", "ssm:/quiver/policy"]
