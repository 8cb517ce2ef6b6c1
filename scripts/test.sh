#!/usr/bin/env bash
# Set up everything (system packages as root, .venv, the CDK CLI) and run the checks:
# ruff, mypy --strict on quiver/, functions/, proxy_tier/, cdk/ and app.py, then every
# test (unit, integration on real local servers, CDK synth + cfn-lint). Extra arguments go to pytest. `-rs` lists every skip
# with its reason; with QUIVER_REQUIRE_ALL=1 (CI) a skip outside the allow-list in
# tests/suite_mode.py fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
# The interop suite's receivers are installed, so a receiver that will not start fails.
export QUIVER_WITH_INTEROP=1
QUIVER_WITH_CDK=1 bash scripts/setup.sh
echo "==> ruff"
.venv/bin/ruff check quiver functions proxy_tier cdk app.py tests bench
echo "==> mypy --strict quiver/ functions/ proxy_tier/ cdk/ app.py"
.venv/bin/mypy
# Several test processes at once (pytest-xdist; tests/conftest.py keeps those that
# share servers or a synth on one): the integration tests mostly wait on servers and
# timers, so three workers fit two cores. QUIVER_TEST_WORKERS=0 runs in one process.
workers="${QUIVER_TEST_WORKERS:-3}"
echo "==> pytest ($workers workers)"
exec .venv/bin/pytest -q -rs -p no:cacheprovider -n "$workers" --dist loadscope "$@"
