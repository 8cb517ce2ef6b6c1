#!/usr/bin/env bash
# Sets up everything Quiver needs on a fresh Debian/Ubuntu machine (Python >= 3.11):
# system packages (as root), a virtualenv in .venv with the package and its extras,
# and the CDK CLI (npm) when infrastructure checks are wanted.
#   scripts/setup.sh            runtime + dev tools
#   QUIVER_WITH_CDK=1 scripts/setup.sh   also the CDK CLI (node_modules/.bin/cdk)
#   QUIVER_WITH_INTEROP=1 scripts/setup.sh   also Exim and Haraka for the interop tests
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(haproxy dnsmasq-base postfix)
if [ "${QUIVER_WITH_CDK:-0}" = 1 ] && ! command -v npm >/dev/null 2>&1; then
  apt_packages+=(nodejs npm)
fi
# What the tests run besides those: `ip` (iproute2) proves a refused PROXY header could
# not have leaked off loopback; `unshare` (util-linux) runs `cdk synth` without network.
apt_packages+=(iproute2 util-linux)
# bench/compiled.py (and its smoke test) compiles the sender's modules with mypyc: a C
# compiler and the headers of the Python the venv is made from.
apt_packages+=(gcc)
py=${PYTHON:-python3}
has_headers='import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)'
if ! "$py" -c "$has_headers" >/dev/null 2>&1; then
  # Debian's headers for this very version (python3-dev is the default python3's only).
  apt_packages+=("python$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-dev")
fi
# apt-get update runs at most once per setup, and only when something is installed.
apt_updated=0
apt_update_once() {
  if [ "$apt_updated" = 0 ]; then apt-get update -q; apt_updated=1; fi
}
missing=()
for p in "${apt_packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then missing+=(python3-venv); fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing system packages: ${missing[*]}"
    # Postfix is only used as a benchmark peer and for smtp-sink: keep the package from
    # configuring a system mailer that would listen on port 25.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    export DEBIAN_FRONTEND=noninteractive
    apt_update_once
    apt-get install -y -q --no-install-recommends "${missing[@]}"
  else
    echo "!! missing system packages: ${missing[*]} (run this script as root to install them);" >&2
    echo "   continuing: tests that need them will be skipped" >&2
  fi
fi

"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  echo "!! Python >= 3.11 is required (found $("$py" --version))" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$py" -m venv .venv
fi
stamp=.venv/.quiver-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] \
    || [ image/requirements.lock -nt "$stamp" ]; then
  echo "==> installing Python packages into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  # The runtime dependencies at the image lock's versions, so the tests run against
  # what the image ships (pip refuses hashes in a constraints file: names and versions
  # only; the dev tools stay free).
  constraints=$(mktemp)
  sed -n 's/^\([A-Za-z0-9._-]*==[^ ]*\).*/\1/p' image/requirements.lock > "$constraints"
  .venv/bin/python -m pip install -q -c "$constraints" -e '.[dev,cdk]'
  rm -f "$constraints"
  touch "$stamp"
fi
# npm keeps node_modules/.package-lock.json: a newer package-lock.json (a CLI bump)
# means the installed CLI is stale.
if [ "${QUIVER_WITH_CDK:-0}" = 1 ] && { [ ! -x node_modules/.bin/cdk ] \
    || [ package-lock.json -nt node_modules/.package-lock.json ]; }; then
  echo "==> installing the CDK CLI (npm ci, pinned by package-lock.json)"
  npm ci --no-audit --no-fund --loglevel=error
fi
# The event compaction's DuckDB layer (cdk/event_compaction.py): the Lambda's wheel
# (Linux arm64), pinned and hashed in cdk/duckdb-layer.lock, unpacked where the synth
# packages it; the synth itself never downloads.
layer=.quiver-layers/duckdb
if [ "${QUIVER_WITH_CDK:-0}" = 1 ] && { [ ! -f "$layer/.built" ] \
    || [ cdk/duckdb-layer.lock -nt "$layer/.built" ]; }; then
  echo "==> building the DuckDB layer from cdk/duckdb-layer.lock"
  wheels=$(mktemp -d)
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --require-hashes \
    --platform manylinux_2_28_aarch64 --python-version 3.14 --implementation cp \
    -r cdk/duckdb-layer.lock -d "$wheels"
  rm -rf "$layer"
  mkdir -p "$layer/python"
  .venv/bin/python -m zipfile -e "$wheels"/duckdb-*.whl "$layer/python"
  rm -rf "$wheels"
  touch "$layer/.built"
fi
# The interop tests' receiving MTAs (QUIVER_WITH_INTEROP=1, as scripts/test.sh sets):
# Exim is unpacked into .interop/exim, not installed, because Debian's exim4 packages
# conflict with postfix (its shared libraries conflict with nothing and are installed);
# Haraka comes from npm, pinned by tests/integration/interop/haraka/package-lock.json.
if [ "${QUIVER_WITH_INTEROP:-0}" = 1 ]; then
  exim_dir=.interop/exim
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "!! the interop receivers need root and apt-get; their tests will be skipped" >&2
  else
    if [ ! -x "$exim_dir/usr/sbin/exim4" ]; then
      echo "==> fetching Exim for the interop tests (unpacked into $exim_dir)"
      apt_update_once
      exim_libs=$(apt-cache depends exim4-daemon-light \
        | awk '$1 == "Depends:" && $2 ~ /^lib/ {print $2}' | sort -u)
      # shellcheck disable=SC2086  # one package name per word
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        $exim_libs openssl
      debs=$(mktemp -d)
      if getent passwd _apt >/dev/null; then chown _apt "$debs"; fi
      (cd "$debs" && apt-get download -q exim4-daemon-light exim4-base exim4-config)
      mkdir -p "$exim_dir"
      for deb in "$debs"/*.deb; do dpkg -x "$deb" "$exim_dir"; done
      rm -rf "$debs"
    fi
    # The Debian build runs as this user; exim4-base's postinst would have made it.
    if ! getent passwd Debian-exim >/dev/null; then
      useradd --system --user-group --no-create-home --home-dir /var/spool/exim4 \
        --shell /usr/sbin/nologin Debian-exim
    fi
    if ! command -v npm >/dev/null 2>&1; then
      apt_update_once
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm
    fi
  fi
  haraka_dir=tests/integration/interop/haraka
  if command -v npm >/dev/null 2>&1 && { [ ! -x "$haraka_dir/node_modules/.bin/haraka" ] \
      || [ "$haraka_dir/package-lock.json" -nt "$haraka_dir/node_modules/.package-lock.json" ]; }
  then
    echo "==> installing Haraka for the interop tests (npm ci, pinned by its package-lock.json)"
    (cd "$haraka_dir" && npm ci --omit=optional --no-audit --no-fund --loglevel=error)
  fi
fi
# Every tool the test suite runs. Where one is missing the tests that need it skip;
# a run that must prove everything (QUIVER_REQUIRE_ALL=1, as .ci/run sets) stops here.
missing_tools=()
for tool in haproxy dnsmasq smtp-sink ip unshare gcc; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing_tools+=("$tool")
done
.venv/bin/python -c "$has_headers" >/dev/null 2>&1 || missing_tools+=("Python.h (python3-dev)")
if [ "${QUIVER_WITH_CDK:-0}" = 1 ]; then
  command -v node >/dev/null 2>&1 || missing_tools+=(node)
  [ -x node_modules/.bin/cdk ] || missing_tools+=(node_modules/.bin/cdk)
fi
if [ ${#missing_tools[@]} -gt 0 ]; then
  strict=${QUIVER_REQUIRE_ALL:-}  # as tests/suite_mode.py reads it: else CI=true
  [ -n "$strict" ] || strict=${CI:-0}
  if [[ "${strict,,}" =~ ^(1|true|yes|on)$ ]]; then
    echo "!! missing for the tests: ${missing_tools[*]} (QUIVER_REQUIRE_ALL=1: no test may skip)" >&2
    exit 1
  fi
  echo "!! missing for the tests: ${missing_tools[*]}; the tests that need them will skip" >&2
fi
echo "==> setup done"
