"""The limits of a hospital's policy that a job can be checked against before it starts.

A site's agent enforces its policy on every task (:mod:`silo_agent.policy`); it also reports
these limits with its heartbeats, so that the control plane can warn a coordinator, before a
job starts, that a site will refuse it and why. Both sides apply :func:`limits_refusal`,
the one statement of these rules; which studies a hospital approves stays at the site.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from federation.errors import ConfigurationError
from federation.privacy.settings import PrivacySettings

#: In a list of allowed names: anything.
WILDCARD = "*"


@dataclass(frozen=True)
class PolicyLimits:
    """What a hospital allows: at most so many rounds and local epochs, these model kinds and
    strategies, and the privacy it demands."""

    max_rounds: int = 100
    max_epochs: int = 10
    allowed_model_kinds: tuple[str, ...] = (WILDCARD,)
    allowed_strategies: tuple[str, ...] = (WILDCARD,)
    require_secure_aggregation: bool = False
    require_differential_privacy: bool = False
    max_epsilon: float = math.inf

    def to_json(self) -> dict[str, object]:
        return {
            "max_rounds": self.max_rounds,
            "max_epochs": self.max_epochs,
            "allowed_model_kinds": list(self.allowed_model_kinds),
            "allowed_strategies": list(self.allowed_strategies),
            "require_secure_aggregation": self.require_secure_aggregation,
            "require_differential_privacy": self.require_differential_privacy,
            "max_epsilon": None if math.isinf(self.max_epsilon) else self.max_epsilon,
        }

    @classmethod
    def from_json(cls, data: object) -> PolicyLimits:
        """Limits as an agent reported them; ConfigurationError if they cannot be read."""
        if not isinstance(data, Mapping):
            raise ConfigurationError("policy limits must be an object")
        try:
            epsilon = data.get("max_epsilon")
            return cls(
                max_rounds=_whole(data.get("max_rounds", 100)),
                max_epochs=_whole(data.get("max_epochs", 10)),
                allowed_model_kinds=_names(data.get("allowed_model_kinds", [WILDCARD])),
                allowed_strategies=_names(data.get("allowed_strategies", [WILDCARD])),
                require_secure_aggregation=data.get("require_secure_aggregation") is True,
                require_differential_privacy=data.get("require_differential_privacy") is True,
                max_epsilon=math.inf if epsilon is None else float(epsilon),
            )
        except (TypeError, ValueError) as error:
            raise ConfigurationError(f"policy limits cannot be read: {error}") from None


def limits_refusal(
    limits: PolicyLimits,
    *,
    rounds: int,
    epochs: int,
    model_kind: str,
    strategy: str,
    privacy: PrivacySettings,
) -> str | None:
    """Why a site with ``limits`` refuses a job of this shape, or None; the reason names the
    policy's key, as the agent's refusal does."""
    checks = (
        _limit("rounds", rounds, limits.max_rounds, "policy.max_rounds"),
        _limit("local epochs per round", epochs, limits.max_epochs, "policy.max_epochs"),
        _listed("model kind", model_kind, limits.allowed_model_kinds, "allowed_model_kinds"),
        _listed("strategy", strategy, limits.allowed_strategies, "allowed_strategies"),
        privacy_demand_refusal(limits, privacy),
    )
    return next((reason for reason in checks if reason is not None), None)


def privacy_demand_refusal(limits: PolicyLimits, settings: PrivacySettings) -> str | None:
    """Why the study's privacy settings fall short of the hospital's demands, or None."""
    if limits.require_secure_aggregation and not settings.secure_aggregation:
        return "the hospital's policy requires secure aggregation and the study does not use it"
    if limits.require_differential_privacy and not settings.uses_dp:
        return "the hospital's policy requires differential privacy and the study does not use it"
    if settings.budget > limits.max_epsilon:
        return (
            f"the study's privacy budget (epsilon {settings.budget}) exceeds "
            f"policy.privacy.max_epsilon {limits.max_epsilon}"
        )
    return None


def _limit(what: str, asked: int, limit: int, key: str) -> str | None:
    if asked > limit:
        return f"the job asks for {asked} {what}; the hospital's policy allows at most {limit} ({key})"
    return None


def _listed(what: str, asked: str, allowed: tuple[str, ...], key: str) -> str | None:
    if WILDCARD in allowed or asked in allowed:
        return None
    return f"{what} {asked!r} is not allowed by the hospital's policy (policy.{key}: {', '.join(allowed)})"


def _whole(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number >= 1, got {value!r}")
    return value


def _names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise ValueError(f"expected a list of names, got {value!r}")
    return tuple(value)
