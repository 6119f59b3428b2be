"""The audit trail is append-only and hash-chained; ``audit_verify`` names the first broken link.

Vendor-neutral: run on SQLite by default and on PostgreSQL with ``DATABASE_URL`` set.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, connections, transaction
from django.db.migrations.loader import MigrationLoader
from django.test import RequestFactory
from world import STUDY_MODEL, job_make, study_make

from audit.chain import GENESIS_HASH, event_hash
from audit.models import AppendOnlyError, AuditChainHead, AuditEvent
from audit.selectors import audit_chain_verify
from audit.services import audit_record
from institutions.models import Institution
from institutions.services import institution_create
from training.models import Job

pytestmark = pytest.mark.security


TABLE = AuditEvent._meta.db_table

# --- helpers ---------------------------------------------------------------------------


@contextmanager
def append_only_triggers_off() -> Iterator[None]:
    """Lift the database's refusal of UPDATE and DELETE (inside the test's transaction)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no pending FK checks before ALTER
            cursor.execute(f"ALTER TABLE {TABLE} DISABLE TRIGGER USER")
            yield
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute(f"ALTER TABLE {TABLE} ENABLE TRIGGER USER")
        elif connection.vendor == "sqlite":
            cursor.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = %s", [TABLE]
            )
            triggers = cursor.fetchall()
            for name, _ in triggers:
                cursor.execute(f"DROP TRIGGER {name}")
            yield
            for _, sql in triggers:
                cursor.execute(sql)
        else:
            pytest.skip(reason=f"no trigger handling for {connection.vendor}")


def raw_set(event: AuditEvent, column: str, value: object) -> None:
    """Change one column of one event in SQL, past the ORM's guards and the triggers."""
    field = AuditEvent._meta.get_field(column)
    prepared = field.get_db_prep_value(value, connection)
    with append_only_triggers_off(), connection.cursor() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET {field.column} = %s WHERE id = %s", [prepared, event.pk])


def raw_delete(event: AuditEvent) -> None:
    with append_only_triggers_off(), connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {TABLE} WHERE id = %s", [event.pk])


def record_events(count: int, institution: Institution | None = None) -> list[AuditEvent]:
    return [
        audit_record(
            actor=f"user:u{number}", kind="test.event", institution=institution, details={"n": number}
        )
        for number in range(count)
    ]


def chain() -> list[AuditEvent]:
    return list(AuditEvent.objects.order_by("sequence"))


@pytest.fixture
def hospital(db: None) -> Institution:
    return institution_create(name="Hospital A", actor="user:setup")


@pytest.fixture
def job(hospital: Institution) -> Job:
    study = study_make("Chained study", [hospital], model=STUDY_MODEL | {"hidden_sizes": [8]})
    return job_make(study, num_rounds=1, min_updates=1, max_deadline_extensions=0)


# --- the chain as written ----------------------------------------------------------------


@pytest.mark.django_db
def test_events_written_by_the_services_form_a_chain(job: Job, hospital: Institution) -> None:
    audit_record(actor="agent:3", kind="update.received", institution=hospital, job=job, details={"round": 1})
    events = chain()
    assert [event.kind for event in events][:3] == ["institution.created", "study.created", "job.created"]
    assert [event.sequence for event in events] == list(range(1, len(events) + 1))
    previous_hash = GENESIS_HASH
    for event in events:
        assert event.previous_hash == previous_hash
        assert event.hash == event.compute_hash()
        previous_hash = event.hash
    head = AuditChainHead.objects.get()
    assert (head.sequence, head.hash) == (events[-1].sequence, events[-1].hash)
    assert (events[-1].institution_id, events[-1].job_id) == (hospital.pk, job.pk)


def test_the_hash_is_sha256_of_the_documented_serialization() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    expected_payload = (
        '{"actor":"user:alice","at":"2026-01-02T03:04:05.000006+00:00",'
        '"details":{"a":[1,2.5],"b":"\\u00e9"},"institution_id":4,"job_id":null,'
        '"kind":"study.approved","previous_hash":"' + "0" * 64 + '","sequence":1}'
    )
    computed = event_hash(
        sequence=1,
        at=at,
        actor="user:alice",
        kind="study.approved",
        institution_id=4,
        job_id=None,
        details={"b": "é", "a": [1, 2.5]},
        previous_hash=GENESIS_HASH,
    )
    assert computed == hashlib.sha256(expected_payload.encode()).hexdigest()


@pytest.mark.django_db
def test_awkward_details_hash_the_same_once_stored() -> None:
    details: dict[str, object] = {
        "big": 1e20,
        "whole": 2.0,
        "negative_zero": -0.0,
        "tiny": 1.5e-10,
        "tuple": (1, "two"),
        "text": "ü ☃ \u2028",
        "nested": {"z": None, "a": [True, {"k": 3}]},
    }
    event = audit_record(actor="system", kind="test.awkward", details=details)
    stored = AuditEvent.objects.get(pk=event.pk)
    assert stored.hash == stored.compute_hash() == event.hash
    assert audit_chain_verify().ok


@pytest.mark.django_db
def test_details_that_are_not_finite_json_are_refused() -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        audit_record(actor="system", kind="test.nan", details={"loss": float("nan")})
    assert not AuditEvent.objects.exists()


# --- verification ------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_clean_chain_verifies() -> None:
    events = record_events(5)
    result = audit_chain_verify(batch_size=2)
    assert result.ok
    assert (result.num_events, result.head_hash) == (5, events[-1].hash)
    assert result.message == f"audit chain OK: 5 events, head {events[-1].hash[:12]}"


@pytest.mark.django_db
def test_an_empty_chain_verifies() -> None:
    assert audit_chain_verify().message == f"audit chain OK: 0 events, head {'0' * 12}"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("column", "new_value"),
    [
        ("details", {"n": 999}),
        ("actor", "user:mallory"),
        ("kind", "test.other"),
        ("at", datetime(2020, 1, 1, tzinfo=UTC)),
    ],
)
def test_an_edited_event_is_named(column: str, new_value: object) -> None:
    events = record_events(6)
    tampered = events[3]
    raw_set(tampered, column, new_value)
    result = audit_chain_verify(batch_size=2)
    assert not result.ok
    assert (result.broken_sequence, result.broken_event_id) == (4, tampered.pk)
    assert result.message == (
        f"audit chain BROKEN at event sequence 4 (id {tampered.pk}): "
        "hash does not match the event's contents (changed after it was written)"
    )


@pytest.mark.django_db
def test_a_timestamp_moved_by_a_microsecond_is_named() -> None:
    events = record_events(3)
    raw_set(events[0], "at", events[0].at + timedelta(microseconds=1))
    result = audit_chain_verify()
    assert (result.broken_sequence, result.broken_event_id) == (1, events[0].pk)


@pytest.mark.django_db
def test_an_edit_with_its_hash_recomputed_breaks_the_next_link() -> None:
    events = record_events(4)
    edited = AuditEvent.objects.get(pk=events[1].pk)
    edited.actor = "user:mallory"
    raw_set(edited, "actor", edited.actor)
    raw_set(edited, "hash", edited.compute_hash())
    result = audit_chain_verify()
    assert (result.broken_sequence, result.broken_event_id) == (3, events[2].pk)
    assert result.reason == "previous_hash does not match the hash of event 2"


@pytest.mark.django_db
def test_a_deleted_event_is_reported_as_a_gap_where_it_was() -> None:
    events = record_events(6)
    raw_delete(events[2])
    result = audit_chain_verify(batch_size=2)
    assert (result.broken_sequence, result.broken_event_id) == (4, events[3].pk)
    assert result.reason == "sequence gap: event 3 is missing before this one"
    assert result.num_events == 2


@pytest.mark.django_db
def test_several_deleted_events_are_one_gap() -> None:
    events = record_events(6)
    for event in events[1:4]:
        raw_delete(event)
    result = audit_chain_verify()
    assert (result.broken_sequence, result.broken_event_id) == (5, events[4].pk)
    assert result.reason == "sequence gap: events 2 to 4 are missing before this one"


@pytest.mark.django_db
def test_deleting_the_last_events_shows_against_the_head() -> None:
    events = record_events(5)
    raw_delete(events[4])
    raw_delete(events[3])
    result = audit_chain_verify()
    assert (result.broken_sequence, result.broken_event_id) == (4, None)
    assert result.message == (
        "audit chain BROKEN at event sequence 4 (no such row): "
        "missing: the chain head records 5 events, the chain ends at 3"
    )


@pytest.mark.django_db
def test_a_head_moved_back_leaves_events_beyond_it() -> None:
    events = record_events(5)
    AuditChainHead.objects.update(sequence=3, hash=events[2].hash)
    result = audit_chain_verify()
    assert (result.broken_sequence, result.broken_event_id) == (4, events[3].pk)


@pytest.mark.django_db
def test_a_missing_head_is_reported_then_made_again_by_the_next_append() -> None:
    events = record_events(3)
    AuditChainHead.objects.all().delete()
    result = audit_chain_verify()
    assert (result.broken_sequence, result.broken_event_id) == (3, events[2].pk)
    assert result.reason == "the chain head row is missing"
    following = audit_record(actor="system", kind="test.after")
    assert (following.sequence, following.previous_hash) == (4, events[2].hash)
    assert audit_chain_verify().ok


def rewrite_from(event: AuditEvent, actor: str) -> None:
    """What the chain alone cannot catch: change an event, then recompute every later hash
    and the head."""
    previous_hash = event.previous_hash
    for later in AuditEvent.objects.filter(sequence__gte=event.sequence).order_by("sequence"):
        if later.pk == event.pk:
            later.actor = actor
            raw_set(later, "actor", actor)
        later.previous_hash = previous_hash
        later.hash = later.compute_hash()
        raw_set(later, "previous_hash", later.previous_hash)
        raw_set(later, "hash", later.hash)
        previous_hash = later.hash
    AuditChainHead.objects.update(hash=previous_hash)


@pytest.mark.django_db
def test_an_anchor_kept_outside_catches_a_recomputed_chain() -> None:
    events = record_events(5)
    assert audit_chain_verify(anchors={3: events[2].hash}).ok
    rewrite_from(events[1], "user:mallory")
    assert audit_chain_verify().ok  # the limit of a chain without an anchor
    result = audit_chain_verify(anchors={3: events[2].hash})
    assert (result.broken_sequence, result.broken_event_id) == (3, events[2].pk)
    assert result.reason.endswith("it was rewritten")


@pytest.mark.django_db
def test_an_anchor_past_the_end_catches_a_shortened_chain() -> None:
    events = record_events(5)
    for event in events[3:]:
        raw_delete(event)
    AuditChainHead.objects.update(sequence=3, hash=events[2].hash)
    assert audit_chain_verify().ok
    result = audit_chain_verify(anchors={5: events[4].hash})
    assert (result.broken_sequence, result.broken_event_id) == (5, None)
    assert result.reason == f"anchored as {events[4].hash[:12]}, but the chain ends at 3"


# --- append-only -------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_orm_refuses_to_change_or_delete_events() -> None:
    event = record_events(1)[0]
    event.actor = "user:mallory"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).update(actor="user:mallory")
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.all().delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.bulk_update([event], ["actor"])
    assert AuditEvent.objects.get(pk=event.pk).actor == "user:u0"


@pytest.mark.django_db
def test_the_orm_refuses_events_written_around_the_chain() -> None:
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.create(actor="system", kind="test.sneaky")
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.bulk_create([AuditEvent(actor="system", kind="test.sneaky")])
    assert not AuditEvent.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "statement",
    [f"UPDATE {TABLE} SET actor = 'user:mallory' WHERE id = %s", f"DELETE FROM {TABLE} WHERE id = %s"],
)
def test_the_database_refuses_update_and_delete(statement: str) -> None:
    event = record_events(2)[0]
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(statement, [event.pk])
    assert AuditEvent.objects.get(pk=event.pk).actor == "user:u0"
    assert audit_chain_verify().ok


@pytest.mark.django_db
def test_the_admin_is_read_only() -> None:
    request = RequestFactory().get("/admin/")
    request.user = get_user_model().objects.create_superuser("root", password=None)
    for model in (AuditEvent, AuditChainHead):
        model_admin = admin.site._registry[model]
        assert not model_admin.has_add_permission(request)
        assert not model_admin.has_change_permission(request)
        assert not model_admin.has_delete_permission(request)


# --- transactions ------------------------------------------------------------------------


class AbandonedError(Exception):
    pass


def abandon_after(action: Callable[[], object]) -> None:
    """Run ``action`` in a transaction that then fails and rolls back."""
    with transaction.atomic():
        action()
        raise AbandonedError


@pytest.mark.django_db
def test_a_rolled_back_event_leaves_no_hole() -> None:
    record_events(2)
    with pytest.raises(AbandonedError):
        abandon_after(lambda: audit_record(actor="system", kind="test.rolled_back"))
    following = audit_record(actor="system", kind="test.after")
    assert following.sequence == 3
    assert [event.kind for event in chain()] == ["test.event", "test.event", "test.after"]
    assert audit_chain_verify().ok


@pytest.mark.django_db
def test_a_service_that_fails_after_recording_leaves_no_hole(hospital: Institution) -> None:
    before = AuditChainHead.objects.get().sequence
    with pytest.raises(AbandonedError):
        abandon_after(lambda: institution_create(name="Hospital B", actor="user:setup"))
    assert AuditChainHead.objects.get().sequence == before
    assert audit_record(actor="system", kind="test.after").sequence == before + 1
    assert audit_chain_verify().ok


@pytest.mark.skipif(connection.vendor == "sqlite", reason="needs a server database")
@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_keep_one_gap_free_chain() -> None:
    num_threads, per_thread = 4, 15
    start = threading.Barrier(num_threads)
    errors: list[BaseException] = []

    def append(thread_number: int) -> None:
        try:
            start.wait()
            for number in range(per_thread):
                with transaction.atomic():
                    audit_record(
                        actor=f"system:{thread_number}", kind="test.concurrent", details={"n": number}
                    )
        except BaseException as error:
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=append, args=(number,)) for number in range(num_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert list(AuditEvent.objects.order_by("sequence").values_list("sequence", flat=True)) == list(
        range(1, num_threads * per_thread + 1)
    )
    assert audit_chain_verify(batch_size=7).ok


# --- the data migration ------------------------------------------------------------------


@pytest.mark.django_db
def test_the_migration_chains_existing_events_in_id_order() -> None:
    events = record_events(4)
    with append_only_triggers_off(), connection.cursor() as cursor:
        # as before the chain existed (the columns cannot be NULL any more: out of the way)
        cursor.execute(f"UPDATE {TABLE} SET sequence = 1000 + id, previous_hash = '', hash = ''")
        AuditChainHead.objects.all().delete()
        migration = importlib.import_module("audit.migrations.0003_audit_chain_existing")
        state = MigrationLoader(connection).project_state(("audit", "0003_audit_chain_existing"))
        migration.chain_existing_events(state.apps, None)
    assert [(event.pk, event.sequence, event.hash) for event in chain()] == [
        (event.pk, event.sequence, event.hash) for event in events
    ]
    assert audit_chain_verify().ok


# --- the command -------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_command_reports_an_intact_chain() -> None:
    events = record_events(3)
    out = io.StringIO()
    call_command("audit_verify", "--batch-size", "2", stdout=out)
    assert out.getvalue() == f"audit chain OK: 3 events, head {events[-1].hash[:12]}\n"
    out = io.StringIO()
    call_command("audit_verify", verbosity=2, stdout=out)
    assert out.getvalue().splitlines()[1] == f"anchor 3:{events[-1].hash}"


@pytest.mark.django_db
def test_the_command_exits_1_naming_the_broken_link() -> None:
    events = record_events(3)
    raw_set(events[1], "details", {"n": "changed"})
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("audit_verify", stdout=out, stderr=err)
    assert exit_info.value.code == 1
    assert out.getvalue() == ""
    assert err.getvalue().startswith(f"audit chain BROKEN at event sequence 2 (id {events[1].pk}): ")


@pytest.mark.django_db
def test_the_command_checks_anchors() -> None:
    events = record_events(3)
    call_command("audit_verify", "--anchor", f"2:{events[1].hash.upper()}", stdout=io.StringIO())
    err = io.StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("audit_verify", "--anchor", f"2:{'ab' * 32}", stdout=io.StringIO(), stderr=err)
    assert exit_info.value.code == 1
    assert err.getvalue().startswith(f"audit chain BROKEN at event sequence 2 (id {events[1].pk}): ")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "arguments", [("--batch-size", "0"), ("--anchor", "3:abc"), ("--anchor", "0:" + "a" * 64)]
)
def test_the_command_refuses_bad_arguments(arguments: tuple[str, str]) -> None:
    with pytest.raises(CommandError):
        call_command("audit_verify", *arguments)
