"""A job's round plan, stored as JSON and read back typed (:class:`federation.rounds.RoundPlan`)."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.expressions import Expression

from federation.errors import ConfigurationError
from federation.rounds import RoundPlan


class RoundPlanField(models.JSONField):
    """A JSON column holding :meth:`RoundPlan.to_json`; Python code only sees a ``RoundPlan``.

    Parsed once, when the row is read: code past the model never reads the raw dict.
    """

    description = "a job's round plan"

    def from_db_value(
        self, value: str | None, expression: Expression, connection: BaseDatabaseWrapper
    ) -> RoundPlan | None:
        data = super().from_db_value(value, expression, connection)
        return None if data is None else _plan(data)

    def to_python(self, value: object) -> RoundPlan | None:
        if value is None or isinstance(value, RoundPlan):
            return value
        return _plan(super().to_python(value))

    def get_prep_value(self, value: object) -> object:
        if isinstance(value, RoundPlan):
            value = value.to_json()
        return super().get_prep_value(value)

    def value_to_string(self, obj: models.Model) -> object:  # type: ignore[override]
        """The JSON a fixture holds (``dumpdata``), as JSONField gives it."""
        value = self.value_from_object(obj)
        return value.to_json() if isinstance(value, RoundPlan) else value


def _plan(data: object) -> RoundPlan:
    if not isinstance(data, dict):
        raise ValidationError("a round plan must be a JSON object")
    try:
        return RoundPlan.from_json(data)
    except ConfigurationError as error:
        raise ValidationError(f"not a valid round plan: {error}") from error
