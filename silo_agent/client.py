"""The HTTP client of the agent API (``/api/agent/v1/``, see ``docs/api.md``).

* Retries with exponential backoff and full jitter (a uniform draw in ``[0, min(cap,
  base * 2**attempt)]`` from an injected :class:`random.Random`) on connection errors,
  timeouts, 429, 502, 503 and 504, honouring ``Retry-After``; never on other 4xx.
* Only idempotent requests are retried after the server may have acted on them. Every
  agent request is idempotent except ``enroll`` (its token works once), which is retried
  only when the request surely was not processed (no connection, 429, 503).
* A 401 ``credential_revoked`` or ``invalid_credential`` raises
  :class:`CredentialRejectedError`; other errors raise :class:`ApiError` carrying the API's
  ``{"error": {"code", "message", "fields"}}``.
* The key travels only in the ``Authorization: Agent <key>`` header and is never logged.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import httpx

from federation.policy_limits import PolicyLimits
from silo_agent import __version__
from silo_agent.credential import Credential, Institution
from silo_agent.errors import ApiError, CredentialRejectedError, ServerUnreachableError, TaskError

logger = logging.getLogger(__name__)

API_PREFIX = "/api/agent/v1/"
USER_AGENT = f"silo-agent/{__version__}"
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
#: Answers that say the server did not act on the request: safe to retry even enrollment.
NOT_PROCESSED_STATUSES = frozenset({429, 503})
REJECTED_CREDENTIAL_CODES = frozenset({"credential_revoked", "invalid_credential"})
#: Seconds the server may take beyond the long-poll wait before the read times out.
POLL_GRACE_SECONDS = 15.0
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=120.0, pool=10.0)

_Result = TypeVar("_Result")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped."""

    max_attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ValueError(f"invalid retry policy {self}")

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (0-based)."""
        ceiling = min(self.max_delay, self.base_delay * 2**attempt)
        delay = rng.uniform(0.0, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_delay))
        return delay


@dataclass(frozen=True)
class ServerStudy:
    id: int
    name: str
    approval: str


@dataclass(frozen=True)
class ServerJob:
    id: int
    study_id: int
    state: str
    current_round: int | None


@dataclass(frozen=True)
class ServerView:
    """The server's view of this agent (``GET me``)."""

    institution: Institution
    credential_id: int
    studies: tuple[ServerStudy, ...]
    jobs: tuple[ServerJob, ...]

    def approved_study_ids(self) -> frozenset[int]:
        return frozenset(study.id for study in self.studies if study.approval == "approved")


@dataclass(frozen=True)
class DownloadedModel:
    data: bytes
    header_sha256: str | None


@dataclass(frozen=True)
class UploadReceipt:
    sha256: str
    duplicate: bool


class _RetryableStatusError(Exception):
    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(f"server answered {status}")
        self.status = status
        self.retry_after = retry_after


class AgentClient:
    """One agent's connection to the control plane. Use as a context manager."""

    def __init__(
        self,
        server_url: str,
        *,
        key: str | None = None,
        ca_bundle: Path | None = None,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        policy_limits: PolicyLimits | None = None,
    ) -> None:
        self.server_url = server_url.rstrip("/")
        #: Reported with each heartbeat, so that the server can warn before a job this site
        #: would refuse starts.
        self._policy_limits = policy_limits
        self._retry = retry or RetryPolicy()
        self._rng = rng or random.Random()  # noqa: S311  # jitter, not cryptography
        self._sleep = sleep
        self._timeout = timeout
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Agent {key}"
        self._http = httpx.Client(
            base_url=self.server_url + API_PREFIX,
            headers=headers,
            timeout=timeout,
            verify=_ssl_context(ca_bundle),
            transport=transport,
            follow_redirects=False,  # a redirect could carry the key elsewhere
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    # --- the API, one method per operation ------------------------------------------

    def enroll(self, token: str, hostname: str) -> Credential:
        """Exchange a one-time enrollment token for a credential."""
        body = {"token": token, "agent_version": __version__, "hostname": hostname}
        answer = self._json_call("enroll", "POST", "enroll", json=body, idempotent=False)
        try:
            institution = _object(answer, "institution")
            return Credential(
                server_url=self.server_url,
                credential_id=_int(answer, "credential_id"),
                institution=Institution(id=_int(institution, "id"), name=str(institution.get("name", ""))),
                key=_str(answer, "key"),
            )
        except (KeyError, TypeError) as error:
            raise _bad_answer("enroll", error) from None

    def heartbeat(self) -> str:
        """Tell the server this agent is alive; returns the server's time."""
        body: dict[str, object] = {"agent_version": __version__}
        if self._policy_limits is not None:
            body["policy"] = self._policy_limits.to_json()
        answer = self._json_call("heartbeat", "POST", "heartbeat", json=body)
        return str(answer.get("server_time", ""))

    def me(self) -> ServerView:
        """The server's view of this institution: studies, approvals and jobs."""
        answer = self._json_call("me", "GET", "me")
        try:
            return _server_view(answer)
        except (KeyError, TypeError) as error:
            raise _bad_answer("me", error) from None

    def poll_work(self, wait_seconds: int) -> Mapping[str, object] | None:
        """Long-poll for a task; None when the server had nothing within ``wait_seconds``."""
        timeout = httpx.Timeout(
            connect=self._timeout.connect,
            read=wait_seconds + POLL_GRACE_SECONDS,
            write=self._timeout.write,
            pool=self._timeout.pool,
        )
        answer = self._json_call("work", "GET", "work", params={"wait": wait_seconds}, timeout=timeout)
        task = answer.get("task")
        if task is None:
            return None
        if not isinstance(task, Mapping):
            raise _bad_answer("work", TypeError("task must be an object or null"))
        return task

    def download_model(self, version_id: int, *, max_bytes: int) -> DownloadedModel:
        """The safetensors bytes of a model version, refusing more than ``max_bytes``."""
        return self._with_retries(
            f"download of model {version_id}", lambda: self._download(version_id, max_bytes)
        )

    def upload_update(
        self, round_id: int, meta: Mapping[str, object], tensors: bytes, *, masked: bool = False
    ) -> UploadReceipt:
        """Upload one update (``masked``: a secure-aggregation round's masked vector); a
        retry with the same bytes is answered as a duplicate."""
        answer = self._json_call(
            "upload of this round's update",
            "POST",
            f"rounds/{round_id}/secagg/masked" if masked else f"rounds/{round_id}/update",
            data={"meta": json.dumps(meta)},
            files={"tensors": ("update.safetensors", tensors, "application/octet-stream")},
        )
        return UploadReceipt(
            sha256=str(answer.get("sha256", "")), duplicate=bool(answer.get("duplicate", False))
        )

    def post_evaluation(self, round_id: int, num_examples: int, metrics: Mapping[str, float]) -> None:
        """Report the final model's metrics on this site's validation rows."""
        body = {"num_examples": num_examples, "metrics": dict(metrics)}
        self._json_call("report of the final evaluation", "POST", f"rounds/{round_id}/evaluation", json=body)

    def post_secure_aggregation(self, round_id: int, step: str, body: Mapping[str, object]) -> bool:
        """Send this site's message of one secure-aggregation phase (``keys``, ``shares`` or
        ``unmasking``); True if the server already had it."""
        answer = self._json_call(
            f"this round's secure-aggregation {step}",
            "POST",
            f"rounds/{round_id}/secagg/{step}",
            json=dict(body),
        )
        return bool(answer.get("duplicate", False))

    def post_summary(self, request_id: int, body: Mapping[str, object]) -> None:
        """Answer a study's summary request: ``{"summary": ...}`` or ``{"refused": reason}``."""
        self._json_call(
            f"answer to summary request {request_id}", "POST", f"summaries/{request_id}", json=dict(body)
        )

    def post_query(self, query_id: int, body: Mapping[str, object]) -> None:
        """Answer a federated query: ``{"answer": ...}``, a secure step, or ``{"refused": reason}``."""
        self._json_call(f"answer to query {query_id}", "POST", f"queries/{query_id}", json=dict(body))

    def refuse_job(self, job_id: int, reason: str) -> None:
        """Tell the server this institution will not take part in ``job_id``, and why."""
        self._json_call(f"refusal of job {job_id}", "POST", f"jobs/{job_id}/refuse", json={"reason": reason})

    # --- plumbing --------------------------------------------------------------------

    def _json_call(
        self, what: str, method: str, path: str, *, idempotent: bool = True, **options: object
    ) -> Mapping[str, object]:
        def operation() -> Mapping[str, object]:
            response = self._http.request(method, path, **options)  # type: ignore[arg-type]
            _check(response)
            return _json_body(response, what)

        return self._with_retries(what, operation, idempotent=idempotent)

    def _download(self, version_id: int, max_bytes: int) -> DownloadedModel:
        with self._http.stream("GET", f"models/{version_id}") as response:
            _check(response)
            chunks, total = [], 0
            for chunk in response.iter_bytes():
                total += len(chunk)
                if total > max_bytes:
                    raise TaskError(
                        f"model {version_id} is larger than the {max_bytes} bytes its spec allows"
                    )
                chunks.append(chunk)
            return DownloadedModel(b"".join(chunks), response.headers.get("X-Content-SHA256"))

    def _with_retries(
        self, what: str, operation: Callable[[], _Result], *, idempotent: bool = True
    ) -> _Result:
        attempts = self._retry.max_attempts
        problem = "no attempt made"
        for attempt in range(attempts):
            try:
                return operation()
            except httpx.TransportError as error:
                problem, retry_after = _describe_transport_error(error), None
                unsent = isinstance(error, httpx.ConnectError | httpx.ConnectTimeout)
                if not (idempotent or unsent):
                    raise ServerUnreachableError(
                        f"{what}: {problem}; not retried (it may have been processed)"
                    ) from None
            except _RetryableStatusError as error:
                problem, retry_after = str(error), error.retry_after
                if not (idempotent or error.status in NOT_PROCESSED_STATUSES):
                    raise ServerUnreachableError(
                        f"{what}: {problem}; not retried (it may have been processed)"
                    ) from None
            if attempt + 1 < attempts:
                delay = self._retry.delay(attempt, self._rng, retry_after)
                logger.warning(
                    "%s: %s; retry %d of %d in %.1f s", what, problem, attempt + 1, attempts - 1, delay
                )
                self._sleep(delay)
        raise ServerUnreachableError(f"{what}: {problem} (gave up after {attempts} attempts)")


def parse_api_error(response: httpx.Response) -> ApiError:
    """The API's error JSON as an :class:`ApiError`; tolerant of non-JSON bodies (proxies)."""
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
        fields = error.get("fields") or {}
        if not isinstance(fields, dict):
            fields = {}
    except (ValueError, KeyError, TypeError):
        code, message, fields = f"http_{response.status_code}", response.reason_phrase or "error", {}
    cleaned = {
        str(name): [str(m) for m in (msgs if isinstance(msgs, list) else [msgs])]
        for name, msgs in fields.items()
    }
    return ApiError(response.status_code, code, message, cleaned)


def _check(response: httpx.Response) -> None:
    status = response.status_code
    if status < 300:
        return
    if status < 400:  # redirects are not followed: they could carry the key elsewhere
        location = response.headers.get("Location", "?")
        raise ApiError(
            status, "redirect", f"the server redirects to {location}; set server_url to that address"
        )
    if status in RETRYABLE_STATUSES:
        raise _RetryableStatusError(status, _retry_after(response))
    response.read()
    error = parse_api_error(response)
    if status == 401 and error.code in REJECTED_CREDENTIAL_CODES:
        raise CredentialRejectedError(
            f"the server rejected this agent's credential ({error.code}: {error.message}); "
            "ask the coordinator for a new enrollment token and run `silo-agent enroll --force`"
        )
    raise error


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # the HTTP-date form is rare for APIs; the backoff still applies


def _json_body(response: httpx.Response, what: str) -> Mapping[str, object]:
    try:
        body = response.json()
    except ValueError:
        raise ApiError(
            response.status_code, "bad_response", f"{what}: the server's answer is not JSON"
        ) from None
    if not isinstance(body, dict):
        raise ApiError(
            response.status_code, "bad_response", f"{what}: the server's answer is not a JSON object"
        )
    return body


def _describe_transport_error(error: httpx.TransportError) -> str:
    kind = "timed out" if isinstance(error, httpx.TimeoutException) else "connection failed"
    detail = str(error)
    return f"{kind} ({detail})" if detail else kind


def _ssl_context(ca_bundle: Path | None) -> ssl.SSLContext:
    # The system's CAs unless the hospital pins its own bundle.
    return ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)


def _bad_answer(what: str, error: Exception) -> ApiError:
    return ApiError(200, "bad_response", f"{what}: unexpected answer from the server ({error})")


def _server_view(answer: Mapping[str, object]) -> ServerView:
    institution = _object(answer, "institution")
    studies = [_object_item(item) for item in _list(answer, "studies")]
    jobs = [_object_item(item) for item in _list(answer, "jobs")]
    return ServerView(
        institution=Institution(id=_int(institution, "id"), name=str(institution.get("name", ""))),
        credential_id=_int(answer, "credential_id"),
        studies=tuple(
            ServerStudy(id=_int(s, "id"), name=str(s.get("name", "")), approval=str(s.get("approval", "")))
            for s in studies
        ),
        jobs=tuple(
            ServerJob(
                id=_int(j, "id"),
                study_id=_int(j, "study_id"),
                state=str(j.get("state", "")),
                current_round=_optional_int(j, "current_round"),
            )
            for j in jobs
        ),
    )


def _object(data: Mapping[str, object], key: str) -> Mapping[str, object]:
    return _object_item(data[key])


def _object_item(value: object) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise TypeError("expected a JSON object")
    return value


def _list(data: Mapping[str, object], key: str) -> list[object]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise TypeError(f"{key} must be a list")
    return value


def _int(data: Mapping[str, object], key: str) -> int:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{key} must be an integer")
    return value


def _optional_int(data: Mapping[str, object], key: str) -> int | None:
    # Display-only fields: an unexpected shape shows as "-" rather than failing `status`.
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(data: Mapping[str, object], key: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not value:
        raise TypeError(f"{key} must be a non-empty string")
    return value
