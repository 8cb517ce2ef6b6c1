#!/usr/bin/env bash
# Set up everything and run the demo on the embedded local stack:
# 1000 messages (or the number given) from SQS to a local MX, events to S3.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/quiver demo --messages "${1:-1000}"
