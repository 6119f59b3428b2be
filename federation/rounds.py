"""The round plan: how every round of one job is aggregated, decided in one place.

A :class:`RoundPlan` holds a job's strategy, its parsed privacy settings (with the noise of
client-level DP resolved) and, once the initial model exists, the model's spec. The
simulator and the control plane both build one and call it:

* :meth:`RoundPlan.check` is the one compatibility check of strategy, privacy settings,
  number of sites and model kind;
* :meth:`RoundPlan.aggregate` turns one round's inputs into the next global model. The
  inputs are either the sites' updates (in memory, or stored files read chunk by chunk,
  :class:`~federation.aggregation.streaming.StoredUpdate`) or, under secure aggregation,
  the unmasked sum of their packed vectors (:class:`UnmaskedSum`).

Three pipelines, one per mechanism:

* plain: the strategy's rule on the updates (FedAvg is McMahan et al., AISTATS 2017; the
  other rules are cited in :mod:`federation.aggregation.maths`), streaming over files;
* client-level DP without secure aggregation: DP-FedAvg (McMahan, Ramage, Talwar and
  Zhang, ICLR 2018, :func:`federation.privacy.dp.dp_fedavg`): every update clipped again,
  the unweighted mean plus Gaussian noise;
* secure aggregation (Bonawitz et al., CCS 2017, :mod:`federation.privacy.secagg`): the
  server holds ``[sum n_i (w_i - g), sum n_i]`` only, whose quotient is FedAvg's
  example-weighted mean change; under client-level DP each site packed its clipped change
  and the weight 1, and the noise is added to the sum
  (:func:`federation.privacy.dp.noisy_mean_from_sum`).

Under DP and under secure aggregation the strategy's server step (FedAvg's learning rate,
FedAdam's moments, ...) runs on the one mean, which is post-processing and keeps the
guarantee. The plan is stored as JSON (:meth:`RoundPlan.to_json`) with the job, and read
back with :meth:`RoundPlan.from_json`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from federation.aggregation import adapters as adapter_maths
from federation.aggregation.flat import unflatten
from federation.aggregation.strategies import (
    STRATEGIES,
    AggregationResult,
    Details,
    FedAvg,
    FedProx,
    Strategy,
    build_strategy,
)
from federation.aggregation.streaming import StoredUpdate, UpdateLike
from federation.errors import ConfigurationError, InvalidUpdateError, SecureAggregationError
from federation.metric_reports import MAX_NUM_EXAMPLES
from federation.models.base import CLASS_WEIGHTING_WITH_DP_SGD, ModelKind
from federation.models.lora import AdapterAggregation, lora_pairs
from federation.privacy import accounting, dp, secagg
from federation.privacy.settings import DifferentialPrivacy, DPLevel, PrivacySettings
from federation.types import ClientUpdate, ModelSpec, Weights
from federation.wire import deserialize_weights

#: Fewest sites a secure sum may hold: with two, each site can subtract its own update
#: from the sum and read the other one.
MIN_SECURE_SITES = 3
#: Budgets are compared with this slack: a job planned to spend exactly its budget must run.
BUDGET_TOLERANCE = 1e-9
#: Under client-level DP each site packs the weight 1; the decoded sum of those weights
#: must match the count of survivors within the fixed-point error.
_WEIGHT_SLACK = 1e-3


@dataclass(frozen=True)
class UnmaskedSum:
    """What secure aggregation reveals: the decoded sum of the survivors' packed vectors
    ``[n_i * (w_i - g)..., n_i]`` (flattened in the model spec's order), and how many
    survivors sent one."""

    total: NDArray[np.float64]
    num_sites: int

    def __post_init__(self) -> None:
        if isinstance(self.num_sites, bool) or self.num_sites < 1:
            raise ConfigurationError(f"an unmasked sum needs at least one site, got {self.num_sites!r}")


#: What one round aggregates: the sites' updates, or the unmasked sum of a secure round.
RoundInputs = Sequence[UpdateLike] | UnmaskedSum


@dataclass(frozen=True)
class RoundPlan:
    """A job's strategy, privacy settings (client-level noise resolved) and model spec."""

    strategy: Strategy
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    #: The tensors of the job's model; None until the initial model exists.
    model_spec: ModelSpec | None = None
    #: How LoRA adapters are combined (:mod:`federation.aggregation.adapters`); None for
    #: models without adapters.
    adapters: AdapterAggregation | None = None

    # --- building and storing ---------------------------------------------------------

    def resolved(self, *, num_rounds: int) -> RoundPlan:
        """The plan with client-level DP's noise multiplier fixed for ``num_rounds`` rounds:
        the study's, or the smallest that keeps them all within the budget (the RDP
        accountant of :mod:`federation.privacy.accounting`). Raises
        :class:`ConfigurationError` when the budget cannot pay for a single round."""
        mechanism = self.privacy.differential_privacy
        if mechanism is None or mechanism.level is not DPLevel.CLIENT:
            return self
        noise = mechanism.noise_multiplier
        if noise is None:
            noise = _noise_for_budget(self.privacy, num_rounds)
        first_round = accounting.client_level_epsilon(
            noise_multiplier=noise, rounds=1, delta=self.privacy.delta
        )
        if first_round > self.privacy.budget + BUDGET_TOLERANCE:
            raise ConfigurationError(
                f"one round at noise multiplier {noise:g} spends epsilon {first_round:.3f}, "
                f"more than the study's budget {self.privacy.budget:g}"
            )
        resolved = replace(mechanism, noise_multiplier=noise)
        return replace(self, privacy=replace(self.privacy, differential_privacy=resolved))

    def with_model_spec(self, spec: ModelSpec) -> RoundPlan:
        return replace(self, model_spec=spec)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "strategy": {"name": self.strategy.name.value, "params": self.strategy.params()},
            "privacy": self.privacy.to_json(),
        }
        if self.model_spec is not None:
            out["model_spec"] = self.model_spec.to_json()
        if self.adapters is not None:
            out["adapters"] = self.adapters.value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> RoundPlan:
        """Parse :meth:`to_json`'s output; raises :class:`ConfigurationError` naming the part."""
        strategy = data.get("strategy")
        if not isinstance(strategy, Mapping) or not isinstance(strategy.get("params", {}), Mapping):
            raise ConfigurationError("a round plan needs strategy: {name, params}")
        privacy = data.get("privacy", {})
        if not isinstance(privacy, Mapping):
            raise ConfigurationError("a round plan's privacy must be a JSON object")
        spec = data.get("model_spec")
        if spec is not None and not isinstance(spec, list):
            raise ConfigurationError("a round plan's model_spec must be a list of tensors")
        return cls(
            strategy=build_strategy(str(strategy.get("name", "")), dict(strategy.get("params", {}))),
            privacy=PrivacySettings.from_json(privacy),
            model_spec=None if spec is None else ModelSpec.from_json(spec),
            adapters=_adapter_method(data.get("adapters")),
        )

    # --- what the plan says -------------------------------------------------------------

    @property
    def client_noise_multiplier(self) -> float | None:
        """The server's noise multiplier under client-level DP (None without it)."""
        mechanism = self.privacy.differential_privacy
        if mechanism is None or mechanism.level is not DPLevel.CLIENT:
            return None
        if mechanism.noise_multiplier is None:
            raise ConfigurationError("client-level DP's noise is not resolved: call RoundPlan.resolved first")
        return mechanism.noise_multiplier

    def secure_threshold(self, num_sites: int) -> int:
        """The secure-aggregation threshold in force: the study's, or a strict majority."""
        return self.privacy.secure_aggregation_threshold or secagg.minimum_threshold(num_sites)

    # --- the one compatibility check ----------------------------------------------------

    def check(
        self,
        num_sites: int | None,
        model_kind: ModelKind | None = None,
        *,
        proximal_mu: float = 0.0,
        class_weighting: bool = False,
    ) -> None:
        """Refuse what this plan cannot honour with ``num_sites`` sites training a
        ``model_kind`` model (with FedProx's ``proximal_mu`` and ``class_weighting`` in local
        training).

        ``None`` skips the rules about that part. Raises :class:`ConfigurationError` saying why.
        """
        reasons = (  # what cannot combine first, then whether there are sites enough
            self._secure_aggregation_reason(num_sites),
            self._client_dp_reason(),
            self._adapter_reason(),
            _sample_dp_reason(self.privacy.differential_privacy, model_kind, proximal_mu, class_weighting),
            self._too_few_sites_reason(num_sites),
        )
        reason = next((reason for reason in reasons if reason is not None), None)
        if reason is not None:
            raise ConfigurationError(reason)

    def _too_few_sites_reason(self, num_sites: int | None) -> str | None:
        minimum = self.strategy.minimum_updates()
        if num_sites is None or num_sites >= minimum:
            return None
        settings = ", ".join(f"{name}={value}" for name, value in self.strategy.params().items())
        return (
            f"strategy {self.strategy.name.value} ({settings}) needs at least {minimum} sites' updates "
            f"each round, and only {num_sites} can take part"
        )

    def _secure_aggregation_reason(self, num_sites: int | None) -> str | None:
        if not self.privacy.secure_aggregation:
            return None
        name = self.strategy.name
        if self.strategy.robust:
            return (
                f"strategy {name.value} needs every site's update on its own, but secure aggregation "
                f"shows the server only their sum: choose {_mean_rules()}"
            )
        if isinstance(self.strategy, FedAvg) and self.strategy.max_weight_share is not None:
            return "max_weight_share needs each site's weight, which secure aggregation hides: leave it unset"
        if num_sites is None:
            return None
        if num_sites < MIN_SECURE_SITES:
            return (
                f"secure aggregation needs at least {MIN_SECURE_SITES} sites, got {num_sites}: with two, "
                "either site can read the other's update from the sum"
            )
        threshold, minimum = self.secure_threshold(num_sites), secagg.minimum_threshold(num_sites)
        if not minimum <= threshold <= num_sites:
            return (
                f"secure_aggregation_threshold must lie between {minimum} (a majority of the "
                f"{num_sites} sites) and {num_sites}, got {threshold}"
            )
        return None

    def _client_dp_reason(self) -> str | None:
        if not self.privacy.uses_client_dp or not self.strategy.robust:
            return None
        return (
            f"client-level DP calibrates its noise to a mean; strategy {self.strategy.name.value} is not "
            f"one, it needs each update on its own: choose {_mean_rules()}"
        )

    def _adapter_reason(self) -> str | None:
        if self.adapters is None:
            return None
        if self.adapters is not AdapterAggregation.SVD:
            return None  # FedIT and FFA-LoRA are element-wise: every rule applies to their tensors
        hidden = self.privacy.secure_aggregation or self.privacy.uses_client_dp
        if hidden:
            return (
                "the SVD method multiplies each site's own A and B, which secure aggregation and "
                "client-level DP do not show the server: choose ffa (exact, and the one for DP) or fedit"
            )
        plain = (
            type(self.strategy) in (FedAvg, FedProx) and self.strategy.params()["server_learning_rate"] == 1.0
        )
        if not plain:
            return (
                f"the SVD method replaces the mean with the factors of the mean product, which "
                f"{self.strategy.name.value} does not compute: use fedavg (server learning rate 1) or "
                "fedprox, or the adapter methods fedit or ffa, which work with every rule"
            )
        return None

    # --- the one aggregation ------------------------------------------------------------

    def aggregate(
        self,
        global_weights: Weights,
        inputs: RoundInputs,
        state: Mapping[str, NDArray[np.floating]] | None = None,
        rng: np.random.Generator | None = None,
    ) -> AggregationResult:
        """The next global model from one round's ``inputs``, and the server state to keep.

        ``rng`` draws client-level DP's noise (:func:`federation.privacy.dp.secure_generator`
        in production, a seeded generator in simulations and tests); other plans ignore it.
        """
        spec = self._spec_of(global_weights)
        if self.privacy.secure_aggregation:
            if not isinstance(inputs, UnmaskedSum):
                raise ConfigurationError("a secure round aggregates the unmasked sum, not updates")
            return self._adapters_kept(
                global_weights, self._aggregate_sum(global_weights, inputs, spec, state, rng)
            )
        if isinstance(inputs, UnmaskedSum):
            raise ConfigurationError("this plan has no secure aggregation: aggregate the updates")
        if self.privacy.uses_client_dp:
            return self._adapters_kept(
                global_weights, self._aggregate_client_dp(global_weights, inputs, spec, state, rng)
            )
        result = self.strategy.aggregate(global_weights, inputs, state=state)
        if self.adapters is None:
            return result
        return self._adapters_combined(global_weights, inputs, spec, result)

    def _adapters_kept(self, global_weights: Weights, result: AggregationResult) -> AggregationResult:
        """Under FFA-LoRA every A stays the global one (the secure and DP paths see no single update)."""
        if self.adapters is not AdapterAggregation.FFA:
            return result
        pairs = lora_pairs(ModelSpec.from_weights(global_weights))
        return replace(result, weights=adapter_maths.keep_frozen_a(result.weights, global_weights, pairs))

    def _adapters_combined(
        self,
        global_weights: Weights,
        updates: Sequence[UpdateLike],
        spec: ModelSpec,
        result: AggregationResult,
    ) -> AggregationResult:
        """The adapter method on top of the strategy's result, and FedIT's error for the round."""
        pairs = lora_pairs(spec)
        sites = [_weights_of(update, spec) for update in updates]
        if self.adapters is AdapterAggregation.FFA:  # what counts is the frozen global A
            sites = [adapter_maths.keep_frozen_a(site, global_weights, pairs) for site in sites]
        shares = _shares(result.details, updates)
        details: Details = {
            **result.details,
            "lora_fedit_error": adapter_maths.fedit_error(sites, shares, pairs),
        }
        weights = result.weights
        if self.adapters is AdapterAggregation.SVD:
            rank = spec.by_name()[pairs[0][0]].shape[0] if pairs else 0
            weights, residual = adapter_maths.svd_aggregate(
                weights, sites, shares, pairs, rank, global_weights
            )
            details["lora_svd_residual"] = residual
        elif self.adapters is AdapterAggregation.FFA:
            weights = adapter_maths.keep_frozen_a(weights, global_weights, pairs)
        return AggregationResult(weights, result.state, details)

    def _spec_of(self, global_weights: Weights) -> ModelSpec:
        spec = ModelSpec.from_weights(global_weights)
        if self.model_spec is not None and spec != self.model_spec:
            raise ConfigurationError("the global weights do not match the plan's model spec")
        return spec

    def _aggregate_client_dp(
        self,
        global_weights: Weights,
        updates: Sequence[UpdateLike],
        spec: ModelSpec,
        state: Mapping[str, NDArray[np.floating]] | None,
        rng: np.random.Generator | None,
    ) -> AggregationResult:
        """DP-FedAvg: equal-weight mean of the re-clipped updates plus Gaussian noise."""
        mechanism = _client_mechanism(self.privacy)
        noisy, dp_details = dp.dp_fedavg(
            global_weights,
            [_weights_of(update, spec) for update in updates],
            noise_multiplier=_resolved_noise(mechanism),
            clipping_norm=mechanism.clipping_norm,
            rng=_required_rng(rng),
        )
        result = self._server_step(global_weights, noisy, state)
        return AggregationResult(result.weights, result.state, {**result.details, **dp_details})

    def _aggregate_sum(
        self,
        global_weights: Weights,
        summed: UnmaskedSum,
        spec: ModelSpec,
        state: Mapping[str, NDArray[np.floating]] | None,
        rng: np.random.Generator | None,
    ) -> AggregationResult:
        """Secure aggregation: the mean change from the unmasked sum, then the server step."""
        change_sum, weight_sum = secagg.unpack_weighted_sum(summed.total)
        summed_change = unflatten(change_sum, spec)
        mean_change, dp_details = self._mean_change(summed_change, weight_sum, summed.num_sites, rng)
        result = self._server_step(global_weights, _plus(global_weights, mean_change), state)
        details: Details = {**result.details, **dp_details, "secure_aggregation_sites": summed.num_sites}
        return AggregationResult(result.weights, result.state, details)

    def _mean_change(
        self, summed: Weights, weight_sum: float, num_sites: int, rng: np.random.Generator | None
    ) -> tuple[Weights, Details]:
        """The example-weighted mean change, or under client-level DP the noisy unweighted one."""
        if not self.privacy.uses_client_dp:
            _check_weight_sum(weight_sum, num_sites)
            return {name: array / weight_sum for name, array in summed.items()}, {}
        # Each site packs the weight 1: the public count of survivors must match, or a site's
        # contribution could exceed the sensitivity the noise is calibrated for.
        if abs(weight_sum - num_sites) > _WEIGHT_SLACK:
            raise SecureAggregationError(
                f"the masked weights sum to {weight_sum:.4f}, not the {num_sites} sites of client-level DP"
            )
        mechanism = _client_mechanism(self.privacy)
        noise = _resolved_noise(mechanism)
        mean = dp.noisy_mean_from_sum(
            summed,
            num_sites,
            noise_multiplier=noise,
            clipping_norm=mechanism.clipping_norm,
            rng=_required_rng(rng),
        )
        std = dp.gaussian_noise_std(noise, mechanism.clipping_norm, num_sites)
        return mean, {"noise_multiplier": float(noise), "noise_std": std, "num_sites": num_sites}

    def _server_step(
        self, global_weights: Weights, mean: Weights, state: Mapping[str, NDArray[np.floating]] | None
    ) -> AggregationResult:
        """The strategy's server step on one mean, handed over as the round's only update
        (its example count is irrelevant: the mean of one update is itself)."""
        return self.strategy.aggregate(global_weights, [ClientUpdate(mean, num_examples=1)], state=state)


def _adapter_method(value: object) -> AdapterAggregation | None:
    if value is None:
        return None
    try:
        return AdapterAggregation(str(value))
    except ValueError:
        raise ConfigurationError(
            f"a round plan's adapters must be one of {[a.value for a in AdapterAggregation]}"
        ) from None


def _shares(details: Details, updates: Sequence[UpdateLike]) -> list[float]:
    """The sites' shares the strategy used (FedAvg's, cap included), else their example shares."""
    shares = details.get("weights")
    if isinstance(shares, list) and len(shares) == len(updates):
        return [float(share) for share in shares]
    total = sum(update.num_examples for update in updates)
    return [update.num_examples / total for update in updates]


def _check_weight_sum(weight_sum: float, num_sites: int) -> None:
    """Each site's hidden weight is its example count, 1 to ``MAX_NUM_EXAMPLES``: a sum outside
    what ``num_sites`` such counts can make means a site packed a false weight (a negative one
    could cancel the others and blow the mean up)."""
    low, high = num_sites - _WEIGHT_SLACK, num_sites * MAX_NUM_EXAMPLES + _WEIGHT_SLACK
    if not low <= weight_sum <= high:
        raise SecureAggregationError(
            f"the masked example counts sum to {weight_sum:.4g}; {num_sites} sites of 1 to "
            f"{MAX_NUM_EXAMPLES} examples each make between {num_sites} and {num_sites * MAX_NUM_EXAMPLES}"
        )


def _mean_rules() -> str:
    """The rules that need no single update: what secure aggregation and client-level DP allow."""
    names = [name.value for name, strategy in STRATEGIES.items() if not strategy.robust]
    return ", ".join(names[:-1]) + " or " + names[-1]


def _noise_for_budget(privacy: PrivacySettings, num_rounds: int) -> float:
    try:
        return accounting.noise_for_epsilon(
            target_epsilon=privacy.budget, steps=num_rounds, delta=privacy.delta
        )
    except ConfigurationError as error:
        raise ConfigurationError(
            f"epsilon {privacy.budget:g} cannot cover {num_rounds} rounds: {error}"
        ) from None


def _sample_dp_reason(
    mechanism: DifferentialPrivacy | None,
    model_kind: ModelKind | None,
    proximal_mu: float,
    class_weighting: bool,
) -> str | None:
    if mechanism is None or mechanism.level is not DPLevel.SAMPLE:
        return None
    if model_kind is not None and not model_kind.uses_torch:
        return (
            "sample-level DP (DP-SGD with Opacus) needs a torch model (logistic, mlp or cnn), "
            f"not {model_kind.value}"
        )
    if proximal_mu > 0:
        return "sample-level DP does not combine with FedProx's proximal_mu; set it to 0"
    if class_weighting:
        return CLASS_WEIGHTING_WITH_DP_SGD
    return None


def _client_mechanism(privacy: PrivacySettings) -> DifferentialPrivacy:
    mechanism = privacy.differential_privacy
    if mechanism is None or mechanism.level is not DPLevel.CLIENT:
        raise ConfigurationError("this plan has no client-level DP")
    return mechanism


def _resolved_noise(mechanism: DifferentialPrivacy) -> float:
    if mechanism.noise_multiplier is None or not math.isfinite(mechanism.noise_multiplier):
        raise ConfigurationError("client-level DP's noise is not resolved: call RoundPlan.resolved first")
    return mechanism.noise_multiplier


def _required_rng(rng: np.random.Generator | None) -> np.random.Generator:
    if rng is None:
        raise ConfigurationError("client-level DP draws noise: pass a numpy.random.Generator as rng")
    return rng


def _weights_of(update: UpdateLike, spec: ModelSpec) -> Weights:
    """An update's tensors in memory (DP-FedAvg clips each update whole)."""
    if not isinstance(update, StoredUpdate):
        return update.weights
    data = update.path.read_bytes()
    if update.sha256 is not None and hashlib.sha256(data).hexdigest() != update.sha256:
        raise InvalidUpdateError(f"the stored update {update.sha256[:12]} does not match its digest")
    return deserialize_weights(data, spec=spec)


def _plus(global_weights: Weights, change: Weights) -> Weights:
    """``g + change`` in float64, rounded to each global tensor's dtype."""
    return {
        name: (np.asarray(array, dtype=np.float64) + change[name]).astype(array.dtype)
        for name, array in global_weights.items()
    }
