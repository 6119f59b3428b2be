"""The training services: jobs, the round state machine, updates and aggregation.

Each service runs in one transaction, locks the rows it changes and checks their state
first, so running it twice (a Celery retry, a worker killed and the task redelivered)
changes nothing the second time. Tasks are enqueued only after the transaction commits
(:mod:`training.queue`).

- :mod:`training.services.jobs`: a job's life, and the model versions it writes;
- :mod:`training.services.rounds`: the locks, the round state machine and the sweep;
- :mod:`training.services.updates`: a site's update or evaluation for a round;
- :mod:`training.services.aggregation`: a round's aggregation into the next version.

The secure-aggregation phases are :mod:`training.secure_services`. The services that
other apps call are re-exported here.
"""

from training.services.aggregation import (
    MAX_AGGREGATION_ATTEMPTS,
    AggregationOutcome,
    round_aggregate,
    round_fail_aggregation,
)
from training.services.jobs import (
    MAX_DEADLINE_SECONDS,
    MAX_ROUNDS,
    job_begin,
    job_cancel,
    job_create,
    job_fail_to_begin,
    job_pause,
    job_refuse,
    job_resume,
    job_start,
    model_bundle_download,
    model_upload_limit,
    model_version_download,
    model_version_upload,
)
from training.services.rounds import (
    TRANSIENT_DATABASE_ERRORS,
    SweepOutcome,
    is_passing_fault,
    round_fail_unexpected,
    round_open,
    rounds_sweep,
)
from training.services.updates import (
    SubmitResult,
    UpdateMeta,
    evaluation_submit,
    update_size_limit,
    update_submit,
)

__all__ = [
    "MAX_AGGREGATION_ATTEMPTS",
    "MAX_DEADLINE_SECONDS",
    "MAX_ROUNDS",
    "TRANSIENT_DATABASE_ERRORS",
    "AggregationOutcome",
    "SubmitResult",
    "SweepOutcome",
    "UpdateMeta",
    "evaluation_submit",
    "is_passing_fault",
    "job_begin",
    "job_cancel",
    "job_create",
    "job_fail_to_begin",
    "job_pause",
    "job_refuse",
    "job_resume",
    "job_start",
    "model_bundle_download",
    "model_upload_limit",
    "model_version_download",
    "model_version_upload",
    "round_aggregate",
    "round_fail_aggregation",
    "round_fail_unexpected",
    "round_open",
    "rounds_sweep",
    "update_size_limit",
    "update_submit",
]
