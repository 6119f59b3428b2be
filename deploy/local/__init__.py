"""The local multi-process runner behind ``deploy/run_local.py`` (``make demo``).

- :mod:`deploy.local.processes`: the child processes (gunicorn, Celery worker and beat,
  silo agents), their exact command lines, starting, health-waiting and stopping them.
- :mod:`deploy.local.bootstrap`: the coordinator's side over the REST API (institutions,
  enrolled sites, the study and the job) and following the job round by round.
- :mod:`deploy.local.figures`: the final model against pooled and local-only training,
  and the figures of the JSON line the runner prints last.

The crash drills, the browser tests and the benchmarks start their processes with the same
command builders, so that there is one place that says how each process is started.
"""
