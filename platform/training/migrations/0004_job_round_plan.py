"""Each job stores its round plan (federation.rounds.RoundPlan) in place of its privacy copy.

Existing jobs get the plan their rounds ran with: the study's strategy and the job's
resolved privacy settings (the study's, for jobs made before those were resolved).
"""

from django.db import migrations

import training.fields


def _fill_plans(apps, schema_editor):  # type: ignore[no-untyped-def]
    Job = apps.get_model("training", "Job")
    for job in Job.objects.select_related("study").order_by("pk"):
        study = job.study
        job.plan = {
            "strategy": {"name": study.strategy, "params": study.strategy_params or {}},
            "privacy": job.privacy or study.privacy or {},
        }
        job.save(update_fields=["plan"])


def _fill_privacy(apps, schema_editor):  # type: ignore[no-untyped-def]
    Job = apps.get_model("training", "Job")
    for job in Job.objects.order_by("pk"):
        job.privacy = job.plan.privacy.to_json()
        job.save(update_fields=["privacy"])


class Migration(migrations.Migration):
    dependencies = [
        ("training", "0003_privacy"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="plan",
            field=training.fields.RoundPlanField(null=True),
        ),
        migrations.RunPython(_fill_plans, _fill_privacy),
        migrations.AlterField(
            model_name="job",
            name="plan",
            field=training.fields.RoundPlanField(
                help_text="how every round is aggregated: the strategy, the privacy settings with the "
                "noise resolved for this job, and the model spec (federation.rounds.RoundPlan)"
            ),
        ),
        migrations.RemoveField(
            model_name="job",
            name="privacy",
        ),
    ]
