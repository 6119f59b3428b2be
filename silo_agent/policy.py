"""The hospital's policy, checked against every task before any data is touched.

The server enforces its own rules (study approval, participants); the agent checks again
with the hospital's rules, which the server cannot change. A refusal names the rule so the
coordinator can read in the audit log why a site declined.

A job's privacy settings (``study["privacy"]`` of the task, the job's round plan's) are
parsed once, with the task (:mod:`silo_agent.tasks`), by
:class:`federation.privacy.settings.PrivacySettings`, the same parser the control plane
validates them with; settings it cannot parse are refused rather than ignored. The policy
can demand secure aggregation, demand differential privacy, and cap the study's epsilon.
"""

from __future__ import annotations

from collections.abc import Collection

from federation.privacy.settings import PrivacySettings
from silo_agent.config import WILDCARD, Policy, PrivacyPolicy
from silo_agent.tasks import TaskKind, WorkTask

#: Whether this agent version runs the secure-aggregation protocol.
SUPPORTS_SECURE_AGGREGATION = True


def needs_server_approvals(policy: Policy) -> bool:
    """Whether the check needs the server's list of studies this institution approved."""
    return WILDCARD in policy.approved_studies


def check_task(policy: Policy, task: WorkTask, server_approved_study_ids: Collection[int]) -> str | None:
    """The reason to refuse ``task``, or None if the policy allows it.

    ``server_approved_study_ids`` are the studies the server records as approved by this
    institution's data owner (``GET me``); they count only where the policy says ``"*"``.
    """
    study = task.study
    checks = (
        _study_reason(policy, task, server_approved_study_ids),
        _limit_reason("rounds", task.total_rounds, policy.max_rounds, "policy.max_rounds"),
        _limit_reason(
            "local epochs per round", study.training.epochs, policy.max_epochs, "policy.max_epochs"
        ),
        _listed_reason("model kind", study.model_kind, policy.allowed_model_kinds, "allowed_model_kinds"),
        _listed_reason("strategy", study.strategy_name, policy.allowed_strategies, "allowed_strategies"),
        privacy_reason(policy.privacy, study.privacy, study.privacy_problem),
        _secure_round_reason(task),
    )
    return next((reason for reason in checks if reason is not None), None)


def privacy_reason(policy: PrivacyPolicy, settings: PrivacySettings | None, problem: str = "") -> str | None:
    """Why the study's privacy settings (parsed with the task; None: not understood, for
    ``problem``) fall short of the hospital's demands or ask for what this agent cannot do."""
    if settings is None:
        return f"the study's privacy settings are not understood by this agent: {problem}"
    if policy.require_secure_aggregation and not settings.secure_aggregation:
        return "the hospital's policy requires secure aggregation and the study does not use it"
    if policy.require_differential_privacy and not settings.uses_dp:
        return "the hospital's policy requires differential privacy and the study does not use it"
    if settings.budget > policy.max_epsilon:
        limit = policy.max_epsilon
        budget = settings.budget
        return f"the study's privacy budget (epsilon {budget}) exceeds policy.privacy.max_epsilon {limit}"
    if settings.secure_aggregation and not SUPPORTS_SECURE_AGGREGATION:
        return "the study asks for secure aggregation, which this agent version does not run"
    return None


def _secure_round_reason(task: WorkTask) -> str | None:
    """A study that promises secure aggregation must run it in every training round: a
    plain update asked for instead is refused, whatever the reason the server gives."""
    privacy = task.study.privacy
    promised = privacy is not None and privacy.secure_aggregation
    if promised and task.kind is TaskKind.TRAIN and task.secure_aggregation is None:
        return "the study promises secure aggregation but this round asks for a plain update"
    return None


def _study_reason(policy: Policy, task: WorkTask, server_approved: Collection[int]) -> str | None:
    study = task.study
    listed = {str(study.id), study.name}
    if listed & (set(policy.approved_studies) - {WILDCARD}):
        return None
    if WILDCARD in policy.approved_studies and study.id in server_approved:
        return None
    return (
        f"study {study.name!r} (id {study.id}) is not approved by this hospital's policy (approved_studies)"
    )


def _limit_reason(what: str, asked: int, limit: int, key: str) -> str | None:
    if asked > limit:
        return f"the job asks for {asked} {what}; the hospital's policy allows at most {limit} ({key})"
    return None


def _listed_reason(what: str, asked: str, allowed: tuple[str, ...], key: str) -> str | None:
    if WILDCARD in allowed or asked in allowed:
        return None
    return f"{what} {asked!r} is not allowed by the hospital's policy (policy.{key}: {', '.join(allowed)})"
