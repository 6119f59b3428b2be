"""What the live job page shows, as one JSON-ready dictionary.

The page renders its first snapshot from it (so it works without JavaScript) and embeds it
with ``json_script``; ``/jobs/<id>/live.json`` returns the same dictionary, which the page
polls to redraw its charts and tables. Everything comes from scoped selectors: a data owner
sees only their own site's rows, metrics and provenance entries.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from django.urls import reverse
from django.utils import timezone

from accounts.selectors import Scope
from federation.types import Task
from studies.models import Decision
from training.models import Job, JobState, ModelVersion, RoundKind, RoundState, Update
from training.selectors import (
    RoundProgress,
    SiteProgress,
    best_model_version,
    job_epsilon_spent,
    job_launch_warnings,
    job_progress,
    model_version_list,
    provenance_visible,
    update_list,
)

#: The state a job must be in for each action.
ACTION_STATES: dict[str, tuple[str, ...]] = {
    "start": (JobState.DRAFT,),
    "pause": (JobState.RUNNING,),
    "resume": (JobState.PAUSED,),
    "cancel": (JobState.DRAFT, JobState.RUNNING, JobState.PAUSED),
}
TERMINAL_STATES = (JobState.COMPLETED, JobState.CANCELLED, JobState.FAILED)
#: Rounds whose missing answers are dropouts (a cancelled round's are not).
DROPOUT_ROUND_STATES = (RoundState.CLOSED, RoundState.FAILED)

Payload = dict[str, object]


def allowed_actions(state: str) -> list[str]:
    return [action for action, states in ACTION_STATES.items() if state in states]


def chart_metrics(task: str) -> dict[str, str]:
    """The metric of each chart: a quality measure and a loss, by the study's task."""
    if task == Task.REGRESSION:
        return {"quality": "r2", "loss": "mse"}
    return {"quality": "accuracy", "loss": "log_loss"}


def job_live(*, scope: Scope, job: Job) -> Payload:
    progress = job_progress(scope=scope, job=job)
    updates = list(update_list(scope=scope, job=job))
    answered: dict[int, set[int]] = defaultdict(set)
    for update in updates:
        answered[update.round.number].add(update.institution_id)
    charts = chart_metrics(str(job.study.model_config.get("task", Task.BINARY)))
    rounds = [_round(round_, answered[round_.number], progress.sites, charts) for round_ in progress.rounds]
    best = best_model_version(job=job)
    return {
        "job": _job(job, progress.rounds),
        "rounds": rounds,
        "longest_round_seconds": max((r.duration_seconds for r in progress.rounds), default=0.0),
        "full_model_bytes": progress.full_model_bytes,
        "sites": _sites(progress.sites, updates),
        "models": [_model(scope, version, best) for version in model_version_list(job=job)],
        "charts": charts,
        "server_time": timezone.now(),
    }


def round_summary(kind: str, metrics: dict[str, float], charts: dict[str, str]) -> dict[str, float | None]:
    """The charted metrics of one round. A training round's ``global_*`` rate its base model
    and ``local_*`` the sites' trained models; the final evaluation rates the final model."""
    summary: dict[str, float | None] = {}
    for role, name in charts.items():
        if kind == RoundKind.EVALUATE:
            summary[f"global_{role}"], summary[f"local_{role}"] = metrics.get(name), None
        else:
            summary[f"global_{role}"] = metrics.get(f"global_{name}")
            summary[f"local_{role}"] = metrics.get(f"local_{name}")
    return summary


def _job(job: Job, rounds: list[RoundProgress]) -> Payload:
    done = sum(1 for r in rounds if r.kind == RoundKind.TRAIN and r.state == RoundState.CLOSED)
    current = rounds[-1].number if rounds else None
    return {
        "id": job.pk,
        "state": job.state,
        "study": {"id": job.study_id, "name": job.study.name},
        "num_rounds": job.num_rounds,
        "rounds_done": done,
        "current_round": current,
        "in_final_evaluation": current is not None and current > job.last_training_round,
        "min_updates": job.min_updates,
        "round_deadline_seconds": job.round_deadline_seconds,
        "max_deadline_extensions": job.max_deadline_extensions,
        "failure_reason": job.failure_reason,
        "created_by": job.created_by,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "terminal": job.state in TERMINAL_STATES,
        "actions": allowed_actions(job.state),
        "privacy": privacy_summary(job),
        "launch_warnings": [
            {"institution": warning.institution, "reason": warning.reason}
            for warning in (job_launch_warnings(job=job) if job.state == JobState.DRAFT else [])
        ],
    }


def privacy_summary(job: Job) -> Payload:
    """What the job promises and what it has spent, in words for the page."""
    settings = job.plan.privacy
    mechanism = settings.differential_privacy
    parts = ["secure aggregation"] if settings.secure_aggregation else []
    if mechanism is not None:
        parts.append(f"{mechanism.level.value}-level DP")
    spent = job_epsilon_spent(job=job)
    return {
        "label": ", ".join(parts) or "none",
        "epsilon_spent": spent,
        "epsilon_budget": settings.epsilon,
        "training_stopped_after": job.training_stopped_after,
    }


def _round(
    round_: RoundProgress, answered: set[int], sites: list[SiteProgress], charts: dict[str, str]
) -> Payload:
    ended = round_.state in DROPOUT_ROUND_STATES
    missing = [
        site.institution.name
        for site in sites
        if site.decision == Decision.APPROVED and not site.refused and site.institution.pk not in answered
    ]
    return {
        "number": round_.number,
        "kind": round_.kind,
        "label": "Final evaluation" if round_.kind == RoundKind.EVALUATE else f"Round {round_.number}",
        "state": round_.state,
        "expected_updates": round_.expected_updates,
        "received": round_.received,
        "dropouts": max(round_.expected_updates - round_.received, 0) if ended else 0,
        "dropout_sites": missing if ended else [],
        "duration_seconds": round(round_.duration_seconds, 1),
        "opened_at": round_.opened_at,
        "deadline_at": round_.deadline_at,
        "closed_at": round_.closed_at,
        "metrics": round_.metrics,
        "summary": round_summary(round_.kind, round_.metrics, charts),
        "failure_reason": round_.failure_reason,
        "bytes_up": round_.bytes_up,
        "bytes_down": round_.bytes_down,
    }


def _sites(sites: list[SiteProgress], updates: Iterable[Update]) -> list[Payload]:
    answers: dict[int, list[Payload]] = defaultdict(list)
    for update in updates:
        answers[update.institution_id].append(
            {
                "round": update.round.number,
                "kind": update.round.kind,
                "num_examples": update.num_examples,
                "metrics": update.metrics,
                "received_at": update.received_at,
            }
        )
    return [
        {
            "id": site.institution.pk,
            "name": site.institution.name,
            "decision": site.decision,
            "refused": site.refused,
            "refusal_reason": site.refusal_reason,
            "agent_online": site.agent_online,
            "agent_last_seen_at": site.agent_last_seen_at,
            "updates_sent": site.updates_sent,
            "last_update_at": site.last_update_at,
            "latest_metrics": site.latest_metrics,
            "rounds": answers[site.institution.pk],
        }
        for site in sites
    ]


def _origin(provenance: dict[str, object]) -> str:
    """What made a version: the strategy, the initial model, or an upload (with its name)."""
    uploaded = provenance.get("uploaded")
    if isinstance(uploaded, dict):
        return f"uploaded: {uploaded.get('name', '')}"
    return str(provenance.get("strategy") or "initial model")


def _model(scope: Scope, version: ModelVersion, best: ModelVersion | None) -> Payload:
    provenance = provenance_visible(scope=scope, version=version)
    updates = provenance.get("updates")
    visible_updates = updates if isinstance(updates, list) else []
    # How many updates made the version is no secret (the round shows who answered); a data
    # owner is shown only their own.
    all_updates = version.provenance.get("updates")
    return {
        "id": version.pk,
        "number": version.number,
        "sha256": version.sha256,
        "sha256_short": version.sha256[:12],
        "size": version.size,
        "parent_number": version.parent.number if version.parent else None,
        "made_by_round": version.made_by_round.number if version.made_by_round else None,
        "strategy": _origin(provenance),
        "num_updates": len(all_updates) if isinstance(all_updates, list) else len(visible_updates),
        "updates": [
            {
                "institution": str(entry.get("institution", "")),
                "sha256_short": str(entry.get("sha256", ""))[:12],
                "num_examples": entry.get("num_examples"),
            }
            for entry in visible_updates
            if isinstance(entry, dict)
        ],
        "metrics": version.metrics,
        "created_at": version.created_at,
        "download_url": reverse("console:model-download", args=[version.pk]),
        "bundle_url": reverse("console:model-bundle", args=[version.pk]),
        # The lowest loss on the sites' validation rows so far.
        "best": best is not None and best.pk == version.pk,
    }
