"""The hash chain, step 1: the new columns (nullable until existing rows are chained) and
the chain head. ``at`` gets its value from ``audit_record`` (it is hashed) instead of
``auto_now_add``, which would overwrite it on save."""

import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0001_initial"),
    ]

    operations = [
        migrations.AlterField(
            model_name="auditevent",
            name="at",
            field=models.DateTimeField(db_index=True, default=django.utils.timezone.now),
        ),
        migrations.AddField(
            model_name="auditevent",
            name="sequence",
            field=models.PositiveBigIntegerField(null=True, help_text="1, 2, 3, ... without gaps"),
        ),
        migrations.AddField(
            model_name="auditevent",
            name="previous_hash",
            field=models.CharField(
                max_length=64, null=True, help_text="the hash of the event before (64 zeros: none)"
            ),
        ),
        migrations.AddField(
            model_name="auditevent",
            name="hash",
            field=models.CharField(
                max_length=64, null=True, help_text="SHA-256 of this event's canonical serialization"
            ),
        ),
        migrations.CreateModel(
            name="AuditChainHead",
            fields=[
                ("id", models.PositiveSmallIntegerField(default=1, primary_key=True, serialize=False)),
                (
                    "sequence",
                    models.PositiveBigIntegerField(default=0, help_text="the last event's (0: no event yet)"),
                ),
                (
                    "hash",
                    models.CharField(
                        default="0000000000000000000000000000000000000000000000000000000000000000",
                        help_text="the last event's hash",
                        max_length=64,
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.CheckConstraint(condition=models.Q(("id", 1)), name="audit_chain_head_one_row")
                ],
            },
        ),
    ]
