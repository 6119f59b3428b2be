"""The hash chain, step 2: chain the events already there, in id order, and write the
chain head. (A migration of its own: on PostgreSQL, altering a table that has pending
updates in the same transaction fails.)"""

from django.db import migrations

from audit.chain import GENESIS_HASH, event_hash

BATCH_SIZE = 500


def chain_existing_events(apps, schema_editor):
    AuditEvent = apps.get_model("audit", "AuditEvent")
    AuditChainHead = apps.get_model("audit", "AuditChainHead")
    sequence, previous_hash, after = 0, GENESIS_HASH, 0
    while True:
        batch = list(AuditEvent.objects.filter(pk__gt=after).order_by("pk")[:BATCH_SIZE])
        for event in batch:
            sequence += 1
            event.sequence, event.previous_hash = sequence, previous_hash
            event.hash = event_hash(
                sequence=sequence,
                at=event.at,
                actor=event.actor,
                kind=event.kind,
                institution_id=event.institution_id,
                job_id=event.job_id,
                details=event.details,
                previous_hash=previous_hash,
            )
            previous_hash = event.hash
        AuditEvent.objects.bulk_update(batch, ["sequence", "previous_hash", "hash"])
        if len(batch) < BATCH_SIZE:
            break
        after = batch[-1].pk
    AuditChainHead.objects.update_or_create(pk=1, defaults={"sequence": sequence, "hash": previous_hash})


def unchain(apps, schema_editor):
    apps.get_model("audit", "AuditChainHead").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0002_audit_chain_fields"),
    ]

    operations = [
        migrations.RunPython(chain_existing_events, unchain),
    ]
