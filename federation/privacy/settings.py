"""A study's privacy settings: what the study promises, parsed and checked in one place.

The control plane validates a study with :meth:`PrivacySettings.from_json` and the silo
agent reads the same JSON with it, so both sides agree on what each key means::

    {
      "secure_aggregation": true,             # the server only sees the sum of updates
      "secure_aggregation_threshold": 3,      # fewest survivors that can unmask (optional)
      "differential_privacy": {               # or null / absent: no DP
        "level": "client",                    # "client" (DP-FedAvg) or "sample" (DP-SGD)
        "clipping_norm": 1.0,                 # L2 bound of one site's delta / one example's gradient
        "noise_multiplier": 1.1               # optional: derived from "epsilon" when absent
      },
      "epsilon": 3.0,                         # the study's budget; required with DP
      "delta": 1e-5
    }

``{}`` means neither secure aggregation nor differential privacy.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass

from federation.errors import ConfigurationError

DEFAULT_DELTA = 1e-5
_TOP_KEYS = frozenset(
    {"secure_aggregation", "secure_aggregation_threshold", "differential_privacy", "epsilon", "delta"}
)
_DP_KEYS = frozenset({"level", "clipping_norm", "noise_multiplier"})


class DPLevel(enum.StrEnum):
    """Whom differential privacy protects."""

    #: A whole site's contribution (DP-FedAvg): clipped at the agent, noise on the aggregate.
    CLIENT = "client"
    #: One patient record (DP-SGD with Opacus inside each site): clipped and noised per batch.
    SAMPLE = "sample"


@dataclass(frozen=True)
class DifferentialPrivacy:
    """The DP mechanism of a study. ``noise_multiplier`` None: derived from the budget."""

    level: DPLevel
    clipping_norm: float
    noise_multiplier: float | None = None


@dataclass(frozen=True)
class PrivacySettings:
    """What a study promises its sites about their updates."""

    secure_aggregation: bool = False
    secure_aggregation_threshold: int | None = None
    differential_privacy: DifferentialPrivacy | None = None
    epsilon: float | None = None
    delta: float = DEFAULT_DELTA

    def __post_init__(self) -> None:
        if self.secure_aggregation_threshold is not None and not self.secure_aggregation:
            raise ConfigurationError("secure_aggregation_threshold is set but secure_aggregation is off")
        if self.differential_privacy is not None and self.epsilon is None:
            raise ConfigurationError("differential privacy needs a budget: set privacy.epsilon")
        if self.differential_privacy is None and self.epsilon is not None:
            raise ConfigurationError("privacy.epsilon is a DP budget: set privacy.differential_privacy too")

    @property
    def uses_dp(self) -> bool:
        return self.differential_privacy is not None

    @property
    def uses_client_dp(self) -> bool:
        dp = self.differential_privacy
        return dp is not None and dp.level is DPLevel.CLIENT

    @property
    def budget(self) -> float:
        """The study's epsilon budget; infinite without DP."""
        return math.inf if self.epsilon is None else self.epsilon

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> PrivacySettings:
        """Parse and check ``study.privacy``; raises :class:`ConfigurationError` naming the key."""
        if not isinstance(data, Mapping):
            raise ConfigurationError("privacy must be a JSON object")
        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            raise ConfigurationError(f"unknown privacy settings {unknown}; allowed: {sorted(_TOP_KEYS)}")
        secure = data.get("secure_aggregation", False)
        if not isinstance(secure, bool):
            raise ConfigurationError("privacy.secure_aggregation must be true or false")
        dp = data.get("differential_privacy")
        return cls(
            secure_aggregation=secure,
            secure_aggregation_threshold=_optional_int(data, "secure_aggregation_threshold", minimum=2),
            differential_privacy=None if dp is None else _parse_dp(dp),
            epsilon=_optional_positive(data, "epsilon"),
            delta=_delta(data),
        )

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"secure_aggregation": self.secure_aggregation}
        if self.secure_aggregation_threshold is not None:
            out["secure_aggregation_threshold"] = self.secure_aggregation_threshold
        if self.differential_privacy is not None:
            dp = self.differential_privacy
            out["differential_privacy"] = {
                "level": dp.level.value,
                "clipping_norm": dp.clipping_norm,
                "noise_multiplier": dp.noise_multiplier,
            }
            out["epsilon"] = self.epsilon
            out["delta"] = self.delta
        return out


def _parse_dp(data: object) -> DifferentialPrivacy:
    if not isinstance(data, Mapping):
        raise ConfigurationError("privacy.differential_privacy must be an object or null")
    unknown = sorted(set(data) - _DP_KEYS)
    if unknown:
        raise ConfigurationError(
            f"unknown privacy.differential_privacy settings {unknown}; allowed: {sorted(_DP_KEYS)}"
        )
    try:
        level = DPLevel(str(data.get("level", "")))
    except ValueError:
        levels = ", ".join(level.value for level in DPLevel)
        raise ConfigurationError(f"privacy.differential_privacy.level must be one of: {levels}") from None
    clipping_norm = _optional_positive(data, "clipping_norm", where="differential_privacy.")
    if clipping_norm is None:
        raise ConfigurationError("privacy.differential_privacy.clipping_norm is required")
    noise = _optional_positive(data, "noise_multiplier", where="differential_privacy.")
    return DifferentialPrivacy(level=level, clipping_norm=clipping_norm, noise_multiplier=noise)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _optional_positive(data: Mapping[str, object], key: str, *, where: str = "") -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if not _is_number(value) or float(value) <= 0:  # type: ignore[arg-type]
        raise ConfigurationError(f"privacy.{where}{key} must be a finite number > 0")
    return float(value)  # type: ignore[arg-type]


def _optional_int(data: Mapping[str, object], key: str, *, minimum: int) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"privacy.{key} must be an integer >= {minimum}")
    return value


def _delta(data: Mapping[str, object]) -> float:
    delta = _optional_positive(data, "delta")
    if delta is None:
        return DEFAULT_DELTA
    if delta >= 1e-2:
        raise ConfigurationError("privacy.delta must lie below 0.01 (usually below 1 / number of records)")
    return delta
