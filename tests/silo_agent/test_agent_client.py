"""The HTTP client: retries with capped full-jitter backoff, error mapping, headers."""

from __future__ import annotations

import logging
import random

import httpx
import pytest
from agent_fakes import KEY, SERVER_URL, error, global_model_bytes
from hypothesis import given
from hypothesis import strategies as st

from silo_agent import __version__
from silo_agent.client import AgentClient, RetryPolicy
from silo_agent.errors import ApiError, CredentialRejectedError, ServerUnreachableError, TaskError


class Script:
    """Answers requests from a list of responses (or exceptions), recording each request."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def make_client(
    script: Script, sleeps: list[float], *, retry: RetryPolicy | None = None, key: str | None = KEY
):
    return AgentClient(
        SERVER_URL,
        key=key,
        retry=retry or RetryPolicy(max_attempts=4, base_delay=0.5, max_delay=30.0),
        rng=random.Random(42),
        sleep=sleeps.append,
        transport=httpx.MockTransport(script),
    )


HEARTBEAT_OK = httpx.Response(200, json={"server_time": "2026-11-24T10:00:00Z"})


@pytest.mark.parametrize(
    "transient",
    [
        httpx.Response(503),
        httpx.Response(502),
        httpx.Response(504),
        httpx.Response(429),
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
    ],
    ids=["503", "502", "504", "429", "connect-error", "read-timeout"],
)
def test_transient_failures_are_retried_with_capped_backoff(transient):
    script = Script(transient, transient, HEARTBEAT_OK)
    sleeps: list[float] = []

    assert make_client(script, sleeps).heartbeat() == "2026-11-24T10:00:00Z"

    assert len(script.requests) == 3
    assert len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.5
    assert 0 <= sleeps[1] <= 1.0


def test_the_jitter_comes_from_the_injected_random_source():
    def sleeps_with(seed: int) -> list[float]:
        sleeps: list[float] = []
        script = Script(httpx.Response(503), httpx.Response(503), HEARTBEAT_OK)
        client = AgentClient(
            SERVER_URL,
            retry=RetryPolicy(max_attempts=3),
            rng=random.Random(seed),
            sleep=sleeps.append,
            transport=httpx.MockTransport(script),
        )
        client.heartbeat()
        return sleeps

    assert sleeps_with(1) == sleeps_with(1)
    assert sleeps_with(1) != sleeps_with(2)


@given(attempt=st.integers(0, 60), seed=st.integers(0, 2**32), retry_after=st.none() | st.floats(0, 1e6))
def test_a_backoff_delay_never_exceeds_the_cap(attempt, seed, retry_after):
    policy = RetryPolicy(base_delay=0.5, max_delay=30.0)
    delay = policy.delay(attempt, random.Random(seed), retry_after)
    assert 0.0 <= delay <= 30.0
    if retry_after is None:
        assert delay <= 0.5 * 2**attempt


def test_retry_after_is_honoured():
    script = Script(httpx.Response(429, headers={"Retry-After": "7"}), HEARTBEAT_OK)
    sleeps: list[float] = []
    make_client(script, sleeps).heartbeat()
    assert sleeps[0] >= 7.0


def test_the_client_gives_up_after_the_last_attempt():
    script = Script(*[httpx.ConnectError("refused")] * 4)
    sleeps: list[float] = []
    with pytest.raises(ServerUnreachableError, match="gave up after 4 attempts"):
        make_client(script, sleeps).heartbeat()
    assert len(script.requests) == 4
    assert len(sleeps) == 3


@pytest.mark.parametrize("status", [400, 403, 404, 409, 413, 500])
def test_other_errors_are_not_retried_and_keep_the_servers_message(status):
    body = {
        "error": {
            "code": "bad_input",
            "message": "num_examples is too large",
            "fields": {"num_examples": ["too large"]},
        }
    }
    script = Script(httpx.Response(status, json=body))
    sleeps: list[float] = []

    with pytest.raises(ApiError) as caught:
        make_client(script, sleeps).heartbeat()

    assert len(script.requests) == 1
    assert sleeps == []
    assert caught.value.status == status
    assert caught.value.code == "bad_input"
    assert "num_examples is too large" in str(caught.value)
    assert "num_examples: too large" in str(caught.value)


def test_an_error_without_the_json_shape_still_reads_clearly():
    script = Script(httpx.Response(404, text="<html>Not Found</html>"))
    with pytest.raises(ApiError, match="404 http_404: Not Found"):
        make_client(script, []).heartbeat()


@pytest.mark.parametrize("code", ["credential_revoked", "invalid_credential"])
def test_a_rejected_credential_has_its_own_error(code):
    script = Script(error(401, code, "no"))
    with pytest.raises(CredentialRejectedError, match=code):
        make_client(script, []).heartbeat()
    assert len(script.requests) == 1


def test_another_401_is_an_ordinary_api_error():
    script = Script(error(401, "not_authenticated", "no credential given"))
    with pytest.raises(ApiError) as caught:
        make_client(script, []).heartbeat()
    assert not isinstance(caught.value, CredentialRejectedError)


def test_requests_carry_the_agent_key_and_version():
    script = Script(HEARTBEAT_OK)
    make_client(script, []).heartbeat()
    request = script.requests[0]
    assert request.headers["Authorization"] == f"Agent {KEY}"
    assert request.headers["User-Agent"] == f"silo-agent/{__version__}"
    assert str(request.url) == f"{SERVER_URL}/api/agent/v1/heartbeat"


def test_the_key_is_never_logged(caplog):
    script = Script(
        httpx.Response(503), httpx.ConnectError("refused"), error(401, "credential_revoked", "gone")
    )
    with caplog.at_level(logging.DEBUG), pytest.raises(CredentialRejectedError) as caught:
        make_client(script, []).heartbeat()
    assert caplog.records  # the retries were logged
    assert KEY not in caplog.text
    assert KEY not in str(caught.value)


def test_enrollment_is_not_retried_when_the_server_may_have_used_the_token():
    script = Script(httpx.Response(502))
    with pytest.raises(ServerUnreachableError, match="not retried"):
        make_client(script, [], key=None).enroll("token", "host")
    assert len(script.requests) == 1


def test_enrollment_is_retried_when_the_request_never_left():
    answer = httpx.Response(201, json={"institution": {"id": 7, "name": "A"}, "credential_id": 3, "key": KEY})
    script = Script(httpx.ConnectError("refused"), httpx.Response(503), answer)
    credential = make_client(script, [], key=None).enroll("token", "host")
    assert credential.key == KEY
    assert credential.institution.id == 7
    assert "Authorization" not in script.requests[0].headers
    assert KEY not in repr(credential)


def test_a_model_larger_than_its_spec_allows_is_not_read_to_the_end():
    model = global_model_bytes()
    script = Script(httpx.Response(200, content=model))
    with pytest.raises(TaskError, match="larger than"):
        make_client(script, []).download_model(12, max_bytes=len(model) - 1)


def test_a_long_poll_reads_for_longer_than_it_waits():
    script = Script(httpx.Response(200, json={"task": None}))
    assert make_client(script, []).poll_work(25) is None
    request = script.requests[0]
    assert request.url.params["wait"] == "25"
    assert request.extensions["timeout"]["read"] > 25


def test_a_redirect_is_not_followed_and_says_where_it_points():
    script = Script(
        httpx.Response(301, headers={"Location": "https://new.example.org/api/agent/v1/heartbeat"})
    )
    with pytest.raises(ApiError, match=r"redirects to https://new\.example\.org"):
        make_client(script, []).heartbeat()
    assert len(script.requests) == 1
