"""Migration institutions 0002: every institution gets the key its name reads as; names
registered before the rule that read the same keep working, told apart by id."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("institutions", "0001_initial")]
AFTER = [("institutions", "0002_institution_name_key")]


def _migrate(targets: list[tuple[str, str]]):  # type: ignore[no-untyped-def]
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    executor.loader.build_graph()
    return executor.loader.project_state(targets).apps


def test_existing_institutions_get_their_name_key() -> None:
    Institution = _migrate(BEFORE).get_model("institutions", "Institution")
    first = Institution.objects.create(name="St Mary's")
    look_alike = Institution.objects.create(name="ST MАRY'S")  # Cyrillic A
    other = Institution.objects.create(name="Hôpital Nord")

    Institution = _migrate(AFTER).get_model("institutions", "Institution")
    keys = dict(Institution.objects.values_list("pk", "name_key"))
    assert keys == {
        first.pk: "st mary's",
        look_alike.pk: f"st mary's #{look_alike.pk}",
        other.pk: "hôpital nord",
    }
