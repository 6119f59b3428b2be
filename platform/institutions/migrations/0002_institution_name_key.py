"""Institution names that read the same (case, spacing, look-alike letters) share a key."""

from django.db import migrations, models


def fill_name_keys(apps, schema_editor):  # type: ignore[no-untyped-def]
    from institutions.names import institution_name_key

    Institution = apps.get_model("institutions", "Institution")
    taken: set[str] = set()
    for institution in Institution.objects.order_by("pk"):
        key = institution_name_key(institution.name)
        # Names registered before this rule that read the same keep working, told apart by id.
        institution.name_key = key if key not in taken else f"{key} #{institution.pk}"
        taken.add(institution.name_key)
        institution.save(update_fields=["name_key"])


class Migration(migrations.Migration):
    dependencies = [("institutions", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="institution",
            name="name_key",
            field=models.CharField(max_length=200, null=True, editable=False),
        ),
        migrations.RunPython(fill_name_keys, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="institution",
            name="name_key",
            field=models.CharField(max_length=200, unique=True, editable=False),
        ),
    ]
