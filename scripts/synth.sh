#!/usr/bin/env bash
# Synthesizes the Quiver CDK app with the pinned CDK CLI, offline: no AWS account,
# no credentials, no network (no version check, notices or telemetry either).
#   scripts/synth.sh                 -> cdk.out/
#   scripts/synth.sh OUTDIR [ARGS]   -> OUTDIR/, extra args passed to `cdk synth`
#                                       (e.g. -c quiver:policy=path/to/policy.toml)
# Then lint: .venv/bin/cfn-lint --config-file cdk/cfn-lint.yaml -- OUTDIR/*.template.json
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-cdk.out}
shift $(( $# > 0 ? 1 : 0 ))
cdk=node_modules/.bin/cdk
python=${PYTHON:-.venv/bin/python}
if [ ! -x "$cdk" ]; then
  echo "!! $cdk is missing: run QUIVER_WITH_CDK=1 scripts/setup.sh (npm ci)" >&2
  exit 1
fi

# Synth needs no AWS identity. Hide any credentials and configuration so the CLI
# cannot reach STS or the instance metadata service while working out a default
# account for environment-agnostic stacks.
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_PROFILE \
      AWS_CONTAINER_CREDENTIALS_RELATIVE_URI AWS_CONTAINER_CREDENTIALS_FULL_URI \
      AWS_WEB_IDENTITY_TOKEN_FILE
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
export AWS_EC2_METADATA_DISABLED=true
export CDK_DISABLE_VERSION_CHECK=1 CDK_DISABLE_CLI_TELEMETRY=true
# The jsii runtime nags about Node versions it no longer tests; synth is unaffected.
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="$(node -p 'process.versions.node.split(".")[0]')"
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION=1

exec "$cdk" synth \
  --app "$python app.py" \
  --output "$out" \
  --quiet \
  --no-notices \
  --no-version-reporting \
  --no-asset-metadata \
  --no-lookups \
  "$@"
