"""Federated queries in the console: a study's queries and the form to ask one, each query's
page with its sites' decisions and answers, its result as tables and plots, and a data
owner's approval."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from accounts.selectors import Scope
from console.access import actor_of, console_view, require_coordinator, require_data_owner, scope_of
from console.forms import DecisionForm
from console.pages import page
from console.query_tables import CHARTED_KINDS, result_tables
from federation.analytics.queries import QueryKind, schema_levels
from federation.data.text import TextSchema, parse_data_schema
from fedplatform.errors import ServiceError
from institutions.selectors import institution_get
from queries import services
from studies.models import Study
from studies.selectors import study_get
from training.models import ModelVersion

#: The newest queries a study's page lists (the API pages through all of them).
MAX_LISTED_QUERIES = 100

KIND_LABELS = {
    QueryKind.COLUMNS: "Counts, means and spread",
    QueryKind.HISTOGRAM: "Histogram",
    QueryKind.QUANTILES: "Quantiles",
    QueryKind.CROSS_TABLE: "Cross-table",
    QueryKind.CORRELATION: "Correlation matrix",
    QueryKind.SURVIVAL: "Kaplan–Meier survival",
    QueryKind.EVALUATION: "Evaluate model versions",
}


def parse_numbers(text: str) -> list[float]:
    """Numbers typed as ``0, 10, 20`` or as a range ``start:stop:step`` (stop included)."""
    text = text.strip()
    if text.count(":") == 2:
        start, stop, step = (float(part) for part in text.split(":"))
        if step <= 0 or stop <= start or (stop - start) / step > 10_000:
            raise ValueError("a range start:stop:step needs start < stop and a step > 0")
        count = round((stop - start) / step)
        return [start + i * step for i in range(count + 1)]
    return [float(part) for part in text.replace(";", ",").split(",") if part.strip()]


class QueryForm(forms.Form):
    kind = forms.ChoiceField(choices=[(k.value, label) for k, label in KIND_LABELS.items()])
    columns = forms.MultipleChoiceField(required=False, help_text="numeric columns (none: all)")
    column = forms.ChoiceField(required=False)
    edges = forms.CharField(
        required=False, help_text="bin edges: 0, 10, 20, 50, or a range 0:100:10 (quantiles: fine bins)"
    )
    probabilities = forms.CharField(required=False, initial="0.25, 0.5, 0.75")
    rows = forms.ChoiceField(required=False)
    by = forms.ChoiceField(required=False)
    time = forms.ChoiceField(required=False)
    event = forms.ChoiceField(
        required=False, help_text="0/1, or a two-class label (the second class: the event)"
    )
    time_step = forms.FloatField(required=False, min_value=0.0, help_text="round times up to this grid")
    versions = forms.MultipleChoiceField(required=False, widget=forms.CheckboxSelectMultiple)
    epsilon = forms.FloatField(required=False, min_value=0.0, help_text="Laplace noise on each count (DP)")
    secure_aggregation = forms.BooleanField(required=False)

    def __init__(self, *args: object, study: Study, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        schema = parse_data_schema(dict(study.data_schema))
        levels = {} if isinstance(schema, TextSchema) else schema_levels(schema)
        numeric = [(n, n) for n, kind in levels.items() if kind is None]
        categorical = [(n, n) for n, kind in levels.items() if kind]
        self._choose("columns", numeric)
        self._choose("column", numeric)
        self._choose("time", numeric)
        self._choose("event", [(n, n) for n, kind in levels.items() if kind is None or len(kind) == 2])
        self._choose("rows", categorical)
        self._choose("by", categorical)
        versions = ModelVersion.objects.filter(job__study=study).order_by("-job_id", "-number")[:50]
        self._choose("versions", [(str(v.pk), f"job {v.job_id}, version {v.number}") for v in versions])

    def _choose(self, name: str, choices: list[tuple[str, str]]) -> None:
        field = self.fields[name]
        assert isinstance(field, forms.ChoiceField)
        field.choices = choices

    def spec(self) -> dict[str, object]:
        """The API's query object from the fields the chosen kind reads."""
        data = self.cleaned_data
        kind = QueryKind(data["kind"])
        spec: dict[str, object] = {"kind": kind.value}
        try:
            if kind in (QueryKind.COLUMNS, QueryKind.CORRELATION) and data["columns"]:
                spec["columns"] = list(data["columns"])
            if kind in (QueryKind.HISTOGRAM, QueryKind.QUANTILES):
                spec.update(column=data["column"], edges=parse_numbers(data["edges"]))
            if kind is QueryKind.QUANTILES:
                spec["probabilities"] = parse_numbers(data["probabilities"] or "0.25, 0.5, 0.75")
        except ValueError as error:
            raise forms.ValidationError(f"numbers: {error}") from None
        if kind is QueryKind.CROSS_TABLE:
            spec.update(rows=data["rows"], by=data["by"])
        if kind is QueryKind.SURVIVAL:
            spec.update(time=data["time"], event=data["event"])
            if data["time_step"]:
                spec["time_step"] = data["time_step"]
        if kind is QueryKind.EVALUATION:
            spec["versions"] = [int(v) for v in data["versions"]]
        if data["epsilon"]:
            spec["epsilon"] = data["epsilon"]
        return spec


@console_view
@require_http_methods(["GET", "POST"])
def query_list_view(request: HttpRequest, study_id: int) -> HttpResponseBase:
    """The study's queries; coordinators ask a new one here."""
    scope = scope_of(request)
    if request.method == "POST":
        require_coordinator(scope)  # the role before the object: 403, not 404
    study = study_get(scope=scope, study_id=study_id)
    form = QueryForm(request.POST or None, study=study)
    if request.method == "POST" and form.is_valid():
        try:
            query = services.query_create(
                study=study,
                spec=form.spec(),
                actor=actor_of(request),
                secure_aggregation=form.cleaned_data["secure_aggregation"] or None,
            )
        except forms.ValidationError as error:
            form.add_error(None, error)
        except ServiceError as error:
            form.add_error(None, error.message)
        else:
            messages.success(request, "Query asked. Each site's data owner must now approve it.")
            return redirect("console:query-detail", study_id=study.pk, query_id=query.pk)
    return _list_page(request, scope, study, form)


def _list_page(request: HttpRequest, scope: Scope, study: Study, form: QueryForm) -> HttpResponse:
    latest = services.query_list(study=study)[:MAX_LISTED_QUERIES]
    queries = [services.query_view(query=q, scope=scope) for q in latest]
    context = {"study": study, "queries": queries, "form": form, "kind_labels": KIND_LABELS}
    return page(request, "console/queries/list.html", context, section="studies")


@console_view
@require_safe
def query_detail(request: HttpRequest, study_id: int, query_id: int) -> HttpResponse:
    scope = scope_of(request)
    study, query = services.scoped_query_get(scope=scope, study_id=study_id, query_id=query_id)
    view = services.query_view(query=query, scope=scope)
    own = next((s for s in view["sites"] if s["institution"]["id"] == scope.institution_id), None)  # type: ignore[attr-defined]
    kind = str(view["query"]["kind"])  # type: ignore[index]
    result = view["result"]
    tables, notes = result_tables(kind, result, view["query"]) if isinstance(result, dict) else ([], [])  # type: ignore[arg-type]
    context = {
        "study": study,
        "query": view,
        "own_site": own,
        "result": result,
        "tables": tables,
        "notes": notes,
        "charted": bool(result) and kind in CHARTED_KINDS,
    }
    return page(request, "console/queries/detail.html", context, section="studies")


@console_view
@require_POST
def query_decide_view(request: HttpRequest, study_id: int, query_id: int) -> HttpResponseBase:
    scope = scope_of(request)
    institution_id = require_data_owner(scope)
    study, query = services.scoped_query_get(scope=scope, study_id=study_id, query_id=query_id)
    form = DecisionForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose approve or decline.")
        return redirect("console:query-detail", study_id=study.pk, query_id=query.pk)
    institution = institution_get(scope=scope, institution_id=institution_id)
    approve = form.cleaned_data["decision"] == "approve"
    try:
        services.query_decide(query=query, institution=institution, approve=approve, actor=actor_of(request))
    except ServiceError as error:
        messages.error(request, error.message)
    else:
        verb = "approved" if approve else "declined"
        messages.success(request, f"{institution.name} {verb} the query; its agent answers it next.")
    return redirect("console:query-detail", study_id=study.pk, query_id=query.pk)
