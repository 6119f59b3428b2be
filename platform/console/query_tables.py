"""A query's result as the console's tables: one caption, headings and rows of text each.

Suppressed cells read "suppressed" at a site; a combined cell some site suppressed is a
lower bound and reads "≥ n". Long survival tables keep every step in the chart and the API,
and show the first :data:`MAX_TABLE_ROWS` steps here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

MAX_TABLE_ROWS = 60
#: The kinds whose result the page also draws (console/query.js).
CHARTED_KINDS = frozenset({"histogram", "quantiles", "survival", "evaluation"})

Json = Mapping[str, object]


@dataclass
class Table:
    caption: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)


def number(value: object, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "–"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1e4 else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)


def _cell(count: object, suppressed: object, combined: bool) -> str:
    if not suppressed:
        return number(count)
    return f"≥ {number(count)}" if combined else "suppressed"


def _parts(result: Json) -> list[tuple[str, Json, bool]]:
    """(name, part, combined?) for the combined result and each site's."""
    sites = result.get("sites") or {}
    assert isinstance(sites, Mapping)
    return [("Combined", result["combined"], True), *((str(n), p, False) for n, p in sites.items())]


def result_tables(kind: str, result: Json, spec: Json) -> tuple[list[Table], list[str]]:
    """The tables of ``result`` and the notes under them."""
    maker = _MAKERS[kind]
    return maker(result, spec)


def _columns(result: Json, spec: Json) -> tuple[list[Table], list[str]]:
    tables = []
    for name, part, _ in _parts(result):
        table = Table(name, ["Column", "Count", "Missing", "Mean", "Standard deviation"])
        for column, stats in part.items():
            assert isinstance(stats, Mapping)
            hidden = stats.get("suppressed") and not stats.get("count")
            table.rows.append(
                [
                    str(column),
                    "suppressed" if hidden else number(stats["count"]),
                    number(stats["missing"]),
                    number(stats["mean"]),
                    number(stats["std"]),
                ]
            )
        tables.append(table)
    return tables, ["A column with fewer values than a site's minimum is sent by that site without its sums."]


def _bins(result: Json, spec: Json) -> tuple[list[Table], list[str]]:
    edges = list(spec["edges"])  # type: ignore[call-overload]
    parts = _parts(result)
    table = Table("Counts per bin", ["Bin", *(name for name, _, _ in parts)])
    for i in range(len(edges) - 1):
        row = [f"[{number(edges[i])}, {number(edges[i + 1])}{']' if i == len(edges) - 2 else ')'}"]
        for _, part, combined in parts:
            row.append(_cell(part["counts"][i], part["suppressed"][i], combined))  # type: ignore[index]
        table.rows.append(row)
    tables = [table]
    quantiles = result["combined"].get("quantiles")  # type: ignore[attr-defined]
    if quantiles:
        bounds = Table("Quantiles (within one fine bin)", ["Probability", "Lower bound", "Upper bound"])
        bounds.rows = [[number(q["probability"]), number(q["lower"]), number(q["upper"])] for q in quantiles]
        tables.insert(0, bounds)
    notes = [
        "A cell below a site's minimum count is suppressed there; the combined cell is then a lower bound."
    ]
    if spec.get("epsilon"):
        notes.append(
            f"Each site added Laplace noise of scale 1/{spec['epsilon']} to each count (epsilon-DP)."
        )
    return tables, notes


def _cross_table(result: Json, spec: Json) -> tuple[list[Table], list[str]]:
    row_levels, by_levels = list(spec["row_levels"]), list(spec["by_levels"])  # type: ignore[call-overload]
    tables = []
    for name, part, combined in _parts(result):
        table = Table(f"{name}: {spec['rows']} by {spec['by']}", [str(spec["rows"]), *map(str, by_levels)])
        for i, level in enumerate(row_levels):
            counts, marks = part["counts"], part["suppressed"]
            cells = [_cell(counts[i][j], marks[i][j], combined) for j in range(len(by_levels))]  # type: ignore[index]
            table.rows.append([str(level), *cells])
        tables.append(table)
    return tables, ["Only declared levels are counted; a suppressed cell is sent as 0 and marked."]


def _correlation(result: Json, spec: Json) -> tuple[list[Table], list[str]]:
    tables = []
    for name, part, _ in _parts(result):
        columns = list(part["columns"])  # type: ignore[call-overload]
        table = Table(f"{name} ({part['count']} complete rows)", ["", *columns])
        matrix = part.get("matrix") or []
        for column, row in zip(columns, matrix, strict=False):  # type: ignore[call-overload]
            table.rows.append([column, *(number(v, 3) for v in row)])
        tables.append(table)
    return tables, ["Pearson correlations over the rows where every column is present."]


def _survival(result: Json, spec: Json) -> tuple[list[Table], list[str]]:
    combined = result["combined"]
    assert isinstance(combined, Mapping)
    table = Table(
        "Combined Kaplan–Meier estimate", ["Time", "At risk", "Events", "Survival", "95% band", "Merged"]
    )
    times = list(combined["times"])
    for i in range(min(len(times), MAX_TABLE_ROWS)):
        band = f"{number(combined['lower'][i], 3)} – {number(combined['upper'][i], 3)}"
        merged = "yes" if combined["suppressed"][i] else ""
        table.rows.append(
            [
                number(times[i]),
                number(combined["at_risk"][i]),
                number(combined["events"][i]),
                number(combined["survival"][i]),
                band,
                merged,
            ]
        )
    notes = []
    if len(times) > MAX_TABLE_ROWS:
        notes.append(
            f"The first {MAX_TABLE_ROWS} of {len(times)} time steps; the chart and the API have all."
        )
    test = result.get("log_rank")
    if isinstance(test, Mapping):
        notes.append(
            f"Log-rank test between sites: chi² = {number(test['statistic'], 3)} on "
            f"{test['degrees_of_freedom']} degrees of freedom, p = {_p_value(test['p_value'])}."
        )
    notes.append("Each band is the exponential Greenwood 95% interval (as lifelines draws it).")
    notes.append(
        "Times are rounded up to the query's grid; a site merges a step into the next until its "
        "counts reach the site's minimum (marked \u201cmerged\u201d where any site did)."
    )
    return [table], notes


def _p_value(value: object) -> str:
    if not isinstance(value, float):
        return "–"
    return f"{value:.2g}" if value < 1e-3 else f"{value:.4f}"


EVALUATION_COLUMNS = [
    "Rows",
    "Accuracy",
    "Balanced accuracy",
    "Sensitivity",
    "Specificity",
    "ROC AUC",
    "Brier",
]


def _evaluation_row(name: str, metrics: Json) -> list[str]:
    auc = number(metrics.get("roc_auc"))
    if metrics.get("roc_auc_bound") is not None:
        auc += f" ± {number(metrics['roc_auc_bound'], 4)}"
    keys = ("accuracy", "balanced_accuracy", "sensitivity", "specificity")
    return [
        name,
        number(metrics["rows"]),
        *(number(metrics.get(k)) for k in keys),
        auc,
        number(metrics.get("brier")),
    ]


def _evaluation(result: Json, spec: Json) -> tuple[list[Table], list[str]]:
    versions = result["versions"]
    labels = result.get("labels") or {}
    assert isinstance(versions, Mapping)
    assert isinstance(labels, Mapping)
    named = {v: str(labels.get(v, f"version id {v}")) for v in versions}
    comparison = Table("Versions side by side (combined over every site)", ["Model", *EVALUATION_COLUMNS])
    comparison.rows = [_evaluation_row(named[v], part["combined"]) for v, part in versions.items()]
    tables = [comparison]
    for version, part in versions.items():
        table = Table(f"{named[version].capitalize()}: per site", ["Site", *EVALUATION_COLUMNS])
        table.rows.append(_evaluation_row("Combined (exact)", part["combined"]))
        table.rows.extend(_evaluation_row(str(name), metrics) for name, metrics in part["sites"].items())
        weighted = part["example_weighted"]
        if weighted:  # in the clear only: under secure aggregation no site's figure exists
            table.rows.append(
                [
                    "Example-weighted mean of sites (former approximation)",
                    "–",
                    number(weighted.get("accuracy")),
                    number(weighted.get("balanced_accuracy")),
                    "–",
                    "–",
                    number(weighted.get("roc_auc")),
                    "–",
                ]
            )
        tables.append(table)
    notes = [
        "Combined figures come from the sites' summed confusion matrices and score histograms: exact, "
        "and the ROC AUC within the bound shown."
    ]
    return tables, notes


_MAKERS = {
    "columns": _columns,
    "histogram": _bins,
    "quantiles": _bins,
    "cross_table": _cross_table,
    "correlation": _correlation,
    "survival": _survival,
    "evaluation": _evaluation,
}
