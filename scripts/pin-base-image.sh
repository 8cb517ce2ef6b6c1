#!/usr/bin/env bash
# Pins the sender image's base: resolves python:3.11-slim to its current linux/amd64
# digest and writes image/base-image (python:3.11-slim@sha256:<digest>). Needs Docker
# and access to Docker Hub. Run it to take in a new Python patch or Debian security
# fixes; commit the file, and the next `cdk deploy` builds on exactly that base.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=python:3.11-slim
docker pull --quiet --platform linux/amd64 "$tag" >/dev/null
# RepoDigests holds the manifest-list digest: the same for every platform, so the
# pin is valid for the Fargate build whatever machine resolved it.
pinned=$(docker image inspect --format '{{index .RepoDigests 0}}' "$tag")
digest=${pinned#*@}
case "$digest" in
  sha256:????????????????????????????????????????????????????????????????) ;;
  *) echo "unexpected digest from docker: $pinned" >&2; exit 1 ;;
esac
echo "$tag@$digest" > image/base-image
echo "image/base-image: $tag@$digest"
