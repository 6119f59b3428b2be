"""Malformed JSON to every operation of both APIs that takes a body, as every kind of caller.

The operations come from the OpenAPI schema the project serves (every operation with a
request body), so a new endpoint is probed without touching this file; its path
parameters are filled with ids of real objects, so that a caller who may use it reaches
the body. Each probe must get a 4xx JSON error with a message, never a 5xx, and nothing
may change in the database. Every operation must have had its body refused by at least
one caller (not only turned away at the door by authentication).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from django.conf import settings
from django.core.cache import cache
from drf_spectacular.generators import SchemaGenerator
from malformed_support import World, build_world
from rest_framework.test import APIClient

from audit.models import AuditEvent
from institutions.models import AgentCredential, EnrollmentToken, Institution
from queries.services import query_create
from studies.models import Study, StudyParticipant
from training.models import Job, Refusal, Round, Update

pytestmark = [pytest.mark.security, pytest.mark.django_db]

JSON = "application/json"
#: Error codes of a body that was read and refused (rather than of a caller turned away).
BODY_REFUSED = {"parse_error", "invalid", "too_large", "unsupported_media_type"}
#: Models whose rows a refused request must leave alone (every change also writes an AuditEvent).
WATCHED = (
    AuditEvent,
    Institution,
    EnrollmentToken,
    AgentCredential,
    Study,
    StudyParticipant,
    Job,
    Round,
    Update,
    Refusal,
)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # with {placeholders}


@dataclass(frozen=True)
class Body:
    label: str
    content: bytes
    content_type: str = JSON


def operations_with_a_body() -> list[Operation]:
    """Every operation of the served schema that declares a request body."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return [
        Operation(method.upper(), path)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in {"post", "put", "patch"} and "requestBody" in operation
    ]


def malformed_bodies() -> Iterator[Body]:
    nested = b'{"name": ' + b"[" * 40 + b"]" * 40 + b"}"
    bodies = {
        # truncated
        "an opening brace": b"{",
        "an unfinished object": b'{"name": "Hospital',
        "an unfinished key": b'{"na',
        "a missing value": b'{"name": }',
        "a trailing comma": b'{"name": "x",}',
        "single quotes": b"{'name': 'x'}",
        "trailing garbage": b'{"name": "x"} garbage',
        "two objects": b'{"name": "x"}{"name": "y"}',
        # not an object
        "an array": b"[]",
        "an array of an object": b'[{"name": "x", "token": "t", "reason": "r"}]',
        "a string": b'"name"',
        "a number": b"42",
        "null": b"null",
        "true": b"true",
        # deeply nested
        "nested 100000 deep": b"[" * 100_000,
        "objects nested 20000 deep": b'{"a":' * 20_000,
        "nested 40 deep (valid JSON, too deep)": nested,
        # huge and non-finite numbers
        "an integer of 5000 digits": b"9" * 5000,
        "a field of 5000 digits": b'{"name": ' + b"9" * 5000 + b"}",
        "1e999": b'{"name": 1e999, "num_examples": 1e999}',
        "-1e999": b'{"metrics": {"a": -1e999}}',
        "NaN": b'{"num_examples": NaN}',
        "Infinity": b'{"hours": Infinity}',
        # unicode garbage
        "invalid UTF-8": b'{"name": "\xff\xfe\xfd"}',
        "an overlong UTF-8 slash": b'{"name": "\xc0\xaf"}',
        "UTF-16": '{"name": "x"}'.encode("utf-16"),
        "a byte-order mark": b'\xef\xbb\xbf{"name": "x"}',
        "a lone surrogate value": b'{"name": "\\ud800", "token": "\\udfff", "reason": "\\ud83d"}',
        "a lone surrogate key": b'{"\\udfff": 1, "model": {"\\ud800": "x"}}',
        # null bytes
        "a raw NUL in a string": b'{"name": "a\x00b"}',
        "an escaped NUL in a nested value": b'{"privacy": {"note": "a\\u0000b"}, "metrics": {"a\\u0000": 1}}',
        "NUL bytes only": b"\x00" * 16,
        "a trailing NUL": b'{"name": "x"}\x00',
        # ambiguous: which of two values counts?
        "a repeated key": b'{"name": "x", "name": "y", "token": "t", "token": "u", '
        b'"reason": "r", "reason": "s"}',
        "a repeated nested key": b'{"metrics": {"accuracy": 0.5, "accuracy": 0.9}, '
        b'"model": {"kind": 1, "kind": 2}}',
        # larger than the body cap
        "larger than DATA_UPLOAD_MAX_MEMORY_SIZE": b'{"name": "'
        + b"x" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        + b'"}',
    }
    for label, content in bodies.items():
        yield Body(label, content)
    document = b'{"name": "x", "token": "t", "reason": "r", "num_examples": 1, "metrics": {}}'
    for content_type in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
        "multipart/form-data",
        "application/json; charset=utf-16",
        "application/json; charset=bogus",
        "application/json; charset=latin-1",
    ):
        yield Body(f"a JSON document sent as {content_type}", document, content_type)
    yield Body(
        "form fields sent as form data",
        b"name=x&token=t&reason=r&hours=1",
        "application/x-www-form-urlencoded",
    )


@pytest.fixture
def world(agent_world: None) -> World:
    return build_world()


def callers(world: World) -> dict[str, APIClient]:
    clients = {name: APIClient() for name in ("anonymous", "coordinator", "data owner", "agent")}
    clients["coordinator"].credentials(HTTP_AUTHORIZATION=f"Token {world.coordinator_token}")
    clients["data owner"].credentials(HTTP_AUTHORIZATION=f"Token {world.owner_token}")
    clients["agent"].credentials(HTTP_AUTHORIZATION=f"Agent {world.uploader.key}")
    return clients


def real_ids(world: World) -> dict[str, int]:
    """An id of a real object for each path parameter: the probes reach the views' bodies."""
    target = world.target
    return {
        "round_id": target.pk,
        "job_id": target.job_id,
        "study_id": target.job.study_id,
        "institution_id": world.uploader.institution.pk,
        "credential_id": world.uploader.credential.pk,
        "version_id": target.base_version_id,
        "request_id": 1,
        "query_id": query_create(study=target.job.study, spec={"kind": "columns"}, actor="user:setup").pk,
    }


def url_of(operation: Operation, ids: dict[str, int]) -> str:
    names = re.findall(r"{(\w+)}", operation.path)
    missing = [name for name in names if name not in ids]
    assert not missing, f"{operation}: add an id for {missing} to real_ids()"
    return re.sub(r"{(\w+)}", lambda match: str(ids[match.group(1)]), operation.path)


def database_state() -> dict[str, object]:
    state: dict[str, object] = {model.__name__: model.objects.count() for model in WATCHED}
    state["decisions"] = sorted(StudyParticipant.objects.values_list("pk", "decision"))
    state["jobs"] = sorted(Job.objects.values_list("pk", "state"))
    return state


def test_malformed_json_to_every_operation_gets_a_4xx_json_error(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="django.request")  # 4xx records would pile up
    operations = operations_with_a_body()
    paths = {operation.path for operation in operations}
    assert {"/api/agent/v1/enroll", "/api/agent/v1/rounds/{round_id}/update", "/api/v1/studies/"} <= paths
    ids, clients, before = real_ids(world), callers(world), database_state()
    failures: list[str] = []
    refused_bodies: Counter[Operation] = Counter()
    statuses: Counter[int] = Counter()
    probes = 0
    for operation in operations:
        url = url_of(operation, ids)
        for body in malformed_bodies():
            for caller, client in clients.items():
                cache.clear()  # enrollment throttling would otherwise answer 429 before the body
                response = client.generic(operation.method, url, body.content, body.content_type)
                probes += 1
                statuses[response.status_code] += 1
                where = f"{operation.method} {operation.path} as {caller}, {body.label}"
                if not 400 <= response.status_code < 500:
                    failures.append(f"{where}: status {response.status_code}")
                try:
                    error = response.json()["error"]
                    shaped = isinstance(error["code"], str) and str(error["message"]).strip() != ""
                except (ValueError, KeyError, TypeError):
                    shaped = False
                if not shaped:
                    failures.append(f"{where}: not the JSON error shape: {response.content[:120]!r}")
                    continue
                if error["code"] in BODY_REFUSED:
                    refused_bodies[operation] += 1
    assert not failures, "\n".join(failures[:50])
    assert database_state() == before, "a refused request changed the database"
    unreached = [operation for operation in operations if refused_bodies[operation] == 0]
    assert not unreached, f"no caller got as far as the body of {unreached}"
    print(
        f"\n{probes} malformed JSON probes over {len(operations)} operations and {len(clients)} callers: "
        f"0 accepted, 0 server errors, statuses {dict(sorted(statuses.items()))}"
    )


def test_a_deeply_nested_body_is_refused_without_recursion() -> None:
    """The nesting check walks the document with an explicit stack, so it cannot overflow."""
    from fedplatform.parsers import MAX_JSON_DEPTH, document_problem

    deep: object = "leaf"
    for _ in range(MAX_JSON_DEPTH):
        deep = [deep]
    assert document_problem(deep) == ""
    assert "nested too deeply" in document_problem([deep])
    assert json.loads(json.dumps(deep))  # the limit sits far below the stack's
