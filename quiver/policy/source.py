"""Where a policy comes from: a file path, `ssm:<parameter name>` (small policies), or
`s3://<bucket>/<key>` (a versioned object: what a deployed sender reads).

An SSM parameter holds at most 8 KB, which a fleet of about 50 sources outgrows;
an S3 object has no such cap, so deployments publish the policy there and `ssm:`
stays for small or older setups.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from quiver.policy.load import PolicyError, parse_policy
from quiver.policy.model import Policy

SSM_PREFIX = "ssm:"
S3_PREFIX = "s3://"
# A policy is hand-written TOML; far past any fleet's (about 110 bytes a source), and
# small enough that a wrong key (a large object by mistake) is refused, not parsed.
MAX_POLICY_BYTES = 1024 * 1024


def read_policy(
    spec: str, *, ssm: Callable[[], Any] | None = None, s3: Callable[[], Any] | None = None,
    read: Callable[[], str] | None = None,
) -> tuple[Policy, Path, str]:
    """The policy, the directory relative paths in it (key files) resolve against, and
    the text it was parsed from (a reload compares against it). `read`, if given, is
    the reader to use (one from `policy_reader`, kept for the reloads that follow)."""
    text = (read or policy_reader(spec, ssm=ssm, s3=s3))()
    remote = spec.startswith((SSM_PREFIX, S3_PREFIX))
    base = Path.cwd() if remote else Path(spec).resolve().parent
    return parse_policy(text, origin=spec), base, text


def read_policy_text(
    spec: str, *, ssm: Callable[[], Any] | None = None, s3: Callable[[], Any] | None = None,
) -> str:
    """The policy's TOML text, from the file, SSM parameter or S3 object `spec` names."""
    return policy_reader(spec, ssm=ssm, s3=s3)()


def policy_reader(
    spec: str, *, ssm: Callable[[], Any] | None = None, s3: Callable[[], Any] | None = None,
) -> Callable[[], str]:
    """A function that reads the policy's text now; call it again to re-read."""
    if spec.startswith(S3_PREFIX):
        if s3 is None:
            raise PolicyError(["no S3 client available"], spec)
        return S3PolicyReader(spec, s3=s3)
    if spec.startswith(SSM_PREFIX):
        if ssm is None:
            raise PolicyError(["no SSM client available"], spec)
        client = ssm
        return lambda: _read_ssm(spec, client)
    return lambda: _read_file(spec)


class S3PolicyReader:
    """Reads `s3://bucket/key`. A re-read sends the last ETag (If-None-Match): an
    unchanged object answers 304 with no body, so polling costs one small request."""

    def __init__(self, spec: str, *, s3: Callable[[], Any]) -> None:
        bucket, _, key = spec[len(S3_PREFIX):].partition("/")
        if not bucket or not key:
            raise PolicyError(["expected s3://<bucket>/<key>"], spec)
        self.spec, self.bucket, self.key = spec, bucket, key
        self._s3 = s3
        self.etag: str | None = None
        # The object version in force (None for an unversioned bucket): logged and
        # named in a rollback (`aws s3api get-object --version-id`).
        self.version_id: str | None = None
        self._text = ""

    def __call__(self) -> str:
        request: dict[str, str] = {"Bucket": self.bucket, "Key": self.key}
        if self.etag is not None:
            request["IfNoneMatch"] = self.etag
        try:
            response = self._s3().get_object(**request)
        except Exception as exc:
            if self.etag is not None and _not_modified(exc):
                return self._text
            raise PolicyError([f"cannot read {self.spec}: {exc}"], self.spec) from None
        body = response["Body"]
        try:
            size = int(response.get("ContentLength", 0))
            if size > MAX_POLICY_BYTES:
                raise PolicyError([f"the object is {size} bytes; a policy may have at most "
                                   f"{MAX_POLICY_BYTES}"], self.spec)
            data: bytes = body.read(MAX_POLICY_BYTES + 1)
        finally:
            body.close()
        if len(data) > MAX_POLICY_BYTES:
            raise PolicyError([f"the object is over {MAX_POLICY_BYTES} bytes"], self.spec)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyError(["not UTF-8 text"], self.spec) from None
        self.etag, self.version_id, self._text = (
            response.get("ETag"), response.get("VersionId"), text)
        return text


def _not_modified(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("304", "NotModified") or status == 304


def _read_ssm(spec: str, ssm: Callable[[], Any]) -> str:
    name = spec[len(SSM_PREFIX):]
    try:
        response = ssm().get_parameter(Name=name, WithDecryption=True)
    except Exception as exc:
        raise PolicyError([f"cannot read SSM parameter {name}: {exc}"], spec) from None
    return str(response["Parameter"]["Value"])


def _read_file(spec: str) -> str:
    try:
        return Path(spec).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError([f"cannot read: {exc.strerror}"], spec) from None
    except UnicodeDecodeError:
        raise PolicyError(["not UTF-8 text"], spec) from None
