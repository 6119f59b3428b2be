"""One secure-aggregation round in one process: every site's real protocol, then one server step.

Secure aggregation is Bonawitz, Ivanov, Kreuter, Marcedone, McMahan, Patel, Ramage, Segal
and Seth, "Practical Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017
(the maths and its threat model are in :mod:`federation.privacy.secagg`). Client-level
differential privacy is DP-FedAvg, McMahan, Ramage, Talwar and Zhang, ICLR 2018
(:mod:`federation.privacy.dp`).

:func:`secure_round` runs, for the simulator and for tests, what the control plane runs
over the network (``training.secure_rounds`` and ``training.secure_aggregate``), with the
same packing: site ``i`` (id ``i + 1``) masks ``pack_weighted(flatten(w_i - g), n_i)``, the
change of its weights in the model spec's canonical order as float64, times its example
count, followed by that count. With client-level DP it clips its change first
(:func:`~federation.privacy.dp.clip_delta`) and packs the weight 1. The server only learns
the sum over the sites whose masked input arrived: ``(sum n_i (w_i - g), sum n_i)``. Their
quotient is FedAvg's example-weighted mean change (under DP,
:func:`~federation.privacy.dp.noisy_mean_from_sum` adds the Gaussian noise and divides by
the number of sites instead); ``g + mean change`` then goes through the strategy as one
update, so a server learning rate or a server optimizer (FedAvgM, FedAdam, ...) acts on
the one mean.

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

import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from federation.aggregation.strategies import AggregationResult, Details, FedAvg, Strategy
from federation.errors import ConfigurationError, InvalidUpdateError, SecureAggregationError
from federation.privacy import dp, secagg
from federation.types import ClientUpdate, ModelSpec, Weights

#: Names every in-process round; each round's keys are fresh, so one name for all is safe.
ROUND_CONTEXT = b"federation.secure_fedavg;in-process"
#: The control plane refuses secure aggregation with fewer sites: with two, each site can
#: subtract its own update from the sum and read the other one.
MIN_SITES = 3


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


def flatten(weights: Mapping[str, NDArray[np.floating]], spec: ModelSpec) -> NDArray[np.float64]:
    """The tensors of ``weights`` in the spec's canonical order, as one float64 vector.

    >>> spec = ModelSpec.from_weights({"a": np.zeros((2, 2)), "b": np.zeros(1)})
    >>> flatten({"b": np.array([5.0]), "a": np.array([[1.0, 2.0], [3.0, 4.0]])}, spec)
    array([1., 2., 3., 4., 5.])
    """
    if set(weights) != set(spec.names):
        raise InvalidUpdateError(f"the weights have tensors {sorted(weights)}, expected {sorted(spec.names)}")
    for tensor in spec.tensors:
        if np.shape(weights[tensor.name]) != tensor.shape:
            raise InvalidUpdateError(
                f"tensor {tensor.name!r} has shape {np.shape(weights[tensor.name])}, expected {tensor.shape}"
            )
    parts = [np.asarray(weights[t.name], dtype=np.float64).ravel() for t in spec.tensors]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)


def unflatten(vector: NDArray[np.floating], spec: ModelSpec) -> Weights:
    """The float64 tensors of ``spec`` cut from one vector (the inverse of :func:`flatten`).

    >>> spec = ModelSpec.from_weights({"a": np.zeros((2, 2)), "b": np.zeros(1)})
    >>> unflatten(np.arange(5.0), spec)["a"]
    array([[0., 1.],
           [2., 3.]])
    """
    array = np.asarray(vector, dtype=np.float64)
    if array.shape != (spec.numel,):
        raise InvalidUpdateError(f"the vector has shape {array.shape}, expected ({spec.numel},)")
    out: Weights = {}
    start = 0
    for tensor in spec.tensors:
        out[tensor.name] = array[start : start + tensor.numel].reshape(tensor.shape)
        start += tensor.numel
    return out


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
    spec = ModelSpec.from_weights(global_weights)
    sites = _check_round(strategy, len(updates), dropped_before_masking, dropped_before_unmasking)
    config = _config(spec, _threshold(threshold, len(sites)), fraction_bits)
    silent_at_masking = set(dropped_before_masking)
    senders = [site for site in sites if site not in silent_at_masking]
    packed = {site: _site_input(global_weights, updates[site - 1], spec, client_dp) for site in senders}
    total = _run_protocol(config, sites, packed, set(dropped_before_unmasking), random_bytes)
    change_sum, weight_sum = secagg.unpack_weighted_sum(total)
    mean_change, dp_details = _mean_change(unflatten(change_sum, spec), weight_sum, client_dp)
    mean_update = ClientUpdate(_plus(global_weights, mean_change), num_examples=1)
    result = strategy.aggregate(global_weights, [mean_update], state=state)
    details: Details = {**result.details, **dp_details, "secure_aggregation_sites": len(packed)}
    return AggregationResult(weights=result.weights, state=result.state, details=details)


def _check_round(
    strategy: Strategy,
    num_sites: int,
    dropped_before_masking: Collection[int],
    dropped_before_unmasking: Collection[int],
) -> list[int]:
    """The site ids ``1..n``, after refusing what a secure round cannot do."""
    if strategy.name.sees_single_updates:
        raise ConfigurationError(
            f"strategy {strategy.name.value!r} needs every site's update on its own, but secure aggregation "
            "shows the server only their sum: use fedavg, fedprox, fedavgm, fedadagrad, fedadam or fedyogi"
        )
    if isinstance(strategy, FedAvg) and strategy.max_weight_share is not None:
        raise ConfigurationError(
            "max_weight_share caps each site's share of the weight, but secure aggregation shows the "
            "server only the sum of the weights: leave max_weight_share unset"
        )
    if num_sites < MIN_SITES:
        raise ConfigurationError(
            f"secure aggregation needs at least {MIN_SITES} sites, got {num_sites}: with two, "
            "either site can read the other's update from the sum"
        )
    sites = list(range(1, num_sites + 1))
    unknown = sorted((set(dropped_before_masking) | set(dropped_before_unmasking)) - set(sites))
    if unknown:
        raise ConfigurationError(f"sites {unknown} are not in this round: site ids are 1..{num_sites}")
    return sites


def _threshold(threshold: int | None, num_sites: int) -> int:
    """``threshold``, or a strict majority; refused outside ``[minimum_threshold(n), n]``."""
    minimum = secagg.minimum_threshold(num_sites)
    if threshold is None:
        return minimum
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not minimum <= threshold <= num_sites:
        raise ConfigurationError(
            f"the threshold must be an integer between {minimum} (a majority of the {num_sites} sites) "
            f"and {num_sites}, got {threshold!r}"
        )
    return threshold


def _config(spec: ModelSpec, threshold: int, fraction_bits: int) -> secagg.SecAggConfig:
    return secagg.SecAggConfig(
        round_context=ROUND_CONTEXT,
        threshold=threshold,
        dimension=spec.numel + 1,  # the parameters' weighted change, then the weight
        fraction_bits=fraction_bits,
    )


def _plus(global_weights: Weights, change: Weights) -> Weights:
    """``g + change`` in float64, rounded to each global tensor's dtype (as the control plane)."""
    return {
        name: (np.asarray(array, dtype=np.float64) + change[name]).astype(array.dtype)
        for name, array in global_weights.items()
    }


def _site_input(
    global_weights: Weights, update: ClientUpdate, spec: ModelSpec, client_dp: ClientDP | None
) -> NDArray[np.float64]:
    """What one site masks: ``[n_i * change..., n_i]``, or its clipped change and 1 under DP."""
    if client_dp is None:
        weights, weight = update.weights, float(update.num_examples)
    else:
        weights, _ = dp.clip_delta(update.weights, global_weights, client_dp.clipping_norm)
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


def _mean_change(summed: Weights, weight_sum: float, client_dp: ClientDP | None) -> tuple[Weights, Details]:
    """The example-weighted mean change, or under DP the noisy unweighted mean and its noise."""
    if client_dp is None:
        return {name: array / weight_sum for name, array in summed.items()}, {}
    num_sites = round(weight_sum)  # each site packed the weight 1
    mean = dp.noisy_mean_from_sum(
        summed,
        num_sites,
        noise_multiplier=client_dp.noise_multiplier,
        clipping_norm=client_dp.clipping_norm,
        rng=client_dp.rng,
    )
    std = dp.gaussian_noise_std(client_dp.noise_multiplier, client_dp.clipping_norm, num_sites)
    details: Details = {
        "noise_multiplier": float(client_dp.noise_multiplier),
        "noise_std": std,
        "num_sites": num_sites,
    }
    return mean, details
