#!/usr/bin/env bash
# Start the whole system locally: installs what it needs, migrates, starts the local Redis
# Cluster, then `manage.py serve`: 2 scheduler instances on one port, a worker, and demo nodes and
# sessions (manage.py simulate --forever) so jobs flow at once. Prints the URLs.
# Ctrl-C drains and stops the scheduler; the Redis Cluster stays up for the next run (stop it with
# .venv/bin/python -m hotstate.localcluster stop). Extra arguments go to `serve`, e.g.
#   scripts/run.sh --instances 3        scripts/run.sh --no-demo
set -euo pipefail
. "$(dirname "$0")/bootstrap.sh" requirements.txt
export HOST="${HOST:-127.0.0.1}" PORT="${PORT:-8000}"
mkdir -p "${SCHEDULER_VAR_DIR:-var}"
python -m hotstate.localcluster start
python manage.py migrate --noinput -v0
python manage.py collectstatic --noinput -v0
demo=(--demo)
args=()
for arg in "$@"; do
  if [ "$arg" = "--no-demo" ]; then demo=(); else args+=("$arg"); fi
done
exec python manage.py serve --instances 2 "${demo[@]}" "${args[@]}"
