import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("institutions", "0001_initial"),
        ("training", "0002_round_aggregation_attempts"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="privacy",
            field=models.JSONField(
                blank=True, default=dict, help_text="the study's privacy settings, resolved for this job's rounds"
            ),
        ),
        migrations.AddField(
            model_name="job",
            name="training_stopped_after",
            field=models.PositiveIntegerField(
                blank=True,
                null=True,
                help_text="last training round when the privacy budget ended training early",
            ),
        ),
        migrations.AddField(
            model_name="update",
            name="dp_steps",
            field=models.JSONField(
                blank=True,
                default=dict,
                help_text="sample-level DP: noise_multiplier, sampling_rate, steps of the round",
            ),
        ),
        migrations.AddField(
            model_name="round",
            name="secure_aggregation",
            field=models.JSONField(
                blank=True, default=dict, help_text="the protocol's phase, config and site sets; {} without it"
            ),
        ),
        migrations.CreateModel(
            name="SecAggMessage",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                (
                    "kind",
                    models.CharField(
                        choices=[("keys", "Keys"), ("shares", "Shares"), ("unmasking", "Unmasking")], max_length=10
                    ),
                ),
                ("payload", models.JSONField()),
                ("received_at", models.DateTimeField(auto_now_add=True)),
                (
                    "institution",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT, related_name="+", to="institutions.institution"
                    ),
                ),
                (
                    "round",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="secagg_messages",
                        to="training.round",
                    ),
                ),
            ],
            options={
                "ordering": ["round_id", "kind", "institution_id"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("round", "institution", "kind"), name="one_secagg_message_per_site_round_kind"
                    )
                ],
            },
        ),
        migrations.CreateModel(
            name="PrivacySpend",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("level", models.CharField(help_text="client or sample", max_length=10)),
                ("epsilon", models.FloatField(default=0.0)),
                ("delta", models.FloatField()),
                ("rounds", models.PositiveIntegerField(default=0)),
                ("events", models.JSONField(blank=True, default=list)),
                ("updated_at", models.DateTimeField(auto_now=True)),
                (
                    "institution",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="institutions.institution",
                    ),
                ),
                (
                    "job",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="privacy_spends",
                        to="training.job",
                    ),
                ),
            ],
            options={
                "ordering": ["institution_id", "job_id"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("job", "institution"), name="one_privacy_spend_per_site_and_job"
                    )
                ],
            },
        ),
    ]
