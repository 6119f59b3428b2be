"""Aggregation strategies: configuration in, orchestration of the pure maths, state out.

A strategy object holds configuration only. Anything a server optimizer learns between
rounds (momentum, second moments) goes in and out explicitly as a ``state`` of named
arrays, because each round may be aggregated by a different worker process. State tensor
names are ``"<slot>/<tensor name>"`` so the state can be stored as safetensors too.

A strategy's traits live on its class: ``name``, ``label`` (how a person reads it),
``robust`` (whether it looks at each update on its own) and :meth:`Strategy.parameters`.
Adding a strategy means one class here, listed in :data:`STRATEGIES`, and its tests; the
console and the privacy checks read the traits from the class.

Each strategy is a plain call on in-memory updates (or stored files)::

    >>> import numpy as np
    >>> from federation.types import ClientUpdate
    >>> glob = {"w": np.zeros(2, np.float32)}
    >>> ups = [ClientUpdate({"w": np.array([1, 1], np.float32)}, num_examples=1),
    ...        ClientUpdate({"w": np.array([4, 4], np.float32)}, num_examples=2)]
    >>> FedAvg().aggregate(glob, ups).weights["w"]
    array([3., 3.], dtype=float32)

The papers behind each rule are cited in :mod:`federation.aggregation.maths`.
"""

from __future__ import annotations

import enum
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import ClassVar, get_args, get_type_hints

import numpy as np
from numpy.typing import NDArray

from federation.aggregation import maths, streaming
from federation.aggregation.streaming import UpdateLike
from federation.errors import ConfigurationError
from federation.types import ModelSpec, Weights

Array = NDArray[np.floating]

#: Values that describe an aggregation for provenance: effective weights, selected silos.
Details = dict[str, float | int | list[float] | list[int]]


class StrategyName(enum.StrEnum):
    FEDAVG = "fedavg"
    FEDAVGM = "fedavgm"
    FEDADAGRAD = "fedadagrad"
    FEDADAM = "fedadam"
    FEDYOGI = "fedyogi"
    FEDPROX = "fedprox"
    MEDIAN = "median"
    TRIMMED_MEAN = "trimmed_mean"
    KRUM = "krum"
    MULTI_KRUM = "multi_krum"


@dataclass(frozen=True)
class StrategyParameter:
    """One hyper-parameter of a strategy: its name, its default, whether it is a whole
    number, and whether it may be left as ``None``."""

    name: str
    default: float | int | None
    is_integer: bool
    optional: bool


@dataclass(frozen=True)
class AggregationResult:
    """The next global weights, the server state to keep, and what was done."""

    weights: Weights
    state: Weights = field(default_factory=dict)
    details: Details = field(default_factory=dict)


@dataclass(frozen=True)
class Strategy(ABC):
    """Base of every strategy: a frozen dataclass of hyper-parameters."""

    name: ClassVar[StrategyName]
    #: How a person reads the rule, e.g. in the console's list of strategies.
    label: ClassVar[str]
    #: Robust to hostile silos: the rule looks at each update on its own (order statistics,
    #: distances), so secure aggregation and client-level noise on the sum cannot apply.
    robust: ClassVar[bool] = False

    def minimum_updates(self) -> int:
        """The fewest updates a round may combine under this rule (1 for the means)."""
        return 1

    @classmethod
    def parameters(cls) -> tuple[StrategyParameter, ...]:
        """The hyper-parameters a study may set, with their defaults, from the dataclass."""
        hints = get_type_hints(cls)
        return tuple(
            StrategyParameter(
                name=parameter.name,
                default=parameter.default,  # type: ignore[arg-type]
                is_integer=hints[parameter.name] is int,
                optional=type(None) in get_args(hints[parameter.name]),
            )
            for parameter in fields(cls)
        )

    @abstractmethod
    def aggregate(
        self,
        global_weights: Weights,
        updates: Sequence[UpdateLike],
        *,
        state: Mapping[str, NDArray[np.floating]] | None = None,
    ) -> AggregationResult:
        """Combine ``updates`` (silos' locally trained weights) into new global weights."""

    def params(self) -> dict[str, float | int | None]:
        """The hyper-parameters, as stored in a study and in provenance records."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigurationError(message)


def _spec_and_check(global_weights: Weights, updates: Sequence[UpdateLike]) -> ModelSpec:
    _require(len(updates) > 0, "cannot aggregate a round with no updates")
    return ModelSpec.from_weights(global_weights)


@dataclass(frozen=True)
class FedAvg(Strategy):
    """Federated averaging: the example-weighted mean of the silos' weights.

    ``server_learning_rate`` scales the averaged delta: ``g + eta * (mean - g)``.
    ``max_weight_share`` caps any silo's share of the weight (see
    :func:`federation.aggregation.maths.normalized_weights`).
    """

    name: ClassVar[StrategyName] = StrategyName.FEDAVG
    label: ClassVar[str] = "FedAvg: weighted mean"
    server_learning_rate: float = 1.0
    max_weight_share: float | None = None

    def __post_init__(self) -> None:
        _require(self.server_learning_rate > 0, "server_learning_rate must be positive")
        _require(
            self.max_weight_share is None or 0 < self.max_weight_share <= 1,
            "max_weight_share must lie in (0, 1]",
        )

    def aggregate(
        self,
        global_weights: Weights,
        updates: Sequence[UpdateLike],
        *,
        state: Mapping[str, NDArray[np.floating]] | None = None,
    ) -> AggregationResult:
        spec = _spec_and_check(global_weights, updates)
        weights = maths.normalized_weights([u.num_examples for u in updates], max_share=self.max_weight_share)
        mean = streaming.weighted_mean(updates, weights.tolist(), spec)
        return AggregationResult(
            weights=self._server_step(global_weights, mean),
            details={"weights": weights.tolist(), "num_updates": len(updates)},
        )

    def _server_step(self, global_weights: Weights, mean: Weights) -> Weights:
        if self.server_learning_rate == 1.0:
            return mean  # exact: no round trip through the delta
        eta = self.server_learning_rate
        return {
            name: maths.fedavg_step(params, mean[name] - params, server_learning_rate=eta)
            for name, params in global_weights.items()
        }


@dataclass(frozen=True)
class FedProx(FedAvg):
    """FedProx (Li et al., MLSys 2020): FedAvg on the server; its proximal term ``mu``
    acts in each silo's local training (``TrainConfig.proximal_mu``)."""

    name: ClassVar[StrategyName] = StrategyName.FEDPROX
    label: ClassVar[str] = "FedProx: FedAvg with a proximal term"
    proximal_mu: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.proximal_mu >= 0, "proximal_mu must be non-negative")


@dataclass(frozen=True)
class _ServerOptimizer(FedAvg, ABC):
    """FedOpt family: the weighted mean gives a pseudo-gradient, a server optimizer steps."""

    server_learning_rate: float = 0.1

    def aggregate(
        self,
        global_weights: Weights,
        updates: Sequence[UpdateLike],
        *,
        state: Mapping[str, NDArray[np.floating]] | None = None,
    ) -> AggregationResult:
        spec = _spec_and_check(global_weights, updates)
        weights = maths.normalized_weights([u.num_examples for u in updates], max_share=self.max_weight_share)
        mean = streaming.weighted_mean(updates, weights.tolist(), spec)
        new_weights: Weights = {}
        new_state: Weights = {}
        for name, params in global_weights.items():
            slots = {slot: (state or {}).get(f"{slot}/{name}") for slot in self.slots}
            stepped, next_slots = self._step(params, mean[name] - params, slots)
            new_weights[name] = stepped
            new_state.update({f"{slot}/{name}": value for slot, value in next_slots.items()})
        return AggregationResult(
            weights=new_weights,
            state=new_state,
            details={"weights": weights.tolist(), "num_updates": len(updates)},
        )

    slots: ClassVar[tuple[str, ...]]

    @abstractmethod
    def _step(
        self,
        params: NDArray[np.floating],
        delta: NDArray[np.floating],
        slots: dict[str, NDArray[np.floating] | None],
    ) -> tuple[NDArray[np.floating], dict[str, NDArray[np.floating]]]: ...


@dataclass(frozen=True)
class FedAvgM(_ServerOptimizer):
    """FedAvg with server momentum ``beta``: ``v = beta v + delta; x = x + eta v``."""

    name: ClassVar[StrategyName] = StrategyName.FEDAVGM
    label: ClassVar[str] = "FedAvgM: server momentum"
    slots: ClassVar[tuple[str, ...]] = ("momentum",)
    server_learning_rate: float = 1.0
    server_momentum: float = 0.9

    def _step(
        self,
        params: NDArray[np.floating],
        delta: NDArray[np.floating],
        slots: dict[str, NDArray[np.floating] | None],
    ) -> tuple[NDArray[np.floating], dict[str, NDArray[np.floating]]]:
        step = maths.fedavgm_step(
            params,
            delta,
            slots["momentum"],
            server_learning_rate=self.server_learning_rate,
            server_momentum=self.server_momentum,
        )
        return step.params, {"momentum": step.momentum}


@dataclass(frozen=True)
class _Adaptive(_ServerOptimizer, ABC):
    """Shared hyper-parameters of FedAdagrad, FedAdam and FedYogi (Reddi et al. 2021)."""

    slots: ClassVar[tuple[str, ...]] = ("m", "v")
    server_learning_rate: float = 0.1
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3

    def _step(
        self,
        params: Array,
        delta: Array,
        slots: dict[str, Array | None],
    ) -> tuple[Array, dict[str, Array]]:
        step = self._adaptive_step(params, delta, slots["m"], slots["v"])
        return step.params, {"m": step.m, "v": step.v}

    @abstractmethod
    def _adaptive_step(
        self, params: Array, delta: Array, m: Array | None, v: Array | None
    ) -> maths.AdaptiveStep:
        """One step of the rule, Reddi et al. 2021, Algorithm 2."""


@dataclass(frozen=True)
class FedAdagrad(_Adaptive):
    name: ClassVar[StrategyName] = StrategyName.FEDADAGRAD
    label: ClassVar[str] = "FedAdagrad: adaptive server step"

    def _adaptive_step(
        self, params: Array, delta: Array, m: Array | None, v: Array | None
    ) -> maths.AdaptiveStep:
        return maths.fedadagrad_step(
            params, delta, m, v, eta=self.server_learning_rate, beta_1=self.beta_1, tau=self.tau
        )


@dataclass(frozen=True)
class FedAdam(_Adaptive):
    name: ClassVar[StrategyName] = StrategyName.FEDADAM
    label: ClassVar[str] = "FedAdam: adaptive server step"

    def _adaptive_step(
        self, params: Array, delta: Array, m: Array | None, v: Array | None
    ) -> maths.AdaptiveStep:
        return maths.fedadam_step(
            params,
            delta,
            m,
            v,
            eta=self.server_learning_rate,
            beta_1=self.beta_1,
            beta_2=self.beta_2,
            tau=self.tau,
        )


@dataclass(frozen=True)
class FedYogi(_Adaptive):
    name: ClassVar[StrategyName] = StrategyName.FEDYOGI
    label: ClassVar[str] = "FedYogi: adaptive server step"

    def _adaptive_step(
        self, params: Array, delta: Array, m: Array | None, v: Array | None
    ) -> maths.AdaptiveStep:
        return maths.fedyogi_step(
            params,
            delta,
            m,
            v,
            eta=self.server_learning_rate,
            beta_1=self.beta_1,
            beta_2=self.beta_2,
            tau=self.tau,
        )


@dataclass(frozen=True)
class CoordinateMedian(Strategy):
    """The coordinate-wise median of the silos' weights (unweighted, as in Yin et al.)."""

    name: ClassVar[StrategyName] = StrategyName.MEDIAN
    label: ClassVar[str] = "Coordinate-wise median"
    robust: ClassVar[bool] = True

    def aggregate(
        self,
        global_weights: Weights,
        updates: Sequence[UpdateLike],
        *,
        state: Mapping[str, NDArray[np.floating]] | None = None,
    ) -> AggregationResult:
        spec = _spec_and_check(global_weights, updates)
        median = streaming.coordinate_wise(updates, spec, maths.coordinate_median)
        return AggregationResult(weights=median, details={"num_updates": len(updates)})


@dataclass(frozen=True)
class TrimmedMean(Strategy):
    """The coordinate-wise mean after dropping the ``beta`` fraction at each end."""

    name: ClassVar[StrategyName] = StrategyName.TRIMMED_MEAN
    label: ClassVar[str] = "Trimmed mean"
    robust: ClassVar[bool] = True
    beta: float = 0.1

    def __post_init__(self) -> None:
        _require(0 <= self.beta < 0.5, "beta must lie in [0, 0.5)")

    def aggregate(
        self,
        global_weights: Weights,
        updates: Sequence[UpdateLike],
        *,
        state: Mapping[str, NDArray[np.floating]] | None = None,
    ) -> AggregationResult:
        spec = _spec_and_check(global_weights, updates)
        beta = self.beta
        trimmed = streaming.coordinate_wise(
            updates, spec, lambda stacked: maths.trimmed_mean(stacked, beta=beta)
        )
        return AggregationResult(weights=trimmed, details={"num_updates": len(updates)})


@dataclass(frozen=True)
class MultiKrum(Strategy):
    """Multi-Krum: the plain mean of the ``num_selected`` updates with the lowest Krum
    scores, assuming at most ``num_byzantine`` silos are hostile. ``num_selected = 1`` is
    Krum itself."""

    name: ClassVar[StrategyName] = StrategyName.MULTI_KRUM
    label: ClassVar[str] = "Multi-Krum"
    robust: ClassVar[bool] = True
    num_byzantine: int = 1
    num_selected: int = 2

    def __post_init__(self) -> None:
        _require(self.num_byzantine >= 0, "num_byzantine must be non-negative")
        _require(self.num_selected >= 1, "num_selected must be at least 1")

    def minimum_updates(self) -> int:
        """Krum scores each update by its n - f - 2 nearest neighbours: ``n >= 2f + 3``
        (Blanchard et al., NeurIPS 2017), and Multi-Krum keeps ``num_selected`` of them."""
        return max(maths.krum_minimum_updates(self.num_byzantine), self.num_selected)

    def aggregate(
        self,
        global_weights: Weights,
        updates: Sequence[UpdateLike],
        *,
        state: Mapping[str, NDArray[np.floating]] | None = None,
    ) -> AggregationResult:
        spec = _spec_and_check(global_weights, updates)
        distances = streaming.pairwise_squared_distances(updates, spec)
        selected = maths.krum_select(
            distances, num_byzantine=self.num_byzantine, num_selected=self.num_selected
        )
        chosen = [updates[int(i)] for i in selected]
        mean = streaming.weighted_mean(chosen, [1.0] * len(chosen), spec)
        return AggregationResult(
            weights=mean, details={"selected": [int(i) for i in selected], "num_updates": len(updates)}
        )


@dataclass(frozen=True)
class Krum(MultiKrum):
    """Krum: the single update with the lowest score."""

    name: ClassVar[StrategyName] = StrategyName.KRUM
    label: ClassVar[str] = "Krum"
    num_selected: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.num_selected == 1, "Krum selects exactly one update; use multi_krum for more")


def _registry(*strategy_classes: type[Strategy]) -> dict[StrategyName, type[Strategy]]:
    """Every strategy by name; a class without its own name or label fails here, at import,
    rather than where a form or a study first asks for it."""
    registry: dict[StrategyName, type[Strategy]] = {}
    labels: set[str] = set()
    for strategy_class in strategy_classes:
        own = vars(strategy_class)
        if "name" not in own or not own.get("label"):
            raise TypeError(f"strategy {strategy_class.__name__} must set its own name and label")
        if strategy_class.name in registry or strategy_class.label in labels:
            raise TypeError(f"strategy {strategy_class.__name__} repeats a name or a label")
        registry[strategy_class.name] = strategy_class
        labels.add(strategy_class.label)
    missing = sorted(set(StrategyName) - set(registry))
    if missing:
        raise TypeError(f"strategy names without a class: {missing}")
    return registry


STRATEGIES: dict[StrategyName, type[Strategy]] = _registry(
    FedAvg,
    FedProx,
    FedAvgM,
    FedAdagrad,
    FedAdam,
    FedYogi,
    CoordinateMedian,
    TrimmedMean,
    Krum,
    MultiKrum,
)


def _check_parameter_value(strategy: str, parameter: StrategyParameter, value: object) -> None:
    """Refuse a value of the wrong type before the strategy compares it with a number."""
    if value is None and parameter.optional:
        return
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if number and (not parameter.is_integer or isinstance(value, int)):
        return
    kind = "an integer" if parameter.is_integer else "a finite number"
    raise ConfigurationError(
        f"strategy {strategy!r}: {parameter.name} must be {kind}{' or null' if parameter.optional else ''}, "
        f"got {value!r}"
    )


def build_strategy(name: str, params: Mapping[str, float | int | None] | None = None) -> Strategy:
    """The strategy called ``name`` configured with ``params``, with clear errors."""
    try:
        strategy_class = STRATEGIES[StrategyName(name)]
    except ValueError:
        raise ConfigurationError(
            f"unknown strategy {name!r}; choose one of {[s.value for s in StrategyName]}"
        ) from None
    known = {f.name for f in fields(strategy_class)}
    unknown = sorted(set(params or {}) - known)
    _require(not unknown, f"strategy {name!r} has no parameters {unknown}; it takes {sorted(known)}")
    for parameter in strategy_class.parameters():
        if parameter.name in (params or {}):
            _check_parameter_value(name, parameter, (params or {})[parameter.name])
    try:
        return strategy_class(**dict(params or {}))
    except TypeError as error:
        raise ConfigurationError(f"strategy {name!r}: {error}") from error
