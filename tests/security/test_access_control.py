"""Access control: every route of the URLconf, with every principal and every method.

:data:`ROUTES` classifies each route (its full pattern, as ``resolve(path).route`` spells
it): which surface it belongs to (that decides what a refusal looks like) and which
methods it offers to whom. The walk sends one request per route, object, principal and
method, and compares the answer with what the table implies:

=============  ==================================================================
surface        refusal, in the order the checks run
=============  ==================================================================
public         nothing to refuse; a method not offered: 405
login          like public; a signed-in person is sent to the overview (302 ``/``)
api            no person signed in: 401; the role's permission class: 403; a method
               not offered: 405; an object outside the person's scope: 404
agent          no active agent credential (revoked: 401 too): 401; 405; another
               institution's object: 404
console        signed out: 302 to ``/login/?next=``; 405; the role: 403; scope: 404
console-json   like console, but 401 JSON when signed out
admin          no principal here is staff: 302 to the admin's sign-in page
not-found      a catch-all for unknown paths: 404 for everyone and every method
=============  ==================================================================

People send their API token (``Authorization: Token``) and their console session cookie
with every request, agents their ``Authorization: Agent`` key; a route's surface decides
which of them counts. Object routes are tried with an object of each scope: shared by A and
B, A's alone, B's alone, and an id that does not exist.

A request that is let through may answer 2xx, a redirect (not to a sign-in page), 400
(the walk sends small or empty bodies) or 409 (a state conflict): it was allowed. It
never answers 5xx. Each request runs in a savepoint that is rolled back, so an allowed
cancel or revoke does not change the world for the next request.

Besides allow and deny, the walk checks that nothing crosses institutions: no answer to
a principal of hospital A (its data owner, its agents) contains anything that belongs to
hospital B alone (its own study, job, model digest, agent hostnames, credential ids,
links), and the other way round. A hospital's name is visible to the other one only where
a shared study lists its participants (``shows_participants``). Every such pattern must be
shown somewhere to those allowed to see it, or the check would be blind. And a 404 for
another institution's object must read exactly like the 404 for a missing one.

Decisions about the routes Django and drf-spectacular bring:

* ``/admin/``: the Django admin is for staff (superusers) only; coordinators are not staff.
  Every admin route but its sign-in page redirects everyone here to that page.
* ``/api/schema/``, ``/api/docs/``, ``/api/redoc/``: for signed-in people, as in production
  (``FEDHEALTH_PUBLIC_API_SCHEMA`` false, its default there; the walk sets it so). With it
  true (the development default) they are public: ``tests/security/test_api_schema_access.py``.
* ``/healthz``: public, GET only.
"""

from __future__ import annotations

import base64
import enum
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from access_fixtures import SIDES, Principal, Variant, World, build_world
from django.conf import settings
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.http import HttpResponseBase
from django.test import Client
from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from pytest_django.fixtures import Settings

from accounts.models import Role

pytestmark = [pytest.mark.security, pytest.mark.django_db]

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
PEOPLE = frozenset(Role)
COORDINATORS = frozenset({Role.COORDINATOR})
DATA_OWNERS = frozenset({Role.DATA_OWNER})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Answers of a request that was let through (the walk's bodies are small or empty).
ALLOWED_STATUSES = frozenset({200, 201, 204, 301, 302, 303, 400, 409})
CONSOLE_SIGN_IN = r"/login/\?next="
ADMIN_SIGN_IN = r"/admin/login/\?next="
MIN_REQUESTS = 5000


class Surface(enum.Enum):
    PUBLIC = "public"
    LOGIN = "login"
    API = "api"
    AGENT = "agent"
    CONSOLE = "console"
    CONSOLE_JSON = "console-json"
    ADMIN = "admin"
    NOT_FOUND = "not-found"


class Gate(enum.Enum):
    """The coordinator API's DRF permission class, checked before the method is looked up."""

    READ_ALL_WRITE_COORDINATOR = "ReadOnlyOrCoordinator"
    DATA_OWNER = "IsDataOwner"
    SIGNED_IN = "IsAuthenticated"

    def roles(self, method: str) -> frozenset[Role]:
        if self is Gate.DATA_OWNER:
            return DATA_OWNERS
        if self is Gate.SIGNED_IN or method in SAFE_METHODS:
            return PEOPLE
        return COORDINATORS


@dataclass(frozen=True)
class Rule:
    """How one route answers. ``methods``: the methods it offers, each with the roles that
    may use it (public, login and agent routes: anyone, or any active agent)."""

    surface: Surface
    methods: Mapping[str, frozenset[Role]] = field(default_factory=dict)
    gate: Gate | None = None
    sample: str | None = None  # a concrete path, for a regular-expression route
    queries: tuple[str, ...] = ()  # extra query strings, formatted with World.ids()
    deny_location: str = ADMIN_SIGN_IN  # admin only: where a refusal redirects to
    shows_participants: bool = False  # lists a shared study's sites by name


def public(*methods: str, surface: Surface = Surface.PUBLIC) -> Rule:
    return Rule(surface, {method: PEOPLE for method in methods})


def agent(*methods: str) -> Rule:
    return Rule(Surface.AGENT, {method: PEOPLE for method in methods})


def api(
    *methods: str,
    gate: Gate = Gate.READ_ALL_WRITE_COORDINATOR,
    queries: tuple[str, ...] = (),
    shows_participants: bool = False,
) -> Rule:
    return Rule(
        Surface.API,
        {method: gate.roles(method) for method in methods},
        gate=gate,
        queries=queries,
        shows_participants=shows_participants,
    )


def console(
    *,
    json_errors: bool = False,
    queries: tuple[str, ...] = (),
    shows_participants: bool = False,
    **methods: frozenset[Role],
) -> Rule:
    surface = Surface.CONSOLE_JSON if json_errors else Surface.CONSOLE
    return Rule(surface, methods, queries=queries, shows_participants=shows_participants)


def admin(*, sample: str | None = None, deny_location: str = ADMIN_SIGN_IN) -> Rule:
    return Rule(Surface.ADMIN, sample=sample, deny_location=deny_location)


#: The models registered in the Django admin (app label/model name).
ADMIN_MODELS = (
    "auth/group",
    "auth/user",
    "axes/accessattempt",  # django-axes: failed sign-ins; a superuser lifts a lock here
    "axes/accesslog",
    "axes/accessfailurelog",
    "authtoken/tokenproxy",
    "accounts/profile",
    "accounts/invitation",
    "audit/auditevent",
    "audit/auditchainhead",
    "institutions/institution",
    "institutions/enrollmenttoken",
    "institutions/agentcredential",
    "studies/study",
    "studies/studyparticipant",
    "studies/summaryrequest",
    "studies/summaryanswer",
    "training/job",
    "training/round",
    "training/modelversion",
    "training/update",
    "training/refusal",
    "training/privacyspend",
    "training/secaggmessage",
    "queries/query",
    "queries/querysite",
    "queries/queryspend",
)
ADMIN_MODEL_ROUTES = (
    "",
    "add/",
    "<path:object_id>/history/",
    "<path:object_id>/delete/",
    "<path:object_id>/change/",
    "<path:object_id>/",
)
ADMIN_APP_LIST = (
    "admin/(?P<app_label>auth|axes|authtoken|accounts|audit|institutions|studies|training|queries)/$"
)


def _admin_routes() -> dict[str, Rule]:
    routes = {
        "admin/": admin(),
        "admin/login/": public("GET", "POST", "PUT"),
        "admin/logout/": admin(deny_location=r"/admin/$"),
        "admin/password_change/": admin(),
        "admin/password_change/done/": admin(),
        "admin/autocomplete/": admin(),
        "admin/jsi18n/": admin(),
        "admin/r/<path:content_type_id>/<path:object_id>/": admin(),
        "admin/auth/user/<id>/password/": admin(),
        ADMIN_APP_LIST: admin(sample="/admin/training/"),
        "admin/(?P<url>.*)$": admin(sample="/admin/no-such-page/"),
    }
    for model in ADMIN_MODELS:
        routes.update({f"admin/{model}/{suffix}": admin() for suffix in ADMIN_MODEL_ROUTES})
    return routes


AUDIT_QUERIES = (
    "?institution={institution_a}",
    "?institution={institution_b}",
    "?job={job_a}",
    "?job={job_b}",
)

#: Every route of the URLconf and how it may be used. A new route fails
#: ``test_every_route_is_classified`` until it is added here.
ROUTES: dict[str, Rule] = {
    "healthz": public("GET"),
    "api/schema/": api("GET", gate=Gate.SIGNED_IN),
    "api/docs/": api("GET", gate=Gate.SIGNED_IN),
    "api/redoc/": api("GET", gate=Gate.SIGNED_IN),
    # --- the agent API: Authorization: Agent <key>; its own institution's objects only ---
    "api/agent/v1/enroll": public("POST"),  # the enrollment token is the credential
    "api/agent/v1/heartbeat": agent("POST"),
    "api/agent/v1/me": agent("GET"),
    "api/agent/v1/work": agent("GET"),
    "api/agent/v1/models/<int:version_id>": agent("GET"),
    "api/agent/v1/rounds/<int:round_id>/update": agent("POST"),
    "api/agent/v1/rounds/<int:round_id>/evaluation": agent("POST"),
    "api/agent/v1/rounds/<int:round_id>/secagg/keys": agent("POST"),
    "api/agent/v1/rounds/<int:round_id>/secagg/shares": agent("POST"),
    "api/agent/v1/rounds/<int:round_id>/secagg/masked": agent("POST"),
    "api/agent/v1/rounds/<int:round_id>/secagg/unmasking": agent("POST"),
    "api/agent/v1/jobs/<int:job_id>/refuse": agent("POST"),
    # Scoped by the answering site's approval (tests/platform/test_data_agreement.py).
    "api/agent/v1/summaries/<int:request_id>": Rule(
        Surface.AGENT, {"POST": PEOPLE}, sample="/api/agent/v1/summaries/1"
    ),
    # Scoped by the answering site's data owner's approval (tests/platform/test_queries_api.py).
    "api/agent/v1/queries/<int:query_id>": Rule(
        Surface.AGENT, {"POST": PEOPLE}, sample="/api/agent/v1/queries/1"
    ),
    # --- any other path under api/: a JSON 404, whoever asks ----------------------------
    "^api/": Rule(Surface.NOT_FOUND, sample="/api/no-such-endpoint/"),
    # --- the coordinator API: everyone signed in reads, coordinators write ---------------
    "api/v1/institutions/": api("GET", "POST"),
    "api/v1/institutions/<int:institution_id>/": api("GET"),
    "api/v1/institutions/<int:institution_id>/enrollment-tokens/": api("GET", "POST"),
    "api/v1/institutions/<int:institution_id>/enrollment-tokens/<int:token_id>/withdraw/": api("POST"),
    "api/v1/institutions/<int:institution_id>/credentials/": api("GET"),
    "api/v1/institutions/<int:institution_id>/privacy-ledger/": api("GET"),
    "api/v1/credentials/<int:credential_id>/revoke/": api("POST"),
    "api/v1/studies/": api("GET", "POST", shows_participants=True),
    "api/v1/studies/<int:study_id>/": api("GET", shows_participants=True),
    "api/v1/studies/<int:study_id>/decision/": api("POST", gate=Gate.DATA_OWNER),
    "api/v1/studies/<int:study_id>/summaries/": api("GET", "POST", shows_participants=True),
    "api/v1/studies/<int:study_id>/queries/": api("GET", "POST", shows_participants=True),
    "api/v1/studies/<int:study_id>/queries/<int:query_id>/": api("GET", shows_participants=True),
    "api/v1/studies/<int:study_id>/queries/<int:query_id>/decision/": api(
        "POST", gate=Gate.DATA_OWNER, shows_participants=True
    ),
    "api/v1/jobs/": api("GET", "POST", queries=("?study={study_a}", "?study={study_b}")),
    "api/v1/jobs/<int:job_id>/": api("GET"),
    "api/v1/jobs/<int:job_id>/start/": api("POST"),
    "api/v1/jobs/<int:job_id>/pause/": api("POST"),
    "api/v1/jobs/<int:job_id>/resume/": api("POST"),
    "api/v1/jobs/<int:job_id>/cancel/": api("POST"),
    "api/v1/jobs/<int:job_id>/progress/": api("GET"),
    "api/v1/jobs/<int:job_id>/models/": api("GET"),
    "api/v1/jobs/<int:job_id>/models/upload/": api("POST"),
    "api/v1/models/<int:version_id>/download/": api("GET"),
    "api/v1/models/<int:version_id>/bundle/": api("GET"),
    "api/v1/me/": api("GET", gate=Gate.SIGNED_IN),
    "api/v1/invitations/": api("POST"),
    "api/v1/invitations/accept/": public("POST"),  # the invitation's secret is the credential
    "api/v1/audit-events/": api("GET", queries=AUDIT_QUERIES),
    # --- the web console: a signed-in session --------------------------------------------
    "": console(GET=PEOPLE),
    "login/": public("GET", "POST", "PUT", surface=Surface.LOGIN),
    "logout/": public("POST"),
    "institutions/": console(GET=PEOPLE, POST=COORDINATORS),
    "institutions/<int:institution_id>/": console(GET=PEOPLE),
    "institutions/<int:institution_id>/tokens/": console(POST=COORDINATORS),
    "institutions/<int:institution_id>/tokens/<int:token_id>/": console(GET=COORDINATORS),
    "institutions/<int:institution_id>/tokens/<int:token_id>/withdraw/": console(POST=COORDINATORS),
    "institutions/<int:institution_id>/tokens/<int:token_id>/site-kit.zip": console(GET=COORDINATORS),
    "credentials/<int:credential_id>/revoke/": console(GET=COORDINATORS, POST=COORDINATORS),
    "studies/": console(GET=PEOPLE),
    "studies/new/": console(GET=COORDINATORS, POST=COORDINATORS),
    "studies/<int:study_id>/": console(GET=PEOPLE, shows_participants=True),
    "studies/<int:study_id>/decision/": console(POST=DATA_OWNERS),
    "studies/<int:study_id>/jobs/": console(POST=COORDINATORS),
    "studies/<int:study_id>/scaling/": console(POST=COORDINATORS),
    "studies/<int:study_id>/queries/": console(GET=PEOPLE, POST=COORDINATORS, shows_participants=True),
    "studies/<int:study_id>/queries/<int:query_id>/": console(GET=PEOPLE, shows_participants=True),
    "studies/<int:study_id>/queries/<int:query_id>/decision/": console(POST=DATA_OWNERS),
    "jobs/": console(GET=PEOPLE, queries=("?state=running",)),
    "jobs/<int:job_id>/": console(GET=PEOPLE),
    "jobs/<int:job_id>/live.json": console(GET=PEOPLE, json_errors=True),
    "jobs/<int:job_id>/start/": console(POST=COORDINATORS),
    "jobs/<int:job_id>/pause/": console(POST=COORDINATORS),
    "jobs/<int:job_id>/resume/": console(POST=COORDINATORS),
    "jobs/<int:job_id>/cancel/": console(GET=COORDINATORS, POST=COORDINATORS),
    "jobs/<int:job_id>/models/upload/": console(POST=COORDINATORS),
    "models/<int:version_id>/download": console(GET=PEOPLE),
    "models/<int:version_id>/bundle": console(GET=PEOPLE),
    "people/": console(GET=COORDINATORS, POST=COORDINATORS),
    # The link is the credential: an unknown one shows that it does not work.
    "invitations/<str:secret>/": Rule(
        Surface.PUBLIC, {"GET": PEOPLE, "POST": PEOPLE}, sample="/invitations/no-such-link/"
    ),
    "account/password/": console(GET=PEOPLE, POST=PEOPLE),
    "audit/": console(GET=PEOPLE, queries=AUDIT_QUERIES),
    "audit/export.csv": console(GET=PEOPLE, queries=AUDIT_QUERIES),
    **_admin_routes(),
}

CLASSIFY_HINT = (
    "Classify it in ROUTES of tests/security/test_access_control.py: its key is the route "
    "exactly as written here; its rule says who may use which method, e.g. "
    'api("GET", "POST") for a coordinator API route (all read, coordinators write), '
    'agent("POST") for the agent API, console(GET=PEOPLE, POST=COORDINATORS) for a page, '
    'public("GET") for a route open to anyone, admin() for a Django admin page.'
)


# --- the URLconf -----------------------------------------------------------------------------


def _join(prefix: str, pattern: str) -> str:
    """How Django joins route fragments in ``ResolverMatch.route``."""
    return prefix + pattern.removeprefix("^") if prefix else pattern


def url_routes(patterns: list[URLPattern | URLResolver] | None = None, prefix: str = "") -> Iterator[str]:
    """Every route of the URLconf, in full, as ``resolve(path).route`` spells it."""
    for pattern in patterns if patterns is not None else get_resolver().url_patterns:
        route = _join(prefix, str(pattern.pattern))
        if isinstance(pattern, URLResolver):
            yield from url_routes(pattern.url_patterns, route)
        else:
            yield route


PARAMETER = re.compile(r"<(?:(?P<converter>\w+):)?(?P<name>\w+)>")
KIND_OF = {
    "institution_id": "institution",
    "credential_id": "credential",
    "study_id": "study",
    "job_id": "job",
    "version_id": "version",
    "round_id": "round",
    "token_id": "token",
    "query_id": "query",
}
ADMIN_PARAMETERS = {"object_id", "content_type_id", "id"}


def object_kind(route: str) -> str | None:
    """The kind of object the route's URL names (``token``: an institution and its token)."""
    names = {match["name"] for match in PARAMETER.finditer(route)}
    if not names or names <= ADMIN_PARAMETERS:
        return None
    unknown = names - KIND_OF.keys()
    assert not unknown, f"{route!r}: teach the walk how to fill {sorted(unknown)} (KIND_OF)"
    kinds = {KIND_OF[name] for name in names}
    for paired in ("token", "query"):  # named with their institution or study
        if paired in kinds:
            return paired
    return kinds.pop()


def fill(route: str, values: Mapping[str, int]) -> str:
    def value(match: re.Match[str]) -> str:
        return str(values.get(match["name"], 1))

    return "/" + PARAMETER.sub(value, route)


@dataclass(frozen=True)
class Target:
    """One URL to try: a route filled with one object (or none) and an optional query."""

    route: str
    rule: Rule
    path: str
    variant: Variant | None


def targets(world: World) -> Iterator[Target]:
    ids = world.ids()
    for route, rule in ROUTES.items():
        kind = None if rule.sample else object_kind(route)
        variants: list[Variant | None] = list(world.variants(kind)) if kind else [None]
        for variant in variants:
            path = rule.sample or fill(route, variant.kwargs if variant else {})
            assert resolve(path.split("?")[0]).route == route, f"{path} does not reach {route!r}"
            yield Target(route, rule, path, variant)
            for query in rule.queries:
                yield Target(route, rule, path + query.format(**ids), variant)


# --- what each request should get ------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """``status`` None: let through. Otherwise the exact refusal (and its redirect target)."""

    status: int | None = None
    location: str | None = None

    def describe(self) -> str:
        if self.status is None:
            return "allowed"
        return f"{self.status}" + (f" to {self.location}" if self.location else "")


ALLOWED = Expect()


def sees(principal: Principal, variant: Variant | None) -> bool:
    if variant is None:
        return True
    if principal.sees_every_institution:
        return bool(variant.owners)
    return principal.side in variant.owners


def expect(rule: Rule, principal: Principal, method: str, variant: Variant | None) -> Expect:
    offered = method in rule.methods
    role = principal.role
    surface = rule.surface
    if surface is Surface.ADMIN:
        return Expect(302, rule.deny_location)
    if surface is Surface.NOT_FOUND:
        return Expect(404)
    if surface is Surface.LOGIN and principal.is_person:
        return Expect(302, r"/$")  # signed in already: sent on to the overview
    if surface in (Surface.PUBLIC, Surface.LOGIN):
        return ALLOWED if offered else Expect(405)
    if surface is Surface.AGENT:
        if not (principal.agent and principal.active):
            return Expect(401)
        if not offered:
            return Expect(405)
        return ALLOWED if sees(principal, variant) else Expect(404)
    if role is None:
        return Expect(401) if surface is not Surface.CONSOLE else Expect(302, CONSOLE_SIGN_IN)
    if surface is Surface.API:
        assert rule.gate is not None
        if role not in rule.gate.roles(method):
            return Expect(403)
        if not offered:
            return Expect(405)
    else:  # the console: the method first, then the role
        if not offered:
            return Expect(405)
        if role not in rule.methods[method]:
            return Expect(403)
    return ALLOWED if sees(principal, variant) else Expect(404)


# --- sending ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Body:
    data: bytes = b""
    content_type: str = "application/json"


def json_body(payload: object) -> Body:
    return Body(json.dumps(payload).encode(), "application/json")


def form_body(payload: Mapping[str, str]) -> Body:
    return Body(urlencode(payload).encode(), "application/x-www-form-urlencoded")


def _update_body(world: World, principal: Principal) -> Body:
    meta = {"num_examples": 5, "metrics": {}, "base_model_sha256": "0" * 64, "job_id": 1, "round_number": 1}
    upload = SimpleUploadedFile("update.safetensors", b"not safetensors")
    return Body(encode_multipart(BOUNDARY, {"meta": json.dumps(meta), "tensors": upload}), MULTIPART_CONTENT)


def _masked_body(world: World, principal: Principal) -> Body:
    meta = {"metrics": {}, "base_model_sha256": "0" * 64, "job_id": 1, "round_number": 1}
    upload = SimpleUploadedFile("masked.safetensors", b"not safetensors")
    return Body(encode_multipart(BOUNDARY, {"meta": json.dumps(meta), "tensors": upload}), MULTIPART_CONTENT)


def _model_upload_body(world: World, principal: Principal) -> Body:
    upload = SimpleUploadedFile("model.safetensors", b"not safetensors")
    return Body(encode_multipart(BOUNDARY, {"name": "elsewhere", "tensors": upload}), MULTIPART_CONTENT)


_PUBLIC_KEY = base64.b64encode(bytes(range(32))).decode()


def _own_institution(world: World, principal: Principal) -> int:
    return principal.institution_id or world.sides["A"].institution.pk


#: Bodies that get past input validation, so that the scope check decides.
BODIES: dict[str, Callable[[World, Principal], Body]] = {
    "api/agent/v1/heartbeat": lambda world, principal: json_body({"agent_version": "9.9"}),
    "api/v1/jobs/<int:job_id>/models/upload/": _model_upload_body,
    "jobs/<int:job_id>/models/upload/": _model_upload_body,
    "api/agent/v1/rounds/<int:round_id>/update": _update_body,
    "api/agent/v1/rounds/<int:round_id>/evaluation": lambda world, principal: json_body(
        {"num_examples": 5, "metrics": {"accuracy": 0.5}}
    ),
    "api/agent/v1/jobs/<int:job_id>/refuse": lambda world, principal: json_body({"reason": "local policy"}),
    "api/agent/v1/rounds/<int:round_id>/secagg/keys": lambda world, principal: json_body(
        {"cipher_public_key": _PUBLIC_KEY, "mask_public_key": _PUBLIC_KEY}
    ),
    "api/agent/v1/rounds/<int:round_id>/secagg/shares": lambda world, principal: json_body(
        {"shares": {"1": "AAAA"}}
    ),
    "api/agent/v1/rounds/<int:round_id>/secagg/masked": _masked_body,
    "api/agent/v1/rounds/<int:round_id>/secagg/unmasking": lambda world, principal: json_body(
        {"self_mask_shares": {}, "mask_key_shares": {}}
    ),
    "api/v1/institutions/<int:institution_id>/enrollment-tokens/": lambda world, principal: json_body(
        {"hours": 1}
    ),
    "api/v1/studies/<int:study_id>/decision/": lambda world, principal: json_body(
        {"institution": _own_institution(world, principal), "decision": "approve"}
    ),
    "api/v1/studies/<int:study_id>/queries/": lambda world, principal: json_body(
        {"query": {"kind": "columns"}}
    ),
    "api/v1/studies/<int:study_id>/queries/<int:query_id>/decision/": lambda world, principal: json_body(
        {"institution": _own_institution(world, principal), "decision": "approve"}
    ),
    "studies/<int:study_id>/queries/": lambda world, principal: form_body({"kind": "columns"}),
    "studies/<int:study_id>/queries/<int:query_id>/decision/": lambda world, principal: form_body(
        {"decision": "approve"}
    ),
    "institutions/<int:institution_id>/tokens/": lambda world, principal: form_body({"hours": "1"}),
    "studies/<int:study_id>/decision/": lambda world, principal: form_body({"decision": "approve"}),
}


def body_for(target: Target, world: World, principal: Principal, method: str) -> Body:
    if method == "GET":
        return Body()
    if target.route in BODIES:
        return BODIES[target.route](world, principal)
    if target.rule.surface in (Surface.API, Surface.AGENT) or target.route.startswith("api/"):
        return json_body({})
    return form_body({})


class Sender:
    """One test client per principal; its session cookie is put back before each request
    (a sign-out would otherwise end it) and each request is rolled back afterwards."""

    def __init__(self) -> None:
        self.clients: dict[str, Client] = {}

    def send(self, principal: Principal, method: str, path: str, body: Body) -> HttpResponseBase:
        client = self.clients.get(principal.name)
        if client is None:
            headers = {"Authorization": principal.authorization} if principal.authorization else None
            client = self.clients[principal.name] = Client(raise_request_exception=False, headers=headers)
        client.cookies = SimpleCookie()
        if principal.session_key:
            client.cookies[settings.SESSION_COOKIE_NAME] = principal.session_key
        cache.clear()  # enrollment is throttled per address
        with transaction.atomic():
            response = client.generic(method, path, data=body.data, content_type=body.content_type)
            transaction.set_rollback(True)
        return response


# --- checking --------------------------------------------------------------------------------


def verdict(target: Target, expected: Expect, response: HttpResponseBase) -> str | None:
    """What is wrong with the answer, or None."""
    status = response.status_code
    location = response.get("Location", "")
    if status >= 500:
        return f"server error {status}"
    if expected.status is not None:
        if status != expected.status:
            return f"expected {expected.describe()}, got {status} {location}".rstrip()
        if expected.location and not re.match(expected.location, location):
            return f"expected a redirect to {expected.location}, got {location!r}"
        return None
    if status not in ALLOWED_STATUSES:
        return f"expected to be let through, got {status}"
    signing_in = re.match(CONSOLE_SIGN_IN, location) or re.match(ADMIN_SIGN_IN, location)
    if status == 302 and target.rule.surface is not Surface.PUBLIC and signing_in:
        return f"expected to be let through, got sent to sign in ({location})"
    return None


def response_text(response: HttpResponseBase) -> str:
    headers = " ".join(f"{name}: {value}" for name, value in response.items())
    if getattr(response, "streaming", False):
        response.close()
        return headers
    content: bytes = response.content  # type: ignore[attr-defined]
    return headers + "\n" + content.decode("utf-8", errors="replace")


class LeakCheck:
    """No answer to a principal of one hospital shows what belongs to the other alone; and
    each such thing is shown somewhere to those who may see it (else the check is blind)."""

    def __init__(self, world: World) -> None:
        self.secrets = {
            (side, with_name): world.secrets_of(side, with_name=with_name)
            for side in SIDES
            for with_name in (False, True)
        }
        self.unseen = {(side, pattern.pattern) for side in SIDES for pattern in self.secrets[side, True]}

    def leaks(self, target: Target, principal: Principal, response: HttpResponseBase) -> list[str]:
        """Checked on every answer, refusals included (a 403 or 404 must not name things).
        The request's own path, echoed back (``?next=`` of a sign-in redirect), is no leak."""
        path = target.path.split("?")[0]
        text = response_text(response).replace(path, "<path>").replace(quote(path), "<path>")
        allowed = response.status_code < 300
        own_sides = SIDES if principal.sees_every_institution else (principal.side,)
        for side in own_sides:
            if side is not None and allowed:
                self.unseen -= {(side, p.pattern) for p in self.secrets[side, True] if p.search(text)}
        if principal.side is None:
            return []
        other = next(side for side in SIDES if side != principal.side)
        with_name = principal.agent or not target.rule.shows_participants
        return [pattern.pattern for pattern in self.secrets[other, with_name] if pattern.search(text)]


CSRF_TOKEN = re.compile(r'name="csrfmiddlewaretoken" value="[^"]*"')


class ExistenceCheck:
    """A 404 for another institution's object reads exactly like one for an id that does not
    exist (the path and the per-request CSRF token aside): nothing tells a principal that
    the object is there."""

    def __init__(self) -> None:
        self.bodies: dict[tuple[str, str, str, str], set[str]] = {}
        self.answers: Counter[tuple[str, str, str, str]] = Counter()

    def record(self, target: Target, principal: Principal, method: str, response: HttpResponseBase) -> None:
        if response.status_code != 404 or target.variant is None:
            return
        path, _, query = target.path.partition("?")
        key = (target.route, query, principal.name, method)
        content: bytes = response.content  # type: ignore[attr-defined]
        text = CSRF_TOKEN.sub("csrf", content.decode("utf-8", errors="replace")).replace(path, "<path>")
        self.bodies.setdefault(key, set()).add(text)
        self.answers[key] += 1

    @property
    def comparisons(self) -> int:
        """Cases where another institution's object and a missing one were both a 404."""
        return sum(1 for count in self.answers.values() if count > 1)

    def differences(self) -> list[str]:
        return [
            f"{method} /{route}{'?' + query if query else ''} as {principal}: {len(bodies)} different 404s"
            for (route, query, principal, method), bodies in self.bodies.items()
            if len(bodies) > 1
        ]


# --- the tests -------------------------------------------------------------------------------


def test_every_route_is_classified() -> None:
    in_urlconf = list(url_routes())
    duplicates = [route for route, count in Counter(in_urlconf).items() if count > 1]
    assert not duplicates, f"routes defined twice: {duplicates}"
    unclassified = [route for route in in_urlconf if route not in ROUTES]
    assert not unclassified, "\n".join(
        [f"route {route!r} is not classified for access control." for route in unclassified] + [CLASSIFY_HINT]
    )
    stale = sorted(set(ROUTES) - set(in_urlconf))
    assert not stale, f"ROUTES classifies routes the URLconf no longer has, remove them: {stale}"


@pytest.fixture
def world(isolated_model_storage: Path, settings: Settings) -> World:
    settings.FEDHEALTH_PUBLIC_API_SCHEMA = False  # the production default
    return build_world()


@pytest.fixture
def quiet_refusals() -> Iterator[None]:
    """Thousands of 4xx answers: Django's per-request warnings would drown the output."""
    logger = logging.getLogger("django.request")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


@dataclass
class Walk:
    """Every target with every principal and method; what went wrong, and what leaked."""

    world: World
    sender: Sender = field(default_factory=Sender)
    wrong: list[str] = field(default_factory=list)
    leaked: list[str] = field(default_factory=list)
    checked: int = 0
    routes: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.leak_check = LeakCheck(self.world)
        self.existence_check = ExistenceCheck()

    def run(self) -> None:
        for target in targets(self.world):
            self.routes.add(target.route)
            for principal in self.world.principals:
                for method in METHODS:
                    self.check(target, principal, method)

    def check(self, target: Target, principal: Principal, method: str) -> None:
        expected = expect(target.rule, principal, method, target.variant)
        body = body_for(target, self.world, principal, method)
        response = self.sender.send(principal, method, target.path, body)
        self.checked += 1
        where = f"{method} {target.path} as {principal.name}"
        problem = verdict(target, expected, response)
        if problem:
            self.wrong.append(f"{where}: {problem}")
        self.existence_check.record(target, principal, method, response)
        found = self.leak_check.leaks(target, principal, response)
        if found:
            self.leaked.append(f"{where} ({response.status_code}): shows {found}")

    @property
    def summary(self) -> str:
        return (
            f"access control: {len(self.routes)} routes, {len(self.world.principals)} principals, "
            f"{len(METHODS)} methods, {self.checked} requests checked, {len(self.wrong)} wrong answers, "
            f"{len(self.leaked)} cross-institution leaks, "
            f"{self.existence_check.comparisons} out-of-scope 404s compared with missing-object 404s"
        )


@pytest.mark.usefixtures("quiet_refusals")
def test_every_route_with_every_principal_and_method(world: World) -> None:
    walk = Walk(world)
    walk.run()
    print("\n" + walk.summary)  # shown with pytest -s
    assert not walk.wrong, walk.summary + "\n" + "\n".join(walk.wrong[:200])
    assert not walk.leaked, walk.summary + "\n" + "\n".join(walk.leaked[:200])
    differences = walk.existence_check.differences()
    assert not differences, walk.summary + "\n" + "\n".join(differences)
    unseen = walk.leak_check.unseen
    assert not unseen, f"the leak check looks for things no answer ever shows: {sorted(unseen)}"
    assert walk.routes == set(ROUTES)
    assert walk.existence_check.comparisons > 30, walk.summary
    assert walk.checked > MIN_REQUESTS, walk.summary
