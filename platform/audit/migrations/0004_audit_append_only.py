"""The hash chain, step 3: the columns become required (``sequence`` unique), and triggers
refuse UPDATE and DELETE on the events table, on PostgreSQL and on SQLite.

On SQLite, a later migration that rebuilds ``audit_auditevent`` drops these triggers and
must create them again (``create_triggers`` below).
"""

from django.db import migrations, models

MESSAGE = "audit events are append-only"

TRIGGERS = {
    "postgresql": {
        "create": [
            f"""
            CREATE OR REPLACE FUNCTION audit_event_refuse_change() RETURNS trigger AS $$
            BEGIN
                RAISE EXCEPTION '{MESSAGE}: % refused', TG_OP USING ERRCODE = 'restrict_violation';
            END;
            $$ LANGUAGE plpgsql
            """,
            """
            CREATE TRIGGER audit_event_append_only
            BEFORE UPDATE OR DELETE ON audit_auditevent
            FOR EACH ROW EXECUTE FUNCTION audit_event_refuse_change()
            """,
        ],
        "drop": [
            "DROP TRIGGER IF EXISTS audit_event_append_only ON audit_auditevent",
            "DROP FUNCTION IF EXISTS audit_event_refuse_change()",
        ],
    },
    "sqlite": {
        "create": [
            f"""
            CREATE TRIGGER audit_event_no_update BEFORE UPDATE ON audit_auditevent
            BEGIN SELECT RAISE(ABORT, '{MESSAGE}: UPDATE refused'); END
            """,
            f"""
            CREATE TRIGGER audit_event_no_delete BEFORE DELETE ON audit_auditevent
            BEGIN SELECT RAISE(ABORT, '{MESSAGE}: DELETE refused'); END
            """,
        ],
        "drop": [
            "DROP TRIGGER IF EXISTS audit_event_no_update",
            "DROP TRIGGER IF EXISTS audit_event_no_delete",
        ],
    },
}


def create_triggers(apps, schema_editor):
    for statement in TRIGGERS.get(schema_editor.connection.vendor, {}).get("create", []):
        schema_editor.execute(statement, params=None)


def drop_triggers(apps, schema_editor):
    for statement in TRIGGERS.get(schema_editor.connection.vendor, {}).get("drop", []):
        schema_editor.execute(statement, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0003_audit_chain_existing"),
    ]

    operations = [
        migrations.AlterField(
            model_name="auditevent",
            name="sequence",
            field=models.PositiveBigIntegerField(unique=True, help_text="1, 2, 3, ... without gaps"),
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="previous_hash",
            field=models.CharField(max_length=64, help_text="the hash of the event before (64 zeros: none)"),
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="hash",
            field=models.CharField(
                max_length=64, help_text="SHA-256 of this event's canonical serialization"
            ),
        ),
        migrations.RunPython(create_triggers, drop_triggers),
    ]
