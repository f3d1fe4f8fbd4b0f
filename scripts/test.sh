#!/usr/bin/env bash
# Run the test suite: installs what it needs, starts (or reuses) the local Redis Cluster.
# Extra arguments go to pytest, e.g. scripts/test.sh hotstate -k reserve
set -euo pipefail
. "$(dirname "$0")/bootstrap.sh" requirements-dev.txt
python -m hotstate.localcluster start
exec python -m pytest "$@"
