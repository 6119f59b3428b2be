"""The hospital's policy, checked against every task before any data is touched.

The server enforces its own rules (study approval, participants); the agent checks again
with the hospital's rules, which the server cannot change. A refusal names the rule so the
coordinator can read in the audit log why a site declined.

Privacy settings of a study (``study["privacy"]``) understood by this agent:

* ``secure_aggregation`` (bool): the server only ever sees the sum of the sites' updates;
* ``epsilon`` (number): the differential-privacy budget of the job; absent means no DP,
  that is an unbounded epsilon.

``{}`` therefore means no secure aggregation and no DP. This agent implements neither yet,
so it refuses a study that asks for them (it could not keep the promise), and it refuses
privacy settings it does not understand rather than ignore them.
"""

from __future__ import annotations

import math
from collections.abc import Collection

from silo_agent.config import WILDCARD, Policy, PrivacyPolicy
from silo_agent.tasks import JsonObject, WorkTask

_KNOWN_PRIVACY_KEYS = frozenset({"secure_aggregation", "epsilon"})


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
        privacy_reason(policy.privacy, study.privacy),
    )
    return next((reason for reason in checks if reason is not None), None)


def privacy_reason(policy: PrivacyPolicy, privacy: JsonObject) -> str | None:
    """Why the study's privacy settings fall short of (or exceed what this agent can do for)
    the hospital's demands, or None."""
    unknown = sorted(set(privacy) - _KNOWN_PRIVACY_KEYS)
    if unknown:
        return f"the study asks for privacy settings this agent does not understand: {', '.join(unknown)}"
    secure = privacy.get("secure_aggregation", False)
    epsilon = privacy.get("epsilon")
    if not isinstance(secure, bool):
        return "the study's privacy.secure_aggregation is not true or false"
    if epsilon is not None and (isinstance(epsilon, bool) or not isinstance(epsilon, int | float)):
        return "the study's privacy.epsilon is not a number"
    budget = math.inf if epsilon is None else float(epsilon)
    if policy.require_secure_aggregation and not secure:
        return "the hospital's policy requires secure aggregation and the study does not use it"
    if budget > policy.max_epsilon:
        limit = policy.max_epsilon
        return f"the study's privacy budget (epsilon {budget}) exceeds policy.privacy.max_epsilon {limit}"
    if secure or epsilon is not None:
        return "the study asks for secure aggregation or differential privacy, which this agent version lacks"
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
