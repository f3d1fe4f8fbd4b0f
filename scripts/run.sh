#!/usr/bin/env bash
# Start the whole system locally: installs what it needs, migrates, starts the local Redis
# Cluster and the scheduler, and prints the URLs. Ctrl-C stops the scheduler (the cluster stays
# up for the next run; stop it with: .venv/bin/python -m hotstate.localcluster stop).
set -euo pipefail
. "$(dirname "$0")/bootstrap.sh" requirements.txt
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-8000}"
export HOST PORT
mkdir -p var
python -m hotstate.localcluster start
python manage.py migrate --noinput -v0
python manage.py collectstatic --noinput -v0
echo
echo "Scheduler:  http://$HOST:$PORT/"
echo "Dashboard:  http://$HOST:$PORT/admin/   (create a login: .venv/bin/python manage.py createsuperuser)"
echo "Health:     http://$HOST:$PORT/healthz   http://$HOST:$PORT/readyz"
echo
exec daphne -b "$HOST" -p "$PORT" scheduler_project.asgi:application
