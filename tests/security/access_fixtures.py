"""The world the access-control walk runs in: two hospitals, their people and agents, and
studies, jobs, rounds and models of each scope (shared, A only, B only).

Every object is made through the services, as in production. Identifiers that belong to
one institution alone (names, digests, hostnames, links) are collected as patterns, so the
walk can check that no principal of the other institution ever sees them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from platform_world import trained
from world import agent_make, job_make, job_run, person_make, study_approve_all, study_make

from accounts.models import Role
from institutions.models import AgentCredential, EnrollmentToken, Institution
from institutions.services import credential_revoke, enrollment_token_create, institution_create
from queries.models import Query
from queries.services import query_create
from studies.models import Study
from training.blobs import blob_store
from training.models import Job, ModelVersion, Round, Update
from training.services import UpdateMeta, round_aggregate, update_submit

MISSING_ID = 987_654
SIDES = ("A", "B")


@dataclass(frozen=True)
class Principal:
    """Who sends a request: anonymous, a person with a role, or an agent."""

    name: str
    role: Role | None = None  # people only
    agent: bool = False
    active: bool = True  # False: a revoked agent credential
    side: str | None = None  # "A" or "B": a data owner's or an agent's institution
    institution_id: int | None = None
    authorization: str | None = None  # the Authorization header it sends
    session_key: str | None = None  # a person's signed-in console session

    @property
    def is_person(self) -> bool:
        return self.role is not None

    @property
    def sees_every_institution(self) -> bool:
        return self.role in (Role.COORDINATOR, Role.OBSERVER)


@dataclass(frozen=True)
class Variant:
    """One object to put in a URL: its ids and the institutions it belongs to."""

    label: str
    kwargs: Mapping[str, int]
    owners: frozenset[str]  # {"A"}, {"B"}, {"A", "B"}; empty: no such object


@dataclass
class Side:
    """One hospital and what belongs to it."""

    institution: Institution
    credential: AgentCredential
    key: str
    token: EnrollmentToken
    study: Study  # only this hospital takes part
    job: Job
    round: Round
    version: ModelVersion
    query: Query
    hostnames: list[str] = field(default_factory=list)
    credential_ids: list[int] = field(default_factory=list)
    shared_update: Update | None = None  # its answer to round 1 of the shared job


@dataclass
class World:
    sides: dict[str, Side]
    shared_study: Study
    shared_job: Job
    shared_round: Round
    shared_version: ModelVersion
    shared_query: Query
    revoked_credential: AgentCredential  # A's
    revoked_key: str
    principals: list[Principal]

    def variants(self, kind: str) -> list[Variant]:
        """The objects of ``kind`` to put in a URL: each scope's, and one that does not exist."""
        a, b = self.sides["A"], self.sides["B"]
        missing = Variant("missing", _missing_kwargs(kind), frozenset())
        if kind == "token":
            return [
                Variant("A", {"institution_id": a.institution.pk, "token_id": a.token.pk}, frozenset("A")),
                Variant("B", {"institution_id": b.institution.pk, "token_id": b.token.pk}, frozenset("B")),
                # B's token under A's institution: not A's token, so no one finds it there.
                Variant(
                    "A-with-B-token",
                    {"institution_id": a.institution.pk, "token_id": b.token.pk},
                    frozenset(),
                ),
                missing,
            ]
        if kind == "query":
            return [
                Variant("AB", _query_kwargs(self.shared_query), frozenset(SIDES)),
                Variant("A", _query_kwargs(a.query), frozenset("A")),
                Variant("B", _query_kwargs(b.query), frozenset("B")),
                # B's query under A's study: not A's study's query, so no one finds it there.
                Variant("A-with-B-query", {"study_id": a.study.pk, "query_id": b.query.pk}, frozenset()),
                missing,
            ]
        if kind in ("institution", "credential"):
            objects = {"A": _object_of(a, kind), "B": _object_of(b, kind)}
            singles = [_single(kind, side, pk) for side, pk in objects.items()]
            if kind == "credential":
                retired = {"credential_id": self.revoked_credential.pk}
                singles.append(Variant("A-revoked", retired, frozenset("A")))
            return [*singles, missing]
        shared = {"study": self.shared_study, "job": self.shared_job, "round": self.shared_round}
        shared_pk = shared[kind].pk if kind in shared else self.shared_version.pk
        return [
            Variant("AB", {f"{kind}_id": shared_pk}, frozenset(SIDES)),
            _single(kind, "A", _object_of(a, kind)),
            _single(kind, "B", _object_of(b, kind)),
            missing,
        ]

    def ids(self) -> dict[str, int]:
        """Ids to fill query-string templates such as ``?institution={institution_b}``."""
        values: dict[str, int] = {}
        for side_name, side in self.sides.items():
            suffix = side_name.lower()
            values[f"institution_{suffix}"] = side.institution.pk
            values[f"study_{suffix}"] = side.study.pk
            values[f"job_{suffix}"] = side.job.pk
        return values

    def secrets_of(self, side_name: str, *, with_name: bool) -> list[re.Pattern[str]]:
        """What only ``side_name`` may see: its own study, job, model, agents and links.

        ``with_name``: also the institution's name (the other side sees it legitimately
        wherever a shared study lists its participants)."""
        side = self.sides[side_name]
        literal = [
            side.study.name,
            side.study.description,
            side.version.sha256,
            side.version.sha256[:12],
            *side.hostnames,
        ]
        if side.shared_update is not None:  # its own update and metrics in the shared job
            update = side.shared_update
            literal += [
                update.sha256,
                update.sha256[:12],
                *(repr(value) for value in update.metrics.values()),
            ]
        if with_name:
            literal.append(side.institution.name)
        patterns = [re.escape(text) for text in literal]
        for credential_id in side.credential_ids:
            patterns += [
                rf"\bagent:{credential_id}\s*[\"<]",  # an actor, as the audit trail shows it
                rf'"credential_id":\s*{credential_id}\b',
            ]
        patterns += [
            rf"/credentials/{side.credential.pk}/",  # the revoke link (a revoked one has none)
            rf"/studies/{side.study.pk}/",
            rf'"study_id":\s*{side.study.pk}\b',
            rf"/jobs/{side.job.pk}/",
            rf'"job_id":\s*{side.job.pk}\b',
            rf"/models/{side.version.pk}/",
            rf'"round_id":\s*{side.round.pk}\b',
        ]
        if with_name:
            patterns.append(rf"/institutions/{side.institution.pk}/")
        return [re.compile(pattern) for pattern in patterns]


def _query_kwargs(query: Query) -> dict[str, int]:
    return {"study_id": query.study_id, "query_id": query.pk}


def _query(study: Study) -> Query:
    """A query of ``study`` awaiting its data owners' decisions."""
    return query_create(study=study, spec={"kind": "columns"}, actor="user:setup")


def _missing_kwargs(kind: str) -> dict[str, int]:
    if kind == "token":
        return {"institution_id": MISSING_ID, "token_id": MISSING_ID}
    if kind == "query":
        return {"study_id": MISSING_ID, "query_id": MISSING_ID}
    return {f"{kind}_id": MISSING_ID}


def _single(kind: str, side: str, pk: int) -> Variant:
    return Variant(side, {f"{kind}_id": pk}, frozenset(side))


def _object_of(side: Side, kind: str) -> int:
    objects = {
        "institution": side.institution.pk,
        "credential": side.credential.pk,
        "study": side.study.pk,
        "job": side.job.pk,
        "round": side.round.pk,
        "version": side.version.pk,
    }
    return objects[kind]


def _study(name: str, institutions: list[Institution], seed: int) -> Study:
    """A study everyone approved; a distinct seed gives each study its own initial model."""
    study = study_make(name, institutions, description=f"Cohort notes of {name}", seed=seed)
    study_approve_all(study)
    return study


def _running_job(study: Study, min_updates: int) -> tuple[Job, Round, ModelVersion]:
    """A started job: round 1 open, model version 0 written."""
    job = job_run(job_make(study, num_rounds=2, min_updates=min_updates))
    return job, job.rounds.get(number=1), job.model_versions.get(number=0)


#: Each site's metrics in round 1 of the shared job: distinct values, so that a per-site
#: figure shown to the other site is recognised (the round's combined metrics differ).
SITE_METRICS = {"A": {"local_accuracy": 0.61803399}, "B": {"local_accuracy": 0.71828183}}
SITE_EXAMPLES = {"A": 40, "B": 60}


def _answer_and_aggregate(job: Job, sides: dict[str, Side]) -> tuple[Round, ModelVersion]:
    """Both sites answer round 1 of the shared job; it is aggregated into version 1 (its
    provenance names each site's update) and round 2 opens."""
    round_1 = job.rounds.get(number=1)
    base = job.model_versions.get(number=0)
    for shift, (name, side) in enumerate(sides.items(), start=1):
        meta = UpdateMeta(
            num_examples=SITE_EXAMPLES[name],
            metrics=SITE_METRICS[name],
            base_model_sha256=base.sha256,
            job_id=job.pk,
            round_number=1,
        )
        data = trained(blob_store().read(base.sha256), float(shift))
        result = update_submit(round_id=round_1.pk, credential=side.credential, meta=meta, data=data)
        side.shared_update = result.update
    outcome = round_aggregate(round_id=round_1.pk)
    assert outcome.version_number == 1, "round 1 of the shared job did not aggregate"
    return job.rounds.get(number=2), job.model_versions.get(number=1)


def _enroll(institution: Institution, hostname: str) -> tuple[AgentCredential, str]:
    enrolled = agent_make(institution, hostname=hostname)
    return enrolled.credential, enrolled.key


def _side(name: str, institution_name: str, seed: int) -> Side:
    institution = institution_create(name=institution_name, actor="user:setup")
    hostname = f"agent-{name.lower()}.{institution_name.split()[0].lower()}.example"
    credential, key = _enroll(institution, hostname)
    token = enrollment_token_create(institution=institution, actor="user:setup").record
    study = _study(f"{institution_name.split()[0]}-only cohort", [institution], seed)
    job, round_, version = _running_job(study, min_updates=1)
    return Side(
        institution=institution,
        credential=credential,
        key=key,
        token=token,
        study=study,
        job=job,
        round=round_,
        version=version,
        query=_query(study),
        hostnames=[hostname],
        credential_ids=[credential.pk],
    )


def _person(
    label: str, username: str, role: Role, side_name: str | None, sides: dict[str, Side]
) -> Principal:
    """A person with a role (a data owner: of ``side_name``), an API token and a console session."""
    side = sides[side_name] if side_name else None
    created = person_make(username, role, side.institution if side else None, actor="user:setup")
    browser = Client()
    browser.force_login(get_user_model().objects.get(pk=created.user.pk))
    return Principal(
        name=label,
        role=role,
        side=side_name,
        institution_id=side.institution.pk if side else None,
        authorization=f"Token {created.token}",
        session_key=browser.cookies[settings.SESSION_COOKIE_NAME].value,
    )


def build_world() -> World:
    """Hospitals A and B, each with an enrolled agent and a study, job and model of its own
    (round 1 open, version 0); a shared study of both whose job aggregated round 1 from
    both sites' updates (version 1, round 2 open); A's revoked agent; every principal."""
    sides = {"A": _side("A", "Alpha General", seed=11), "B": _side("B", "Bravo Clinic", seed=22)}
    shared_study = _study("Shared sepsis cohort", [sides["A"].institution, sides["B"].institution], seed=33)
    shared_job, _, _ = _running_job(shared_study, min_updates=2)
    shared_round, shared_version = _answer_and_aggregate(shared_job, sides)
    revoked, revoked_key = _enroll(sides["A"].institution, "agent-a-retired.alpha.example")
    credential_revoke(credential_id=revoked.pk, actor="user:setup")
    sides["A"].hostnames.append(revoked.hostname)
    sides["A"].credential_ids.append(revoked.pk)
    digests = {
        *shared_job.model_versions.values_list("sha256", flat=True),
        *(side.version.sha256 for side in sides.values()),
        *(side.shared_update.sha256 for side in sides.values() if side.shared_update),
    }
    assert len(digests) == 6, "each study's initial model must differ, or the leak check is blind"
    assert not get_user_model().objects.filter(is_staff=True).exists()
    principals = [
        Principal("anonymous"),
        _person("coordinator", "carol", Role.COORDINATOR, None, sides),
        _person("observer", "oscar", Role.OBSERVER, None, sides),
        _person("owner-a", "alice", Role.DATA_OWNER, "A", sides),
        _person("owner-b", "bob", Role.DATA_OWNER, "B", sides),
        *(
            Principal(
                f"agent-{name.lower()}",
                agent=True,
                side=name,
                institution_id=side.institution.pk,
                authorization=f"Agent {side.key}",
            )
            for name, side in sides.items()
        ),
        Principal(
            "agent-a-revoked",
            agent=True,
            active=False,
            side="A",
            institution_id=sides["A"].institution.pk,
            authorization=f"Agent {revoked_key}",
        ),
    ]
    return World(
        sides=sides,
        shared_study=shared_study,
        shared_job=shared_job,
        shared_round=shared_round,
        shared_query=_query(shared_study),
        shared_version=shared_version,
        revoked_credential=revoked,
        revoked_key=revoked_key,
        principals=principals,
    )
