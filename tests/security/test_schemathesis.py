"""Schemathesis against the control plane's own OpenAPI schema (``/api/schema/``).

Every operation of both APIs is fuzzed through the real WSGI application, with the
coordinator API authenticated by a coordinator's token and the agent API by an enrolled
agent's key, against a database holding a running job (so small ids name real objects).
Each response must not be a server error and must conform to the schema: a documented
status code, a documented content type and a body matching the documented schema.
The run is bounded and deterministic: a fixed seed, derandomized generation, at most
:data:`MAX_EXAMPLES` fuzzed cases per operation (plus schemathesis's explicit-example and
coverage cases), and a simulated clock for the agent's long poll.

From the command line, against a live server (the same checks, one API at a time)::

    export FEDHEALTH_DATA_DIR=$(mktemp -d)
    .venv/bin/python manage.py migrate
    TOKEN=$(.venv/bin/python manage.py create_user fuzz --role coordinator --token)
    (exec .venv/bin/python manage.py runserver 127.0.0.1:8765 --noreload) & pid=$!; sleep 5
    CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
    .venv/bin/schemathesis run http://127.0.0.1:8765/api/schema/ --include-path-regex '^/api/v1/' \\
        -H "Authorization: Token $TOKEN" --phases examples,coverage,fuzzing --checks "$CHECKS" \\
        -n 5 --workers 1 --request-timeout 5 --seed 1
    kill $pid

(For the agent API, enroll an agent and pass ``--include-path-regex '^/api/agent/'`` with
``-H "Authorization: Agent $KEY"``; against a live server ``GET work?wait=`` really waits.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, find, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from world import agent_make, job_make, job_run, person_make, study_approve_all, study_make

from accounts.models import Role
from fedplatform.wsgi import application
from institutions.services import institution_create

pytestmark = [pytest.mark.security, pytest.mark.django_db]

MAX_EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

CONFIG = schemathesis.Config.from_dict(
    {"seed": 1, "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True}}
)
schema = schemathesis.openapi.from_wsgi("/api/schema/", application, config=CONFIG)

#: Cases sent per operation, reported when the module's tests are done.
CASES: Counter[str] = Counter()


class SimulatedClock:
    """Stands in for ``time`` in the agent API: a long poll's ``sleep`` costs no real time."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def auth_headers(agent_world: None, monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, str]]:
    """A coordinator's token, an agent's key, and a running job the agent's site takes part in."""
    monkeypatch.setattr("agentapi.long_poll.time", SimulatedClock())
    token = person_make("fuzz-coordinator", Role.COORDINATOR).token
    institution = institution_create(name="Hospital A", actor="user:setup")
    key = agent_make(institution, hostname="a").key
    study = study_make("fuzzed study", [institution])
    study_approve_all(study)
    job_run(job_make(study, num_rounds=2, min_updates=1))
    return {"coordinator": {"Authorization": f"Token {token}"}, "agent": {"Authorization": f"Agent {key}"}}


@schema.parametrize()
@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_every_operation_answers_without_server_errors_and_as_documented(
    case: schemathesis.Case, auth_headers: dict[str, dict[str, str]]
) -> None:
    audience = "agent" if case.operation.path.startswith("/api/agent/") else "coordinator"
    CASES[case.operation.label] += 1
    case.call_and_validate(headers=auth_headers[audience], checks=CHECKS)


def test_every_operation_of_the_schema_gets_cases() -> None:
    """The fuzzing test is parametrized over every operation the schema holds; each of them
    is read without error and its strategy yields a case for it, run alone or in any order."""
    operations = [result.ok() for result in schema.get_all_operations()]  # ok() raises on a bad one
    assert len(operations) >= 20, [operation.label for operation in operations]
    first_case = settings(database=None, phases=[Phase.generate])  # no shrinking: any case will do
    for operation in operations:
        case = find(operation.as_strategy(), lambda _: True, settings=first_case)
        assert case.operation.label == operation.label


@pytest.fixture(scope="module", autouse=True)
def _report_cases() -> Iterator[None]:
    """Prints how many cases the fuzzing sent (shown with ``-s``)."""
    yield
    if CASES:
        print(f"\nschemathesis: {sum(CASES.values())} cases over {len(CASES)} operations, 0 failures")
