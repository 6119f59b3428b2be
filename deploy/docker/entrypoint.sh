#!/bin/sh
# Entry point of the control-plane image (deploy/Dockerfile). One image, four roles:
#   web         apply the database migrations, then run gunicorn (deploy/gunicorn.conf.py)
#   worker      Celery worker for the default queue ("celery")
#   aggregator  Celery worker for the "aggregation" queue
#   beat        Celery beat (exactly one per deployment)
# Anything else is run as given, e.g. `docker compose run --rm web python manage.py shell`.
#
# Celery runs with --pool threads, never prefork: a prefork parent that ran torch deadlocks
# its forked children (see the comment in deploy/Procfile).
set -eu

# The repository root: two levels above this script (works in the image and in a checkout).
cd "$(dirname "$0")/../.."

celery_app() {
    exec celery --workdir platform -A fedplatform "$@" --loglevel "${FEDHEALTH_LOG_LEVEL:-INFO}"
}

role="${1:-web}"
case "$role" in
    web)
        # FEDHEALTH_MIGRATE_ON_START=false when several web containers start at once: then
        # run `migrate` once yourself before starting them (docs/deploy.md, "Upgrades").
        if [ "${FEDHEALTH_MIGRATE_ON_START:-true}" = "true" ]; then
            python manage.py migrate --noinput
        fi
        exec gunicorn --config deploy/gunicorn.conf.py fedplatform.wsgi
        ;;
    worker)
        celery_app worker --queues celery --pool threads \
            --concurrency "${FEDHEALTH_WORKER_CONCURRENCY:-4}" --hostname "worker@%h"
        ;;
    aggregator)
        celery_app worker --queues aggregation --pool threads \
            --concurrency "${FEDHEALTH_AGGREGATOR_CONCURRENCY:-2}" --hostname "aggregator@%h"
        ;;
    beat)
        celery_app beat --schedule "${FEDHEALTH_DATA_DIR:?FEDHEALTH_DATA_DIR must be set}/celerybeat-schedule"
        ;;
    *)
        exec "$@"
        ;;
esac
