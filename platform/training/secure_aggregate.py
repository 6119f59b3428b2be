"""Aggregating a secure-aggregation round: unmask the sum, then one server step.

Each survivor masked ``[n_i * (w_i - g), n_i]`` (with client-level DP: its clipped change
and the weight 1), so the unmasked sum gives the example-weighted mean change without
the server ever holding one site's update. The strategy's server step then runs on the
one mean (as for DP-FedAvg), with the Gaussian noise added first under client-level DP.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from federation.aggregation.strategies import Details, Strategy
from federation.errors import SecureAggregationError
from federation.privacy import dp, secagg
from federation.privacy.secure_fedavg import unflatten
from federation.privacy.settings import DPLevel
from federation.types import ClientUpdate, ModelSpec, Weights
from training import privacy, secure_rounds
from training.blobs import blob_store
from training.models import Job, Round, Update


def aggregate_secure_round(
    *,
    round_id: int,
    job: Job,
    updates: Sequence[Update],
    strategy: Strategy,
    global_weights: Weights,
    spec: ModelSpec,
    server_state: Weights | None,
) -> tuple[Weights, Weights, Details]:
    """``updates`` are the survivors' masked updates (:func:`secure_rounds.survivors_updates`)."""
    round_ = Round.objects.get(pk=round_id)
    dimension = secure_rounds.config_of(round_).dimension
    masked = (secure_rounds.decode_masked(blob_store().read(u.sha256), dimension) for u in updates)
    change_sum, weight_sum = secagg.unpack_weighted_sum(secure_rounds.unmasked_sum(round_, masked))
    mean_change, details = _mean_change(job, change_sum, weight_sum, len(updates), spec)
    new_weights = {
        name: (global_weights[name].astype(np.float64) + mean_change[name]).astype(global_weights[name].dtype)
        for name in global_weights
    }
    result = strategy.aggregate(
        global_weights, [ClientUpdate(new_weights, num_examples=1)], state=server_state
    )
    details = {**result.details, **details, "secure_aggregation_sites": len(updates)}
    return result.weights, result.state, details


def _mean_change(
    job: Job, change_sum: NDArray[np.float64], weight_sum: float, num_sites: int, spec: ModelSpec
) -> tuple[Weights, Details]:
    mechanism = privacy.settings_of(job).differential_privacy
    summed = unflatten(change_sum, spec)
    if mechanism is None or mechanism.level is not DPLevel.CLIENT:
        return {name: array / weight_sum for name, array in summed.items()}, {}
    # Each site packs the weight 1: the public count of survivors must match, or a site's
    # contribution could exceed the sensitivity the noise is calibrated for.
    if abs(weight_sum - num_sites) > 1e-3:
        raise SecureAggregationError(
            f"the masked weights sum to {weight_sum:.4f}, not the {num_sites} sites of client-level DP"
        )
    noise = privacy.client_noise(job)
    mean = dp.noisy_mean_from_sum(
        summed,
        num_sites,
        noise_multiplier=noise,
        clipping_norm=mechanism.clipping_norm,
        rng=dp.secure_generator(),
    )
    std = dp.gaussian_noise_std(noise, mechanism.clipping_norm, num_sites)
    return mean, {"noise_multiplier": noise, "noise_std": std, "num_sites": num_sites}
