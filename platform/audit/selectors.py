"""Reading the audit trail, within a person's scope; verifying its hash chain."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from django.db.models import Q, QuerySet

from accounts.selectors import Scope, scope_queryset
from audit.chain import GENESIS_HASH, short_hash
from audit.models import CHAIN_HEAD_ID, AuditChainHead, AuditEvent


def audit_event_list(
    *,
    scope: Scope,
    institution_id: int | None = None,
    job_id: int | None = None,
    actor: str | None = None,
    kind: str | None = None,
) -> QuerySet[AuditEvent]:
    """Newest first; a data owner sees only the events recorded against their institution.

    ``actor`` is matched exactly, and a bare name (no ``kind:`` prefix) also as a user's:
    ``carol`` finds ``user:carol``.
    """
    queryset = AuditEvent.objects.order_by("-pk")
    filters = {"institution_id": institution_id, "job_id": job_id, "kind": kind}
    queryset = queryset.filter(**{name: value for name, value in filters.items() if value is not None})
    if actor is not None:
        queryset = queryset.filter(
            Q(actor=actor) | Q(actor=f"user:{actor}") if ":" not in actor else Q(actor=actor)
        )
    return scope_queryset(queryset, scope=scope, institution_path="institution")


def audit_kind_list(*, scope: Scope) -> list[str]:
    """The kinds of event this scope can see (for filters), in alphabetical order."""
    queryset = audit_event_list(scope=scope).order_by().values_list("kind", flat=True).distinct()
    return sorted(queryset)


@dataclass(frozen=True)
class AuditChainVerification:
    """What ``audit_chain_verify`` found: ``ok``, or the first broken link and why."""

    num_events: int
    head_hash: str
    broken_sequence: int | None = None
    broken_event_id: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_sequence is None

    @property
    def message(self) -> str:
        if self.ok:
            return f"audit chain OK: {self.num_events} events, head {short_hash(self.head_hash)}"
        where = f"id {self.broken_event_id}" if self.broken_event_id is not None else "no such row"
        return f"audit chain BROKEN at event sequence {self.broken_sequence} ({where}): {self.reason}"


def audit_chain_verify(
    *, batch_size: int = 1000, anchors: Mapping[int, str] | None = None
) -> AuditChainVerification:
    """Walk the chain in order, ``batch_size`` events at a time, up to the head as it is
    now (later appends are left for the next run): check that no sequence number is
    missing, each link to the event before and each hash; then check the end of the chain
    against the head. ``anchors`` (sequence number: hash), kept outside the database,
    must match too."""
    anchors = anchors or {}
    head = AuditChainHead.objects.filter(pk=CHAIN_HEAD_ID).first()
    last: AuditEvent | None = None
    for event in _events_in_order(end=head.sequence if head else None, batch_size=batch_size):
        reason = _link_problem(event, last) or _anchor_problem(event, anchors)
        if reason:
            return _broken(last, event.sequence, event.pk, reason)
        last = event
    problem = _end_problem(head, last, anchors)
    if problem is not None:
        sequence, event_id, reason = problem
        return _broken(last, sequence, event_id, reason)
    return AuditChainVerification(num_events=last.sequence if last else 0, head_hash=_hash_of(last))


def _events_in_order(*, end: int | None, batch_size: int) -> Iterator[AuditEvent]:
    """Keyset pagination on ``sequence``: one batch in memory at a time."""
    after = 0
    while True:
        batch = AuditEvent.objects.filter(sequence__gt=after).order_by("sequence")
        if end is not None:
            batch = batch.filter(sequence__lte=end)
        events = list(batch[:batch_size])
        yield from events
        if len(events) < batch_size:
            return
        after = events[-1].sequence


def _link_problem(event: AuditEvent, previous: AuditEvent | None) -> str:
    expected = previous.sequence + 1 if previous else 1
    if event.sequence != expected:
        if event.sequence == expected + 1:
            return f"sequence gap: event {expected} is missing before this one"
        return f"sequence gap: events {expected} to {event.sequence - 1} are missing before this one"
    if event.previous_hash != _hash_of(previous):
        return f"previous_hash does not match the hash of event {expected - 1}"
    if event.hash != event.compute_hash():
        return "hash does not match the event's contents (changed after it was written)"
    return ""


def _anchor_problem(event: AuditEvent, anchors: Mapping[int, str]) -> str:
    anchored = anchors.get(event.sequence)
    if anchored is None or anchored.lower() == event.hash:
        return ""
    return f"the chain up to here differs from the one anchored as {short_hash(anchored)}: it was rewritten"


def _end_problem(
    head: AuditChainHead | None, last: AuditEvent | None, anchors: Mapping[int, str]
) -> tuple[int, int | None, str] | None:
    """Where and why the end of the chain disagrees with the head or the anchors."""
    last_sequence = last.sequence if last else 0
    reason = _head_problem(head, last)
    if reason and head is not None and last_sequence < head.sequence:
        return last_sequence + 1, None, reason
    if reason:
        return last_sequence, last.pk if last else None, reason
    beyond = _event_beyond_head(head.sequence if head else 0)
    if beyond is not None:
        return (
            beyond.sequence,
            beyond.pk,
            "this event lies beyond the end of the chain that the chain head records",
        )
    missing = sorted(sequence for sequence in anchors if sequence > last_sequence)
    if missing:
        return (
            missing[0],
            None,
            f"anchored as {short_hash(anchors[missing[0]])}, but the chain ends at {last_sequence}",
        )
    return None


def _head_problem(head: AuditChainHead | None, last: AuditEvent | None) -> str:
    last_sequence = last.sequence if last else 0
    if head is None:
        return "the chain head row is missing" if last else ""
    if last_sequence < head.sequence:
        return f"missing: the chain head records {head.sequence} events, the chain ends at {last_sequence}"
    if head.hash != _hash_of(last):
        return "the last event's hash differs from the one the chain head records"
    return ""


def _event_beyond_head(end: int) -> AuditEvent | None:
    """The first event past the head that the head, read again now, does not cover.

    An append writes its event and moves the head in one transaction, so a head read after
    the event covers it, unless the head was moved back or the event added around the
    chain (appends since the walk began are no problem)."""
    latest = AuditEvent.objects.filter(sequence__gt=end).order_by("-sequence").only("sequence").first()
    if latest is None:
        return None
    head = AuditChainHead.objects.filter(pk=CHAIN_HEAD_ID).first()
    if head is not None and head.sequence >= latest.sequence:
        return None
    covered = max(end, head.sequence) if head else end
    return AuditEvent.objects.filter(sequence__gt=covered).order_by("sequence").first()


def _hash_of(event: AuditEvent | None) -> str:
    return event.hash if event else GENESIS_HASH


def _broken(
    last_good: AuditEvent | None, sequence: int, event_id: int | None, reason: str
) -> AuditChainVerification:
    return AuditChainVerification(
        num_events=last_good.sequence if last_good else 0,
        head_hash=_hash_of(last_good),
        broken_sequence=sequence,
        broken_event_id=event_id,
        reason=reason,
    )
