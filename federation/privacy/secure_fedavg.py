"""One secure-aggregation round in one process: every site's real protocol, then one server step.

Secure aggregation is Bonawitz, Ivanov, Kreuter, Marcedone, McMahan, Patel, Ramage, Segal
and Seth, "Practical Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017
(the maths and its threat model are in :mod:`federation.privacy.secagg`). Client-level
differential privacy is DP-FedAvg, McMahan, Ramage, Talwar and Zhang, ICLR 2018
(:mod:`federation.privacy.dp`).

:func:`secure_sum` runs, for the simulator and for tests, what the sites and the control
plane run over the network (``training.secure_rounds``), with the same packing: site
``i`` (id ``i + 1``) masks ``pack_weighted(flatten(w_i - g), n_i)``, the change of its
weights in the model spec's canonical order as float64, times its example count,
followed by that count. With client-level DP it clips its change first
(:func:`~federation.privacy.dp.clip_delta`) and packs the weight 1. The server only learns
the sum over the sites whose masked input arrived: ``(sum n_i (w_i - g), sum n_i)``. Their
quotient is FedAvg's example-weighted mean change (under DP,
:func:`~federation.privacy.dp.noisy_mean_from_sum` adds the Gaussian noise and divides by
the number of sites instead); ``g + mean change`` then goes through the strategy as one
update, so a server learning rate or a server optimizer (FedAvgM, FedAdam, ...) acts on
the one mean. That step is the round plan's (:meth:`federation.rounds.RoundPlan.aggregate`
on an :class:`~federation.rounds.UnmaskedSum`), the same as the control plane's;
:func:`secure_round` is :func:`secure_sum` followed by it.

Error bound. Each site rounds ``n_i * (w_i - g)`` to ``2^-f`` (``f = fraction_bits``), so
the decoded sum is within ``s * 2^-(f+1)`` per coordinate of the exact float64 sum, ``s``
being the number of survivors (:func:`~federation.privacy.secagg.error_bound`); the weights
``n_i`` are integers and decode exactly. The mean change is thus within
``s * 2^-(f+1) / sum(n_i)`` of the plaintext one, plus float64 rounding; the new weights are
then rounded to the global model's dtype, as the control plane does.

Rules that need each update on its own (median, trimmed mean, Krum) and a FedAvg weight cap
(``max_weight_share`` needs each site's weight) cannot run on a sum and are refused.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from federation.aggregation.flat import flatten, unflatten
from federation.aggregation.strategies import AggregationResult, Strategy
from federation.errors import ConfigurationError, SecureAggregationError
from federation.privacy import dp, secagg
from federation.privacy.settings import DifferentialPrivacy, DPLevel, PrivacySettings
from federation.rounds import RoundPlan, UnmaskedSum
from federation.types import ClientUpdate, ModelSpec, Weights

__all__ = ["ClientDP", "flatten", "secure_plan", "secure_round", "secure_sum", "unflatten"]

#: Names every in-process round; each round's keys are fresh, so one name for all is safe.
ROUND_CONTEXT = b"federation.secure_fedavg;in-process"


@dataclass(frozen=True)
class ClientDP:
    """Client-level DP (DP-FedAvg) of a secure round: each site clips its change to
    ``clipping_norm``; the server adds ``N(0, (noise_multiplier * clipping_norm)^2)`` to the
    sum with noise drawn from ``rng`` (:func:`~federation.privacy.dp.secure_generator` in
    production, a seeded generator in simulations and tests)."""

    noise_multiplier: float
    clipping_norm: float
    rng: np.random.Generator

    def __post_init__(self) -> None:
        dp.gaussian_noise_std(self.noise_multiplier, self.clipping_norm, 1)  # checks both
        if not isinstance(self.rng, np.random.Generator):
            raise ConfigurationError(f"rng must be a numpy.random.Generator, got {type(self.rng).__name__}")


def secure_round(
    global_weights: Weights,
    updates: Sequence[ClientUpdate],
    *,
    strategy: Strategy,
    threshold: int | None = None,
    dropped_before_masking: Collection[int] = (),
    dropped_before_unmasking: Collection[int] = (),
    state: Mapping[str, NDArray[np.floating]] | None = None,
    random_bytes: secagg.RandomBytes = os.urandom,
    fraction_bits: int = secagg.DEFAULT_FRACTION_BITS,
    client_dp: ClientDP | None = None,
) -> AggregationResult:
    """The next global model from one secure-aggregation round over ``updates``.

    Site ids are ``1..n`` (``updates[i]`` is site ``i + 1``). Every site shares keys; a site
    in ``dropped_before_masking`` then sends no masked input (its update is not counted); a
    site in ``dropped_before_unmasking`` sends its masked input (counted) but does not
    answer the unmasking request. ``threshold`` None is a strict majority of the ``n`` sites.
    Raises :class:`ConfigurationError` for a strategy that cannot run on a sum and
    :class:`SecureAggregationError` when fewer than ``threshold`` sites answer a phase.
    ``details`` holds the strategy's, ``secure_aggregation_sites`` (the survivors) and,
    under DP, the noise.
    """
    plan = secure_plan(strategy, threshold=threshold, client_dp=client_dp)
    summed = secure_sum(
        global_weights,
        updates,
        plan=plan,
        dropped_before_masking=dropped_before_masking,
        dropped_before_unmasking=dropped_before_unmasking,
        random_bytes=random_bytes,
        fraction_bits=fraction_bits,
    )
    return plan.aggregate(global_weights, summed, state, client_dp.rng if client_dp else None)


def secure_plan(
    strategy: Strategy, *, threshold: int | None = None, client_dp: ClientDP | None = None
) -> RoundPlan:
    """The round plan of :func:`secure_round`'s arguments (no budget: the run's is not known here)."""
    mechanism = None
    if client_dp is not None:
        mechanism = DifferentialPrivacy(DPLevel.CLIENT, client_dp.clipping_norm, client_dp.noise_multiplier)
    privacy = PrivacySettings(
        secure_aggregation=True,
        secure_aggregation_threshold=threshold,
        differential_privacy=mechanism,
        epsilon=None if mechanism is None else math.inf,
    )
    return RoundPlan(strategy=strategy, privacy=privacy)


def secure_sum(
    global_weights: Weights,
    updates: Sequence[ClientUpdate],
    *,
    plan: RoundPlan,
    dropped_before_masking: Collection[int] = (),
    dropped_before_unmasking: Collection[int] = (),
    random_bytes: secagg.RandomBytes = os.urandom,
    fraction_bits: int = secagg.DEFAULT_FRACTION_BITS,
) -> UnmaskedSum:
    """Run the protocol with a real client per site; what the server learns: the unmasked
    sum of the survivors' packed vectors. Each site clips its change first under the plan's
    client-level DP. Raises as :func:`secure_round` does."""
    plan.check(len(updates))
    spec = ModelSpec.from_weights(global_weights)
    sites = _site_ids(len(updates), dropped_before_masking, dropped_before_unmasking)
    config = _config(spec, plan.secure_threshold(len(sites)), fraction_bits)
    silent_at_masking = set(dropped_before_masking)
    senders = [site for site in sites if site not in silent_at_masking]
    clipping_norm = _clipping_norm(plan)
    packed = {site: _site_input(global_weights, updates[site - 1], spec, clipping_norm) for site in senders}
    total = _run_protocol(config, sites, packed, set(dropped_before_unmasking), random_bytes)
    return UnmaskedSum(total, len(packed))


def _clipping_norm(plan: RoundPlan) -> float | None:
    mechanism = plan.privacy.differential_privacy
    return mechanism.clipping_norm if plan.privacy.uses_client_dp and mechanism is not None else None


def _site_ids(
    num_sites: int, dropped_before_masking: Collection[int], dropped_before_unmasking: Collection[int]
) -> list[int]:
    """The site ids ``1..n``, after refusing dropouts of sites not in the round."""
    sites = list(range(1, num_sites + 1))
    unknown = sorted((set(dropped_before_masking) | set(dropped_before_unmasking)) - set(sites))
    if unknown:
        raise ConfigurationError(f"sites {unknown} are not in this round: site ids are 1..{num_sites}")
    return sites


def _config(spec: ModelSpec, threshold: int, fraction_bits: int) -> secagg.SecAggConfig:
    return secagg.SecAggConfig(
        round_context=ROUND_CONTEXT,
        threshold=threshold,
        dimension=spec.numel + 1,  # the parameters' weighted change, then the weight
        fraction_bits=fraction_bits,
    )


def _site_input(
    global_weights: Weights, update: ClientUpdate, spec: ModelSpec, clipping_norm: float | None
) -> NDArray[np.float64]:
    """What one site masks: ``[n_i * change..., n_i]``, or its clipped change and 1 under DP."""
    if clipping_norm is None:
        weights, weight = update.weights, float(update.num_examples)
    else:
        weights, _ = dp.clip_delta(update.weights, global_weights, clipping_norm)
        weight = 1.0
    change = flatten(weights, spec) - flatten(global_weights, spec)
    return secagg.pack_weighted(change, weight)


def _run_protocol(
    config: secagg.SecAggConfig,
    sites: Sequence[int],
    packed: Mapping[int, NDArray[np.float64]],
    silent_at_unmasking: Collection[int],
    random_bytes: secagg.RandomBytes,
) -> NDArray[np.float64]:
    """The four phases with a real client per site; the decoded sum of ``packed``'s inputs."""
    clients = {
        site: secagg.SecAggClient(site_id=site, config=config, random_bytes=random_bytes) for site in sites
    }
    roster = {site: client.advertise_keys() for site, client in clients.items()}
    inbound: dict[int, dict[int, bytes]] = {site: {} for site in sites}
    for sender, client in clients.items():  # every site shares keys: U2 = U1
        for receiver, ciphertext in client.share_keys(roster).items():
            inbound[receiver][sender] = ciphertext
    masked = {site: clients[site].masked_input(vector, inbound[site]) for site, vector in packed.items()}
    _require_quorum("sent a masked input", len(masked), config.threshold)
    survivors, dropped = sorted(masked), sorted(set(sites) - set(masked))
    answers = {
        site: clients[site].unmasking_shares(survivors=survivors, dropped=dropped, inbound=inbound[site])
        for site in survivors
        if site not in silent_at_unmasking
    }
    return secagg.unmask_sum(config, roster, masked, answers, dropped_after_sharing=dropped)


def _require_quorum(what: str, count: int, threshold: int) -> None:
    """As at a phase deadline of the control plane: fewer than ``threshold`` sites fail the round."""
    if count < threshold:
        raise SecureAggregationError(
            f"only {count} sites {what}; the threshold is {threshold}: the round fails and reveals "
            "nothing about any single site's input"
        )
