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

from federation.policy_limits import WILDCARD, limits_refusal, privacy_demand_refusal
from federation.privacy.settings import PrivacySettings
from silo_agent.config import Policy, PrivacyPolicy
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
    if study.privacy is None:
        return f"the study's privacy settings are not understood by this agent: {study.privacy_problem}"
    checks = (
        _study_reason(policy, task, server_approved_study_ids),
        limits_refusal(
            policy.limits(),
            rounds=task.total_rounds,
            epochs=study.training.epochs,
            model_kind=study.model_kind,
            strategy=study.strategy_name,
            privacy=study.privacy,
        ),
        _agent_privacy_reason(study.privacy),
        _secure_round_reason(task),
    )
    return next((reason for reason in checks if reason is not None), None)


def privacy_reason(policy: PrivacyPolicy, settings: PrivacySettings | None, problem: str = "") -> str | None:
    """Why the study's privacy settings (parsed with the task; None: not understood, for
    ``problem``) fall short of the hospital's demands or ask for what this agent cannot do."""
    if settings is None:
        return f"the study's privacy settings are not understood by this agent: {problem}"
    return privacy_demand_refusal(Policy(approved_studies=(), privacy=policy).limits(), settings) or (
        _agent_privacy_reason(settings)
    )


def _agent_privacy_reason(settings: PrivacySettings) -> str | None:
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
    return study_refusal(policy, task.study.id, task.study.name, server_approved)


def study_refusal(policy: Policy, study_id: int, name: str, server_approved: Collection[int]) -> str | None:
    """Why the policy does not approve the study (by id or name, or by ``"*"`` and the server's
    record of the data owner's approval), or None."""
    listed = {str(study_id), name}
    if listed & (set(policy.approved_studies) - {WILDCARD}):
        return None
    if WILDCARD in policy.approved_studies and study_id in server_approved:
        return None
    return f"study {name!r} (id {study_id}) is not approved by this hospital's policy (approved_studies)"
