"""Secure-aggregation rounds: the protocol's phases on top of the round state machine.

A training round of a study with secure aggregation stays OPEN/COLLECTING through four
phases (Bonawitz et al., CCS 2017; the maths is :mod:`federation.privacy.secagg`), each
with its own deadline, then goes to AGGREGATING as any round does::

    advertise --every member sent keys--> share --every member sent share bundles-->
    mask --every member sent its masked update--> unmask --every member answered--> AGGREGATING

The members of a phase are the sites that completed the one before (and have not
refused since). At a phase's deadline the round moves on with the sites that answered,
if at least ``threshold`` did; otherwise it is extended, then fails. ``Round.secure_aggregation``
holds the phase, the protocol config and the site sets fixed at each step: ``roster`` (U1),
``sharers`` (U2) and ``survivors`` (U3). This module only reads and writes that record and
the :class:`SecAggMessage` rows; :mod:`training.services` takes the locks and decides.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Callable, Iterable, Mapping

import numpy as np
from numpy.typing import NDArray
from safetensors.numpy import load as safetensors_load
from safetensors.numpy import save as safetensors_save

from federation.errors import SecureAggregationError
from federation.privacy import secagg
from federation.rounds import MIN_SECURE_SITES, RoundPlan, UnmaskedSum
from federation.types import ModelSpec
from fedplatform.errors import Conflict, InvalidInput
from training.models import Refusal, Round, SecAggMessageKind, Update

#: The name of the one tensor of a masked upload.
MASKED_TENSOR = "masked"


class Phase(enum.StrEnum):
    ADVERTISE = "advertise"
    SHARE = "share"
    MASK = "mask"
    UNMASK = "unmask"


_NEXT = {Phase.ADVERTISE: Phase.SHARE, Phase.SHARE: Phase.MASK, Phase.MASK: Phase.UNMASK}
#: The message each phase waits for (the mask phase waits for an Update instead).
_MESSAGE = {
    Phase.ADVERTISE: SecAggMessageKind.KEYS,
    Phase.SHARE: SecAggMessageKind.SHARES,
    Phase.UNMASK: SecAggMessageKind.UNMASKING,
}
#: The site set fixed when a phase starts: its members.
_MEMBERS_KEY = {Phase.SHARE: "roster", Phase.MASK: "sharers", Phase.UNMASK: "survivors"}


def is_secure(round_: Round) -> bool:
    return bool(round_.secure_aggregation)


def secure_round_init(
    *, job_id: int, number: int, base_sha256: str, spec: ModelSpec, plan: RoundPlan, sites: int
) -> dict[str, object]:
    """The record a new training round starts with; {} when the job's plan does not use it."""
    if not plan.privacy.secure_aggregation:
        return {}
    config = secagg.SecAggConfig(
        round_context=f"fedhealth;job={job_id};round={number};base={base_sha256}".encode(),
        threshold=plan.secure_threshold(sites),
        dimension=spec.numel + 1,  # the parameters' weighted change, then the weight
    )
    return {"phase": Phase.ADVERTISE.value, "config": config.to_json()}


def required_answers(round_: Round, *, min_updates: int) -> int:
    """Fewest sites each phase must keep: the threshold, the job's quorum, and never fewer
    than :data:`federation.rounds.MIN_SECURE_SITES`."""
    return max(config_of(round_).threshold, min_updates, MIN_SECURE_SITES)


def phase_of(round_: Round) -> Phase:
    return Phase(round_.secure_aggregation["phase"])


def config_of(round_: Round) -> secagg.SecAggConfig:
    return secagg.SecAggConfig.from_json(round_.secure_aggregation["config"])


def _sites(round_: Round, key: str) -> set[int]:
    return {int(site) for site in round_.secure_aggregation.get(key, [])}


def phase_members(round_: Round, approved_sites: set[int]) -> set[int]:
    """The sites expected to answer the current phase (refused sites left out)."""
    phase = phase_of(round_)
    members = approved_sites if phase is Phase.ADVERTISE else _sites(round_, _MEMBERS_KEY[phase])
    refused = set(Refusal.objects.filter(job=round_.job_id).values_list("institution_id", flat=True))
    return members - refused


def phase_responders(round_: Round) -> set[int]:
    """The sites that answered the current phase."""
    phase = phase_of(round_)
    if phase is Phase.MASK:
        return set(round_.updates.values_list("institution_id", flat=True))
    messages = round_.secagg_messages.filter(kind=_MESSAGE[phase])
    return set(messages.values_list("institution_id", flat=True))


def phase_advance(round_: Round, responders: set[int]) -> Phase:
    """Fix the sites that completed the current phase as the next one's members."""
    phase = phase_of(round_)
    record = dict(round_.secure_aggregation)
    if phase is Phase.ADVERTISE:
        keys = round_.secagg_messages.filter(kind=SecAggMessageKind.KEYS, institution_id__in=responders)
        record["roster"] = {str(m.institution_id): m.payload for m in keys}
    elif phase is Phase.SHARE:
        record["sharers"] = sorted(responders)
    elif phase is Phase.MASK:
        record["survivors"] = sorted(responders)
        record["dropped"] = sorted(_sites(round_, "sharers") - responders)
    record["phase"] = _NEXT[phase].value
    round_.secure_aggregation = record
    return _NEXT[phase]


# --- what a site sees of the round ---------------------------------------------------------


def site_pending(round_: Round, institution_id: int, approved_sites: set[int]) -> bool:
    """Whether the site still has to answer the round's current phase."""
    return institution_id in phase_members(round_, approved_sites) - phase_responders(round_)


def task_view(round_: Round, institution_id: int) -> dict[str, object]:
    """The protocol state a site needs for the current phase (never another site's secrets)."""
    record = round_.secure_aggregation
    view: dict[str, object] = {"phase": record["phase"], "config": record["config"]}
    if "roster" in record:
        view["roster"] = record["roster"]
    if "sharers" in record:
        view["inbound"] = _inbound(round_, institution_id, _sites(round_, "sharers"))
    if "survivors" in record:
        view["survivors"] = record["survivors"]
        view["dropped"] = record["dropped"]
    return view


def _inbound(round_: Round, institution_id: int, senders: set[int]) -> dict[str, str]:
    """The share bundles the other sharers addressed to this site."""
    bundles = round_.secagg_messages.filter(kind=SecAggMessageKind.SHARES, institution_id__in=senders)
    return {
        str(message.institution_id): message.payload[str(institution_id)]
        for message in bundles
        if message.institution_id != institution_id
    }


# --- checking what sites send ----------------------------------------------------------------


def check_phase(round_: Round, expected: Phase) -> None:
    if not is_secure(round_):
        raise Conflict(f"round {round_.number} does not use secure aggregation", code="not_secure")
    if phase_of(round_) is not expected:
        raise Conflict(
            f"round {round_.number} is in its {phase_of(round_).value} phase, not {expected.value}",
            code="wrong_phase",
        )


def check_member(round_: Round, institution_id: int, approved_sites: set[int]) -> None:
    if institution_id not in phase_members(round_, approved_sites):
        raise Conflict("this site is no longer part of this secure-aggregation round", code="dropped")


def check_keys(payload: Mapping[str, object]) -> dict[str, str]:
    try:
        return secagg.AdvertisedKeys.from_json(payload).to_json()
    except SecureAggregationError as error:
        raise InvalidInput(str(error), code="invalid_keys") from None


def check_shares(round_: Round, institution_id: int, payload: Mapping[str, str]) -> dict[str, str]:
    """One bundle for each other site of the roster, no more and no fewer."""
    expected = {site for site in round_.secure_aggregation["roster"] if site != str(institution_id)}
    if set(payload) != expected:
        raise InvalidInput(f"send exactly one share bundle for each of the sites {sorted(expected, key=int)}")
    for site, text in payload.items():
        try:
            size = len(base64.b64decode(text, validate=True))
        except (ValueError, binascii.Error):
            size = -1
        if size != secagg.SHARE_BUNDLE_BYTES:
            raise InvalidInput(
                f"the bundle for site {site} is not base64 of {secagg.SHARE_BUNDLE_BYTES} bytes",
                code="invalid_shares",
            )
    return dict(payload)


def normalized_unmasking(payload: Mapping[str, object]) -> dict[str, object]:
    """An unmasking answer in its stored form (so a retry compares equal)."""
    try:
        return dict(secagg.UnmaskingShares.from_json(payload).to_json())
    except SecureAggregationError as error:
        raise InvalidInput(str(error), code="invalid_shares") from None


def check_unmasking(round_: Round, payload: Mapping[str, object]) -> dict[str, object]:
    """Exactly the shares the round asks for: of each survivor's self mask, of each dropped
    site's mask key."""
    try:
        answer = secagg.UnmaskingShares.from_json(payload)
    except SecureAggregationError as error:
        raise InvalidInput(str(error), code="invalid_shares") from None
    if set(answer.self_mask_shares) != _sites(round_, "survivors"):
        raise InvalidInput("send a self-mask share for exactly the round's survivors", code="invalid_shares")
    if set(answer.mask_key_shares) != _sites(round_, "dropped"):
        raise InvalidInput(
            "send a mask-key share for exactly the round's dropped sites", code="invalid_shares"
        )
    return dict(answer.to_json())


def masked_bytes_size(dimension: int) -> int:
    """The exact size of a masked upload: its header is fixed by the dimension."""
    return len(encode_masked(np.zeros(dimension, np.uint64)))


def encode_masked(vector: NDArray[np.uint64]) -> bytes:
    return bytes(safetensors_save({MASKED_TENSOR: np.ascontiguousarray(vector, dtype=np.uint64)}))


def decode_masked(data: bytes, dimension: int) -> NDArray[np.uint64]:
    """A masked vector from bytes a site sent: exact size first, then the one uint64 tensor."""
    if len(data) != masked_bytes_size(dimension):
        raise InvalidInput(
            f"a masked update of this round is exactly {masked_bytes_size(dimension)} bytes",
            code="invalid_update",
        )
    try:
        tensors = safetensors_load(data)
    except Exception as error:  # safetensors raises its own error types for bad headers
        raise InvalidInput(f"not a safetensors file: {error}", code="invalid_update") from None
    vector = tensors.get(MASKED_TENSOR)
    if (
        set(tensors) != {MASKED_TENSOR}
        or vector is None
        or vector.dtype != np.uint64
        or vector.shape != (dimension,)
    ):
        raise InvalidInput(
            f"a masked update holds one uint64 tensor {MASKED_TENSOR!r} of shape ({dimension},)",
            code="invalid_update",
        )
    return vector


# --- unmasking -------------------------------------------------------------------------------


def unmasked_sum(round_: Round, masked: Iterable[NDArray[np.uint64]]) -> NDArray[np.float64]:
    """The decoded sum of the survivors' packed inputs; fails below the threshold.

    ``masked`` is consumed one vector at a time into a running ring sum, so memory stays
    at two vectors whatever the number of sites.
    """
    record = round_.secure_aggregation
    answers = round_.secagg_messages.filter(kind=SecAggMessageKind.UNMASKING)
    shares = {m.institution_id: secagg.UnmaskingShares.from_json(m.payload) for m in answers}
    config = config_of(round_)
    total = secagg.unmask_total(
        config,
        secagg.roster_from_json(record["roster"]),
        secagg.sum_masked(masked),
        survivors=sorted(_sites(round_, "survivors")),
        unmasking_shares=shares,
        dropped_after_sharing=[int(site) for site in record["dropped"]],
    )
    return secagg.decode(total, config.fraction_bits)


def round_unmasked_sum(round_: Round, updates: Iterable[Update], read: Callable[[str], bytes]) -> UnmaskedSum:
    """What the server learns from a secure round: the unmasked sum of the survivors'
    masked inputs (``updates``, whose blobs ``read`` returns), one vector at a time."""
    dimension = config_of(round_).dimension
    survivors = list(updates)
    masked = (decode_masked(read(update.sha256), dimension) for update in survivors)
    return UnmaskedSum(unmasked_sum(round_, masked), len(survivors))


def survivors_updates(round_: Round) -> list[Update]:
    survivors = _sites(round_, "survivors")
    return [u for u in round_.updates.order_by("institution_id") if u.institution_id in survivors]
