"""The agent's side of the task message: :mod:`federation.protocol` is the one contract.

:func:`parse_task` reports a malformed message as a :class:`TaskError`, the agent's error
for one task that cannot be carried out.
"""

from __future__ import annotations

from federation import protocol
from federation.errors import ProtocolError
from federation.protocol import (
    JsonObject,
    ModelVersionRef,
    QueryTask,
    StudySettings,
    SummaryTask,
    TaskKind,
    TrainingSettings,
    WorkTask,
    parse_privacy,
)
from silo_agent.errors import TaskError

__all__ = [
    "JsonObject",
    "ModelVersionRef",
    "QueryTask",
    "StudySettings",
    "SummaryTask",
    "TaskKind",
    "TrainingSettings",
    "WorkTask",
    "parse_any_task",
    "parse_privacy",
    "parse_task",
]


def parse_task(data: JsonObject) -> WorkTask:
    """Check and parse a task from the server; raises :class:`TaskError` naming the bad field."""
    try:
        return protocol.parse_task(data)
    except ProtocolError as error:
        raise TaskError(str(error)) from None


def parse_any_task(data: JsonObject) -> WorkTask | SummaryTask | QueryTask:
    """A round's task, a summary request or a query; raises :class:`TaskError` naming the bad field."""
    try:
        return protocol.parse_any_task(data)
    except ProtocolError as error:
        raise TaskError(str(error)) from None
