"""Federated queries: asked by a coordinator, approved by each site's data owner, answered
by each site's agent under its own policy, combined here (``federation.analytics.queries``).

A query asks every site that approved its study. Each data owner then decides about the
query itself, as they did about the study: a decline fails it. An agent is handed the query
once its own data owner has approved it (:func:`query_awaiting`) and answers with counts and
sums, or refuses with its reason, which fails the query. When every site has answered, the
answers are combined and the result stored. Under secure aggregation the sites first send a
key and their minimum cell count, then their masked vectors; the server unmasks only the
total and suppresses its cells below the largest minimum. A noised query's epsilon is
charged to each answering site's privacy ledger (:class:`QuerySpend`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.selectors import Scope
from audit.services import audit_record
from federation.analytics.queries import (
    Query as QuerySpec,
)
from federation.analytics.queries import (
    QueryKind,
    answer_of_vector,
    combine_answers,
    combine_total,
    parse_answer,
    parse_query,
    parse_site_metrics,
    vector_length,
)
from federation.data import DataSchema
from federation.data.text import TextSchema, parse_data_schema
from federation.errors import FederationError
from federation.privacy.secure_sum import from_text, masked_length, unmasked_sum
from fedplatform.errors import Conflict, InvalidInput, NotFound
from fedplatform.secure_sum_steps import SecurePhase, masked_of, public_key_of, refusal_of
from institutions.models import AgentCredential, Institution
from queries.models import Query, QuerySite, QuerySpend, QueryState
from studies.agreement import secure_promised
from studies.models import Decision, Study
from studies.selectors import study_get
from training.models import ModelVersion

#: The fewest sites a secure sum hides each one's answer among.
MIN_SECURE_SITES = 3


def _schema(study: Study) -> DataSchema:
    return _tabular(study.data_schema)


def _tabular(data_schema: Mapping[str, object]) -> DataSchema:
    schema = parse_data_schema(dict(data_schema))
    if isinstance(schema, TextSchema):
        raise InvalidInput("a text study has no columns to query; its models can still be evaluated by jobs")
    return schema


def query_spec(query: Query) -> QuerySpec:
    """The stored question, parsed again against the schema it was asked under."""
    return parse_query(query.spec, _tabular(query.data_schema))


def _num_classes(study: Study) -> int:
    classes = study.model_config.get("num_classes") or len(_schema(study).classes or ())
    return int(classes) if classes else 0


def _check_versions(study: Study, spec: Mapping[str, object]) -> dict[str, object]:
    """An evaluation names versions of the study's own jobs, oldest first; its class count
    is the study's."""
    versions = spec.get("versions")
    if not isinstance(versions, list):
        return dict(spec)
    ids = [v for v in versions if isinstance(v, int) and not isinstance(v, bool)]
    known = set(ModelVersion.objects.filter(job__study=study, pk__in=ids).values_list("pk", flat=True))
    unknown = [v for v in versions if v not in known]
    if unknown:
        raise InvalidInput(
            f"versions {unknown} are not model versions of this study's jobs: name them by their id "
            "(the `id` of GET /api/v1/jobs/<job>/models/), not their number"
        )
    classes = _num_classes(study)
    if classes < 2:
        raise InvalidInput("only a classification study's models can be evaluated this way")
    return {**spec, "versions": sorted(set(ids)), "num_classes": classes}


def version_labels(version_ids: list[int]) -> dict[str, str]:
    """How people name model versions: "job 3, version 2" (ids are the API's)."""
    versions = ModelVersion.objects.filter(pk__in=version_ids)
    return {str(v.pk): f"job {v.job_id}, version {v.number}" for v in versions}


def _title(parsed: QuerySpec) -> str:
    if parsed.kind is not QueryKind.EVALUATION:
        return parsed.describe()
    labels = version_labels(list(parsed.versions))
    return "evaluation: " + "; ".join(labels.get(str(v), str(v)) for v in parsed.versions)


@transaction.atomic
def query_create(
    *, study: Study, spec: Mapping[str, object], actor: str, secure_aggregation: bool | None = None
) -> Query:
    """Ask every site that approved ``study``; each data owner must then approve the query."""
    schema = _schema(study)
    if spec.get("kind") == QueryKind.EVALUATION:
        spec = _check_versions(study, spec)
    try:
        parsed = parse_query(dict(spec), schema)
    except FederationError as error:
        raise InvalidInput(f"query: {error}") from None
    sites = list(study.participants.filter(decision=Decision.APPROVED).select_related("institution"))
    if not sites:
        raise Conflict("no site has approved the study: no one could answer", code="not_approved")
    promised = secure_promised(study)
    secure = (
        _secure_by_default(parsed, promised, len(sites)) if secure_aggregation is None else secure_aggregation
    )
    secure = secure and parsed.secure_supported
    if promised and not secure:
        raise InvalidInput(
            f"the study promises secure aggregation, and a {parsed.kind.value} query cannot be summed "
            "securely (each site's answer would be seen)",
            code="secure_promised",
        )
    if secure_aggregation and not parsed.secure_supported:
        raise InvalidInput(
            f"a {parsed.kind.value} query cannot be summed securely", code="secure_unsupported"
        )
    if secure and len(sites) < MIN_SECURE_SITES:
        # With two, each site's data owner would read the other's answer as total minus own.
        raise InvalidInput(f"a secure sum needs at least {MIN_SECURE_SITES} sites", code="too_few_sites")
    if secure and _masked_body_bytes(parsed) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
        raise InvalidInput(
            "a site's masked answer to this query would exceed the largest body the server takes; "
            "ask about fewer versions, bins or columns at once",
            code="too_large",
        )
    query = Query.objects.create(
        study=study,
        spec=parsed.to_json(),
        data_schema=study.data_schema,
        title=_title(parsed),
        secure_aggregation=secure,
        phase=SecurePhase.KEYS if secure else "",
        requested_by=actor,
        deadline_at=timezone.now() + timedelta(seconds=settings.FEDHEALTH_QUERY_DEADLINE_SECONDS),
    )
    QuerySite.objects.bulk_create([QuerySite(query=query, institution=p.institution) for p in sites])
    audit_record(
        actor=actor,
        kind="query.requested",
        details={
            "study_id": study.pk,
            "query_id": query.pk,
            "query": parsed.to_json(),
            "secure_aggregation": secure,
        },
    )
    return query


def _secure_by_default(parsed: QuerySpec, promised: bool, sites: int) -> bool:
    """As the study's privacy settings say; an evaluation, whose score histograms come close
    to each held-out row's label and score, is summed securely wherever it can be (each
    site then sends only its own scalar figures in the clear)."""
    return promised or (parsed.kind is QueryKind.EVALUATION and sites >= MIN_SECURE_SITES)


def _masked_body_bytes(parsed: QuerySpec) -> int:
    """The size of a site's masked answer in its JSON body: base64 of 8-byte lanes."""
    return masked_length(vector_length(parsed)) * 8 * 4 // 3 + 100


def _open_locked(query_id: int) -> Query:
    # Only the query's row: the study's stays free for its own writers (the data agreement
    # locks the study, then its request; a query never waits for those).
    query = Query.objects.select_for_update(of=("self",)).filter(pk=query_id).select_related("study").first()
    if query is None:
        raise NotFound("no such query")
    if query.state != QueryState.OPEN or query.deadline_at <= timezone.now():
        raise Conflict("the query is no longer open", code="not_open")
    return query


@transaction.atomic
def query_decide(*, query: Query, institution: Institution, approve: bool, actor: str) -> QuerySite:
    """A data owner approves or declines a query for their own institution; a decline fails it."""
    query = _open_locked(query.pk)
    site = query.sites.filter(institution=institution).first()
    if site is None:
        raise NotFound(f"{institution.name} is not asked by this query")
    if site.decision != Decision.PENDING:
        raise Conflict("this institution has decided about this query already", code="decided")
    site.decision = Decision.APPROVED if approve else Decision.DECLINED
    site.decided_by = actor
    site.decided_at = timezone.now()
    site.save(update_fields=["decision", "decided_by", "decided_at"])
    audit_record(
        actor=actor,
        kind="query.approved" if approve else "query.declined",
        institution=institution,
        details={"study_id": query.study_id, "query_id": query.pk},
    )
    if not approve:
        _fail(query, f"declined by the data owner of {institution.name}")
    return site


def _awaits(query: Query, site: QuerySite) -> bool:
    """Whether the site's agent still owes the query a step."""
    if site.decision != Decision.APPROVED or site.refusal or site.answer is not None:
        return False
    if not query.secure_aggregation:
        return True
    if query.phase == SecurePhase.KEYS:
        return not site.public_key
    return bool(site.public_key) and not site.masked


def query_awaiting(*, credential: AgentCredential) -> Query | None:
    """The oldest open query (or step of one) this institution's agent owes an answer."""
    sites = (
        QuerySite.objects.filter(
            institution_id=credential.institution_id,
            decision=Decision.APPROVED,
            query__state=QueryState.OPEN,
            query__deadline_at__gt=timezone.now(),
        )
        .select_related("query__study")
        .order_by("query_id")
    )
    return next((site.query for site in sites if _awaits(site.query, site)), None)


def secure_step(query: Query) -> dict[str, object] | None:
    """The secure step a task carries: the phase and, to mask, every site's key."""
    if not query.secure_aggregation:
        return None
    step: dict[str, object] = {"phase": query.phase}
    if query.phase == SecurePhase.MASK:
        step["roster"] = {str(s.institution_id): s.public_key for s in query.sites.all() if s.public_key}
    return step


def _record_step(query: Query, site: QuerySite, body: Mapping[str, object]) -> None:
    spec = query_spec(query)
    if not query.secure_aggregation:
        if "answer" not in body:
            raise Conflict("this query asks for answer (or refused)", code="wrong_phase")
        try:
            site.answer = parse_answer(spec, body["answer"])
        except FederationError as error:
            raise InvalidInput(f"answer: {error}") from None
    elif query.phase == SecurePhase.KEYS:
        site.public_key = public_key_of(body, asks="public_key and min_count")
        min_count = body.get("min_count")
        if not isinstance(min_count, int) or isinstance(min_count, bool) or min_count < 1:
            raise InvalidInput("min_count must be the site's minimum cell count, a positive integer")
        site.min_count = min_count
    else:
        site.masked = masked_of(body, vector_length(spec))
        site.site_metrics = _site_metrics(spec, body)


def _site_metrics(spec: QuerySpec, body: Mapping[str, object]) -> dict[str, object] | None:
    """Beside its masked counts, an evaluating site sends its own figures (scalars only)."""
    if spec.kind is not QueryKind.EVALUATION:
        if "metrics" in body:
            raise InvalidInput("metrics go only with an evaluation's masked counts")
        return None
    if "metrics" not in body:
        raise InvalidInput("an evaluation's masked counts come with the site's own metrics")
    try:
        return parse_site_metrics(spec, body["metrics"])
    except FederationError as error:
        raise InvalidInput(f"metrics: {error}") from None


@transaction.atomic
def query_answer_record(
    *, credential: AgentCredential, query_id: int, body: Mapping[str, object]
) -> QuerySite:
    """Record one site's answer (or step, or refusal); the last one finishes the query."""
    query = _open_locked(query_id)
    site = query.sites.filter(institution_id=credential.institution_id).select_related("institution").first()
    if site is None or site.decision != Decision.APPROVED:
        raise Conflict("this site's data owner has not approved this query", code="not_approved")
    if not _awaits(query, site):
        raise Conflict("this site has answered this step already", code="answered")
    refusal = refusal_of(body)
    if refusal is not None:
        site.refusal = refusal
    else:
        _record_step(query, site, body)
    site.answered_at = timezone.now()
    site.save()
    if refusal is None:
        _charge_noise(query, site)
    # Recorded before the query moves on, so the trail reads answer, then result; the
    # query's row is locked already and nothing after this waits for another's lock.
    audit_record(
        actor=f"agent:{credential.pk}",
        kind="query.refused" if refusal else "query.answered",
        institution=site.institution,
        details={
            "study_id": query.study_id,
            "query_id": query.pk,
            "step": query.phase or "answer",
            **({"reason": refusal} if refusal else {}),
        },
    )
    _advance(query)
    return site


def _charge_noise(query: Query, site: QuerySite) -> None:
    """A noised answer spends the site's epsilon once it is sent, whatever becomes of the
    query (the agent's own record counts it the same way)."""
    epsilon = query.spec.get("epsilon")
    sent = site.answer is not None or bool(site.masked)
    if isinstance(epsilon, int | float) and sent:
        QuerySpend.objects.get_or_create(
            query=query, institution_id=site.institution_id, defaults={"epsilon": epsilon}
        )


def _advance(query: Query) -> None:
    sites = list(query.sites.select_related("institution"))
    refusals = [f"{s.institution.name}: {s.refusal}" for s in sites if s.refusal]
    if refusals:
        _fail(query, "refused by " + "; ".join(refusals))
        return
    if any(s.decision != Decision.APPROVED or _awaits(query, s) for s in sites):
        return
    if query.secure_aggregation and query.phase == SecurePhase.KEYS:
        query.phase = SecurePhase.MASK
        query.save(update_fields=["phase"])
        return
    _finish(query, sites)


def _result(query: Query, sites: list[QuerySite]) -> dict[str, object]:
    spec = query_spec(query)
    if not query.secure_aggregation:
        return combine_answers(spec, {s.institution.name: dict(s.answer or {}) for s in sites})
    length = masked_length(vector_length(spec))
    total = unmasked_sum([from_text(s.masked, length) for s in sites])
    min_count = max(s.min_count or 1 for s in sites)
    # The total is checked as a site's answer is: it must be what real rows could give.
    checked = parse_answer(spec, answer_of_vector(spec, total), secure=True)
    figures = {s.institution.name: dict(s.site_metrics) for s in sites if s.site_metrics is not None}
    result = combine_total(spec, checked, min_count=min_count, site_metrics=figures or None)
    return {**result, "min_count": min_count}


def _finish(query: Query, sites: list[QuerySite]) -> None:
    try:
        result = _result(query, sites)
    except (FederationError, ArithmeticError, ValueError) as error:
        _fail(query, f"the answers do not combine: {error}")
        return
    if "versions" in result:
        result["labels"] = version_labels(list(query.spec["versions"]))
    query.result = result
    query.state = QueryState.COMPLETE
    query.finished_at = timezone.now()
    query.save(update_fields=["result", "state", "finished_at"])
    epsilon = query.spec.get("epsilon")
    audit_record(
        actor="system",
        kind="query.complete",
        details={
            "study_id": query.study_id,
            "query_id": query.pk,
            "sites": len(sites),
            "secure_aggregation": query.secure_aggregation,
            **({"epsilon_per_site": epsilon} if epsilon else {}),
        },
    )


@transaction.atomic
def query_fail(*, query: Query, reason: str) -> None:
    """End an open query that cannot be answered, with the reason."""
    locked = Query.objects.select_for_update().get(pk=query.pk)
    if locked.state == QueryState.OPEN:
        _fail(locked, reason)


def _fail(query: Query, reason: str) -> None:
    query.state = QueryState.FAILED
    query.finished_at = timezone.now()
    query.reason = reason
    query.save(update_fields=["state", "finished_at", "reason"])
    audit_record(
        actor="system",
        kind="query.failed",
        details={"study_id": query.study_id, "query_id": query.pk, "reason": reason},
    )


# --- reading ----------------------------------------------------------------------------


def query_list(*, study: Study) -> QuerySet[Query]:
    return study.queries.prefetch_related("sites__institution").order_by("-pk")


def query_get(*, study: Study, query_id: int) -> Query:
    query = study.queries.prefetch_related("sites__institution").filter(pk=query_id).first()
    if query is None:
        raise NotFound("no such query")
    return query


def scoped_query_get(*, scope: Scope, study_id: int, query_id: int) -> tuple[Study, Query]:
    """The study and its query, if the reader may see the study; one answer for a study out
    of scope, a missing study and a missing query, so that none of them is told apart."""
    try:
        study = study_get(scope=scope, study_id=study_id)
    except NotFound:
        raise NotFound("no such query") from None
    return study, query_get(study=study, query_id=query_id)


def queries_awaiting_decision(*, study: Study, scope: Scope) -> int:
    """Open queries of ``study`` awaiting the reader's institution's decision (data owners)."""
    if not scope.is_data_owner or scope.institution_id is None:
        return 0
    return QuerySite.objects.filter(
        query__study=study,
        query__state=QueryState.OPEN,
        query__deadline_at__gt=timezone.now(),
        institution_id=scope.institution_id,
        decision=Decision.PENDING,
    ).count()


def query_state(query: Query) -> str:
    if query.state == QueryState.OPEN and query.deadline_at <= timezone.now():
        return "expired"
    return str(query.state)


def query_view(*, query: Query, scope: Scope) -> dict[str, object]:
    """A query as the reader may see it: a data owner reads the combined result and its own
    site's part, never another site's answer or refusal."""
    own = scope.institution_id
    sites = [
        {
            "institution": {"id": s.institution_id, "name": s.institution.name},
            "decision": s.decision,
            "answer": _site_state(query, s),
            "refusal": s.refusal if scope.sees_every_institution or s.institution_id == own else "",
        }
        for s in query.sites.all()
    ]
    return {
        "id": query.pk,
        "study": query.study_id,
        "title": query.title,
        "query": query.spec,
        "state": query_state(query),
        "secure_aggregation": query.secure_aggregation,
        "phase": query.phase,
        "requested_by": query.requested_by,
        "requested_at": query.requested_at,
        "deadline_at": query.deadline_at,
        "finished_at": query.finished_at,
        "reason": query.reason if scope.sees_every_institution else _own_reason(query),
        "sites": sites,
        "result": _visible_result(query, scope),
    }


def _own_reason(query: Query) -> str:
    return "the query failed; your site's part is listed below" if query.reason else ""


def _site_state(query: Query, site: QuerySite) -> str:
    if site.refusal:
        return "refused"
    if site.decision != Decision.APPROVED:
        pending = site.decision == Decision.PENDING
        return (
            ("awaiting approval" if query.state == QueryState.OPEN else "not decided")
            if pending
            else "declined"
        )
    if not _awaits(query, site):
        return "answered"
    return "waiting" if query.state == QueryState.OPEN else "not answered"


def _visible_result(query: Query, scope: Scope) -> dict[str, object] | None:
    if query.result is None:
        return None
    if scope.sees_every_institution:
        return dict(query.result)
    names = {s.institution.name for s in query.sites.all() if s.institution_id == scope.institution_id}
    return _only_sites(dict(query.result), names)


def _only_sites(result: dict[str, object], names: set[str]) -> dict[str, object]:
    """The result with every per-site part but the reader's own left out."""
    trimmed: dict[str, object] = {}
    for key, value in result.items():
        if key == "sites" and isinstance(value, dict):
            trimmed[key] = {name: part for name, part in value.items() if name in names}
        elif key == "versions" and isinstance(value, dict):
            trimmed[key] = {v: _only_sites(dict(part), names) for v, part in value.items()}
        else:  # the combined figures, and the log-rank test over every site
            trimmed[key] = value
    return trimmed
