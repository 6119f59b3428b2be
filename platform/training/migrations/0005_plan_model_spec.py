"""Every job that has a model keeps its model spec in its round plan.

Jobs begun before the plan held the spec read it from their first model version's blob
metadata, where every version blob has kept it; the plan is the one place from now on.
"""

import json

from django.db import migrations

from federation.types import ModelSpec
from federation.wire import read_metadata
from training.blobs import blob_store


def _spec_of_blob(sha256: str) -> ModelSpec:
    data = blob_store().read(sha256)
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    spec = ModelSpec.from_json(json.loads(header["__metadata__"]["model_spec"]))
    read_metadata(data, spec=spec)  # the stored blob passes the full header check
    return spec


def _fill_model_specs(apps, schema_editor):  # type: ignore[no-untyped-def]
    Job = apps.get_model("training", "Job")
    ModelVersion = apps.get_model("training", "ModelVersion")
    for job in Job.objects.order_by("pk"):
        if job.plan.model_spec is not None:
            continue
        first = ModelVersion.objects.filter(job=job).order_by("number").first()
        if first is not None:
            job.plan = job.plan.with_model_spec(_spec_of_blob(first.sha256))
            job.save(update_fields=["plan"])


class Migration(migrations.Migration):
    dependencies = [
        ("training", "0004_job_round_plan"),
    ]

    operations = [
        migrations.RunPython(_fill_model_specs, migrations.RunPython.noop),
    ]
