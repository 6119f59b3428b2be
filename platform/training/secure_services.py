"""What a site sends in each phase of a secure-aggregation round (docs/privacy.md).

Each service checks that the site takes part, that the round is in the matching phase and
that the site is one of the phase's members, stores the message (unique per site, round
and kind, so a retry of the same message is answered as a duplicate), then lets the round
move on. Under the round's lock, like every change of a round's state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from django.db import IntegrityError, transaction

from audit.services import audit_record
from federation.wire import sha256_hex
from fedplatform.errors import Conflict
from institutions.models import AgentCredential
from training import secure_rounds
from training.blobs import blob_store
from training.models import ACCEPTING_STATES, Round, SecAggMessage, SecAggMessageKind
from training.secure_rounds import Phase
from training.selectors import approved_site_id_list, round_get_for_site
from training.services.rounds import round_advance, round_lock
from training.services.updates import (
    SubmitResult,
    UpdateMeta,
    check_site_may_answer,
    check_update_binding,
    update_accept,
    update_existing,
)


@dataclass(frozen=True)
class MessageResult:
    message: SecAggMessage
    duplicate: bool


def _locked_round(round_id: int, credential: AgentCredential) -> Round:
    # NotFound for another institution's round:
    round_get_for_site(round_id=round_id, credential=credential)
    return round_lock(round_id=round_id)


def _duplicate(
    round_: Round, credential: AgentCredential, kind: SecAggMessageKind, payload: Mapping[str, object]
) -> MessageResult | None:
    """A repeat of a message already taken gets its first answer, whatever happened since
    (the phase moved on because of it, say); a different message is a conflict."""
    existing = round_.secagg_messages.filter(institution=credential.institution_id, kind=kind).first()
    if existing is None:
        return None
    if existing.payload != payload:
        raise Conflict(f"this site already sent different {kind} for this round", code="message_exists")
    return MessageResult(existing, duplicate=True)


def _check_round(round_: Round, credential: AgentCredential, phase: Phase) -> None:
    check_site_may_answer(round_=round_, credential=credential)
    if round_.state not in ACCEPTING_STATES:
        raise Conflict(f"round {round_.number} is {round_.state}; it takes no messages", code="round_closed")
    secure_rounds.check_phase(round_, phase)
    secure_rounds.check_member(round_, credential.institution_id, approved_site_id_list(job=round_.job))


def _store(
    round_: Round, credential: AgentCredential, kind: SecAggMessageKind, payload: Mapping[str, object]
) -> MessageResult:
    try:
        with transaction.atomic():
            message = SecAggMessage.objects.create(
                round=round_, institution_id=credential.institution_id, kind=kind, payload=dict(payload)
            )
    except IntegrityError:
        raise Conflict(f"this site already sent {kind} for this round", code="message_exists") from None
    audit_record(
        actor=f"agent:{credential.pk}",
        kind=f"secure_aggregation.{kind}",
        institution=credential.institution,
        job=round_.job,
        details={"round": round_.number},
    )
    round_advance(round_=round_)
    return MessageResult(message, duplicate=False)


def _submit(
    round_id: int,
    credential: AgentCredential,
    kind: SecAggMessageKind,
    phase: Phase,
    stored_form: Mapping[str, object],
    check: Callable[[Round], Mapping[str, object]],
) -> MessageResult:
    """One phase's message: a repeat gets its first answer; a new one is checked against the
    round (``check`` returns what is stored), stored, and may move the round on."""
    round_ = _locked_round(round_id, credential)
    if (duplicate := _duplicate(round_, credential, kind, stored_form)) is not None:
        return duplicate
    _check_round(round_, credential, phase)
    return _store(round_, credential, kind, check(round_))


@transaction.atomic
def secagg_keys_submit(
    *, round_id: int, credential: AgentCredential, keys: Mapping[str, object]
) -> MessageResult:
    checked = secure_rounds.check_keys(keys)
    return _submit(round_id, credential, SecAggMessageKind.KEYS, Phase.ADVERTISE, checked, lambda _: checked)


@transaction.atomic
def secagg_shares_submit(
    *, round_id: int, credential: AgentCredential, shares: Mapping[str, str]
) -> MessageResult:
    def check(round_: Round) -> Mapping[str, object]:
        return secure_rounds.check_shares(round_, credential.institution_id, shares)

    return _submit(round_id, credential, SecAggMessageKind.SHARES, Phase.SHARE, dict(shares), check)


@transaction.atomic
def secagg_unmasking_submit(
    *, round_id: int, credential: AgentCredential, answer: Mapping[str, object]
) -> MessageResult:
    normalized = secure_rounds.normalized_unmasking(answer)

    def check(round_: Round) -> Mapping[str, object]:
        return secure_rounds.check_unmasking(round_, answer)

    return _submit(round_id, credential, SecAggMessageKind.UNMASKING, Phase.UNMASK, normalized, check)


def secagg_masked_submit(
    *, round_id: int, credential: AgentCredential, meta: UpdateMeta, data: bytes
) -> SubmitResult:
    """A site's masked update: checked for its exact form, stored, then recorded.

    ``meta.num_examples`` is not sent (the weight travels inside the masked sum); the
    record holds 1, so the round's metrics are combined with equal weights.
    """
    round_ = round_get_for_site(round_id=round_id, credential=credential)
    if not secure_rounds.is_secure(round_):
        raise Conflict(f"round {round_.number} does not use secure aggregation", code="not_secure")
    secure_rounds.decode_masked(data, secure_rounds.config_of(round_).dimension)
    sha256 = sha256_hex(data)
    # A retry gets its first answer below.
    if update_existing(round_=round_, credential=credential, sha256=sha256) is None:
        _check_masked_acceptable(round_, credential, meta)
    blob_store().put(data)
    return update_accept(
        round_id=round_id,
        credential=credential,
        meta=meta,
        sha256=sha256,
        size=len(data),
        num_examples=1,  # the weight travels inside the masked sum
        check_acceptable=_check_masked_acceptable,
    )


def _check_masked_acceptable(round_: Round, credential: AgentCredential, meta: UpdateMeta) -> None:
    _check_round(round_, credential, Phase.MASK)
    check_update_binding(round_=round_, meta=meta)
