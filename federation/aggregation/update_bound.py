"""A study's optional bound on the size of one site's update.

An update ``w_i`` moves the global model ``g`` by ``Δ_i = w_i - g``. The bound refuses or
clips any update whose change is larger than ``max_ratio`` times the size of the global
model:

    ‖Δ_i‖₂ ≤ max_ratio · max(‖g‖₂, 1)

(the floor of 1 lets a model that starts at zero, as scikit-learn's do, move at all).
Clipping scales the change down onto the bound, ``g + Δ_i · limit / ‖Δ_i‖₂``, the same
projection DP-FedAvg uses (McMahan et al., "Learning Differentially Private Recurrent
Language Models", ICLR 2018), here with a bound relative to the model rather than fixed.

It stops updates of absurd magnitude (every value 3.4e38) from reaching the average. It is
no defence against a careful attacker who stays under the bound: the robust rules (median,
trimmed mean, Krum) are for that (docs/threat-model.md).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from federation.errors import ConfigurationError
from federation.types import Weights


class BoundAction(enum.StrEnum):
    """What happens to an update beyond the bound."""

    REFUSE = "refuse"
    CLIP = "clip"


@dataclass(frozen=True)
class BoundCheck:
    """The outcome of :meth:`UpdateNormBound.apply` for one update."""

    weights: Weights
    change_norm: float
    limit: float
    clipped: bool

    @property
    def within(self) -> bool:
        return self.change_norm <= self.limit


@dataclass(frozen=True)
class UpdateNormBound:
    """``{"max_ratio": 10, "action": "clip"}`` in a study; absent or ``{}`` means no bound."""

    max_ratio: float
    action: BoundAction

    def __post_init__(self) -> None:
        ratio = self.max_ratio
        is_number = isinstance(ratio, int | float) and not isinstance(ratio, bool)
        if not is_number or not math.isfinite(ratio) or ratio <= 0:
            raise ConfigurationError(f"update_norm_bound's max_ratio must be a number above 0, got {ratio!r}")
        try:
            object.__setattr__(self, "action", BoundAction(self.action))
        except ValueError:
            raise ConfigurationError(
                f"update_norm_bound's action must be refuse or clip, got {self.action!r}"
            ) from None
        object.__setattr__(self, "max_ratio", float(ratio))

    @classmethod
    def from_json(cls, data: object) -> UpdateNormBound | None:
        """Parse a study's ``update_norm_bound``; ``None`` or ``{}`` is no bound.

        >>> UpdateNormBound.from_json({"max_ratio": 10, "action": "clip"})
        UpdateNormBound(max_ratio=10.0, action=<BoundAction.CLIP: 'clip'>)
        >>> UpdateNormBound.from_json({}) is None
        True
        """
        if data is None or data == {}:
            return None
        if not isinstance(data, Mapping):
            raise ConfigurationError("update_norm_bound must be an object: max_ratio and action")
        unknown = sorted(set(data) - {"max_ratio", "action"})
        if unknown:
            raise ConfigurationError(f"unknown update_norm_bound fields {unknown}: use max_ratio and action")
        if "max_ratio" not in data:
            raise ConfigurationError("update_norm_bound needs max_ratio")
        return cls(max_ratio=data["max_ratio"], action=data.get("action", BoundAction.REFUSE))

    def to_json(self) -> dict[str, object]:
        return {"max_ratio": self.max_ratio, "action": self.action.value}

    def limit(self, global_weights: Weights) -> float:
        """The largest norm of change allowed from ``global_weights``."""
        return self.max_ratio * max(weights_norm(global_weights), 1.0)

    def apply(self, update: Weights, global_weights: Weights) -> BoundCheck:
        """Check ``update`` against the bound; clip it when the action is ``clip``.

        >>> import numpy as np
        >>> bound = UpdateNormBound(max_ratio=2.0, action="clip")
        >>> g = {"w": np.array([3.0, 4.0], dtype=np.float32)}  # norm 5: limit 10
        >>> check = bound.apply({"w": np.array([3.0, 24.0], dtype=np.float32)}, g)  # change 20
        >>> (check.change_norm, check.limit, check.clipped, check.weights["w"].tolist())
        (20.0, 10.0, True, [3.0, 14.0])
        """
        limit = self.limit(global_weights)
        change_norm = weights_norm(update, global_weights)
        if change_norm <= limit or self.action is BoundAction.REFUSE:
            return BoundCheck(update, change_norm, limit, clipped=False)
        scale = limit / change_norm
        clipped = {
            name: (
                global_weights[name].astype(np.float64)
                + (array.astype(np.float64) - global_weights[name].astype(np.float64)) * scale
            ).astype(array.dtype)
            for name, array in update.items()
        }
        return BoundCheck(clipped, change_norm, limit, clipped=True)


def weights_norm(weights: Weights, minus: Weights | None = None) -> float:
    """The L2 norm over every tensor of ``weights`` (of ``weights - minus`` if given), in float64.

    Values near the float32 limit square to far beyond it: the sum is taken of scaled
    squares, so the norm of an update of 3.4e38 everywhere is finite and right.
    """
    arrays = [
        weights[name].astype(np.float64) - (minus[name].astype(np.float64) if minus is not None else 0.0)
        for name in sorted(weights)
    ]
    largest = max((float(np.max(np.abs(array))) for array in arrays if array.size), default=0.0)
    if largest == 0.0 or not math.isfinite(largest):
        return largest
    return largest * math.sqrt(math.fsum(float(np.sum(np.square(array / largest))) for array in arrays))
