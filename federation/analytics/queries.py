"""Federated queries: what a coordinator asks, what each site answers, and what they combine to.

A :class:`Query` names columns of the study's schema and is checked against it when it is
asked (:func:`parse_query`), so both sides read the same columns, bins and levels. A site
answers with counts and sums of its own rows only (:func:`site_answer`), after its policy
has had its say: any cell below the site's ``min_count`` is suppressed there and marked,
and a query that asks for it gets Laplace noise of scale ``1/epsilon`` on each count cell
first (one row moves one cell by one: the L1 sensitivity of a counting query is 1), so the
noisy answer is epsilon-DP and the suppression that follows is post-processing. The control
plane checks every answer's shape (:func:`parse_answer`) and combines them
(:func:`combine_answers`): the counts add up, so the combined result equals the pooled
computation exactly, and means and variances to floating-point precision, wherever nothing
was suppressed or noised.

Under secure aggregation a site sends its answer as one fixed-length vector
(:func:`answer_vector`) masked so that the server sees only the sum of all sites'
(:mod:`federation.privacy.secure_sum`); the server then suppresses the small cells of the
total instead (:func:`combine_total`). A survival answer has no fixed length (the times are
each site's own), so survival curves are asked in the clear.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from federation.analytics.columns import (
    ColumnSums,
    CrossProducts,
    column_sums,
    combine_columns,
    correlation,
    cross_products,
)
from federation.analytics.counts import BinCounts, quantile_bounds, suppress
from federation.analytics.evaluation import (
    CALIBRATION_BINS,
    SCORE_BINS,
    MulticlassEvaluation,
    SiteEvaluation,
    combined_metrics,
    multiclass_metrics,
    reliability_curve,
    site_evaluation,
    site_multiclass_evaluation,
)
from federation.analytics.survival import RiskTable, combine_tables, kaplan_meier, log_rank, risk_table
from federation.data.schema import DataSchema, FeatureKind
from federation.errors import ConfigurationError

Json = dict[str, object]

#: The most bins a histogram may ask for, and the most fine bins of a quantile query.
MAX_HISTOGRAM_BINS = 200
MAX_QUANTILE_BINS = 1000
#: The most model versions one evaluation compares, and the largest id a version may have.
MAX_VERSIONS = 10
MAX_VERSION_ID = 2**63 - 1
#: The largest epsilon a query may spend (beyond it the noise protects little).
MAX_QUERY_EPSILON = 10.0


class QueryKind(enum.StrEnum):
    COLUMNS = "columns"
    HISTOGRAM = "histogram"
    QUANTILES = "quantiles"
    CROSS_TABLE = "cross_table"
    CORRELATION = "correlation"
    SURVIVAL = "survival"
    EVALUATION = "evaluation"


#: The kinds whose answer is a fixed-length vector, summable under secure aggregation.
SECURE_KINDS = frozenset(
    {
        QueryKind.COLUMNS,
        QueryKind.HISTOGRAM,
        QueryKind.QUANTILES,
        QueryKind.CROSS_TABLE,
        QueryKind.CORRELATION,
        QueryKind.EVALUATION,
    }
)
#: The counting kinds, to which DP noise applies (one row moves one cell by one).
NOISE_KINDS = frozenset({QueryKind.HISTOGRAM, QueryKind.QUANTILES, QueryKind.CROSS_TABLE})


@dataclass(frozen=True)
class Query:
    """One question, its columns resolved against the study's schema."""

    kind: QueryKind
    #: COLUMNS and CORRELATION: numeric columns.
    columns: tuple[str, ...] = ()
    #: HISTOGRAM and QUANTILES: one numeric column and its agreed bin edges.
    column: str = ""
    edges: tuple[float, ...] = ()
    #: QUANTILES: the probabilities asked for.
    probabilities: tuple[float, ...] = ()
    #: CROSS_TABLE: two categorical columns (or the label) and their declared levels.
    rows: str = ""
    row_levels: tuple[str, ...] = ()
    by: str = ""
    by_levels: tuple[str, ...] = ()
    #: SURVIVAL: the time column, the event column (1: the event; 0: censored), and an
    #: optional grid step to which each time is rounded up.
    time: str = ""
    event: str = ""
    #: The event column's two levels when it is categorical: censored, then the event.
    event_levels: tuple[str, ...] = ()
    time_step: float | None = None
    #: EVALUATION: model versions (ids) and the task's class count (2: binary).
    versions: tuple[int, ...] = ()
    num_classes: int = 0
    #: Laplace noise on each count cell (NOISE_KINDS only).
    epsilon: float | None = None

    def to_json(self) -> Json:
        data: Json = {"kind": self.kind.value}
        for name, value in _fields(self).items():
            if name != "kind" and value not in ((), "", None, 0):
                data[name] = list(value) if isinstance(value, tuple) else value
        return data

    @property
    def secure_supported(self) -> bool:
        return self.kind in SECURE_KINDS

    def describe(self) -> str:
        """One line for lists and logs."""
        subject = {
            QueryKind.COLUMNS: ", ".join(self.columns),
            QueryKind.HISTOGRAM: self.column,
            QueryKind.QUANTILES: self.column,
            QueryKind.CROSS_TABLE: f"{self.rows} by {self.by}",
            QueryKind.CORRELATION: ", ".join(self.columns),
            QueryKind.SURVIVAL: f"{self.time} until {self.event}",
            QueryKind.EVALUATION: "versions " + ", ".join(str(v) for v in self.versions),
        }[self.kind]
        noise = f", epsilon {self.epsilon:g}" if self.epsilon else ""
        return f"{self.kind.value.replace('_', '-')}: {subject}{noise}"


def _fields(query: Query) -> dict[str, object]:
    return {name: getattr(query, name) for name in Query.__dataclass_fields__}


@dataclass(frozen=True)
class SiteTable:
    """A site's columns: numeric ones as float64 with NaN for a missing value, categorical
    ones (and the label) as strings with "" for a missing value."""

    numeric: Mapping[str, NDArray[np.float64]]
    categorical: Mapping[str, Sequence[str]] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        for values in (*self.numeric.values(), *self.categorical.values()):
            return len(values)
        return 0


# --- the question ---------------------------------------------------------------------------


def schema_levels(schema: DataSchema) -> dict[str, tuple[str, ...] | None]:
    """Every column a query may name: numeric (None) or categorical with its levels. A
    boolean feature counts as numeric 0/1; a classification label as categorical over its
    classes; a regression label as numeric."""
    columns: dict[str, tuple[str, ...] | None] = {}
    for feature in schema.features:
        categorical = feature.kind is FeatureKind.CATEGORICAL
        columns[feature.name] = tuple(feature.categories or ()) if categorical else None
    columns[schema.label] = tuple(schema.classes) if schema.classes else None
    return columns


#: How a cross-table names the values of a yes/no (boolean, 0/1) column.
BOOLEAN_LEVELS = ("no", "yes")


def parse_query(data: object, schema: DataSchema) -> Query:
    """Check a query against ``schema``; :class:`ConfigurationError` says what is wrong."""
    if not isinstance(data, Mapping):
        raise ConfigurationError("a query is a JSON object with a kind")
    kind_name = data.get("kind")
    try:
        kind = QueryKind(str(kind_name))
    except ValueError:
        raise ConfigurationError(
            f"unknown query kind {kind_name!r}; choose one of: {', '.join(k.value for k in QueryKind)}"
        ) from None
    allowed = _KEYS[kind] | {"kind", "epsilon"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigurationError(f"a {kind.value} query takes no {', '.join(unknown)}")
    levels = schema_levels(schema)
    if kind is QueryKind.CROSS_TABLE:  # a yes/no column counts as two levels there
        levels |= {f.name: BOOLEAN_LEVELS for f in schema.features if f.kind is FeatureKind.BOOLEAN}
    query = _PARSERS[kind](data, levels)
    epsilon = _epsilon(data.get("epsilon"), kind)
    return Query(**{**_fields(query), "epsilon": epsilon})  # type: ignore[arg-type]


_KEYS: dict[QueryKind, set[str]] = {
    QueryKind.COLUMNS: {"columns"},
    QueryKind.HISTOGRAM: {"column", "edges"},
    QueryKind.QUANTILES: {"column", "edges", "probabilities"},
    QueryKind.CROSS_TABLE: {"rows", "by", "row_levels", "by_levels"},
    QueryKind.CORRELATION: {"columns"},
    QueryKind.SURVIVAL: {"time", "event", "time_step", "event_levels"},
    QueryKind.EVALUATION: {"versions", "num_classes"},
}


def _epsilon(value: object, kind: QueryKind) -> float | None:
    if value is None:
        return None
    if kind not in NOISE_KINDS:
        raise ConfigurationError(
            f"DP noise applies to counting queries ({', '.join(sorted(k.value for k in NOISE_KINDS))}), "
            f"not to a {kind.value} query"
        )
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= MAX_QUERY_EPSILON:
        raise ConfigurationError(f"epsilon must be a number in (0, {MAX_QUERY_EPSILON:g}]")
    return float(value)


def _numeric_column(name: object, levels: Mapping[str, tuple[str, ...] | None], what: str) -> str:
    if not isinstance(name, str) or name not in levels:
        raise ConfigurationError(f"{what} must name a column of the study's schema, got {name!r}")
    if levels[name] is not None:
        raise ConfigurationError(f"{what} {name!r} is categorical; this needs a numeric column")
    return name


def _categorical_column(name: object, levels: Mapping[str, tuple[str, ...] | None], what: str) -> str:
    if not isinstance(name, str) or name not in levels:
        raise ConfigurationError(f"{what} must name a column of the study's schema, got {name!r}")
    if not levels[name]:
        usable = ", ".join(n for n, kind in levels.items() if kind) or "none"
        raise ConfigurationError(
            f"{what} {name!r} is numeric; a cross-table counts categorical, yes/no or label columns "
            f"(here: {usable}); a histogram counts a numeric one"
        )
    return name


def _numbers(value: object, what: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value
    ):
        raise ConfigurationError(f"{what} must be a list of finite numbers")
    return tuple(float(v) for v in value)


def _edges(value: object, most: int) -> tuple[float, ...]:
    if value is None:
        raise ConfigurationError(
            "edges is required: the bin edges every site counts in, e.g. [0, 10, 20, 30]"
        )
    edges = _numbers(value, "edges")
    if len(edges) < 2 or len(edges) - 1 > most or any(b <= a for a, b in itertools.pairwise(edges)):
        raise ConfigurationError(f"edges must be 2 to {most + 1} strictly increasing numbers")
    return edges


def _column_list(
    data: Mapping[str, object], levels: Mapping[str, tuple[str, ...] | None], least: int
) -> tuple[str, ...]:
    names = data.get("columns")
    if names is None:
        names = [name for name, kind in levels.items() if kind is None]
    if not isinstance(names, list) or len(names) < least or len(set(names)) != len(names):
        raise ConfigurationError(f"columns must list at least {least} distinct numeric columns")
    return tuple(_numeric_column(name, levels, "columns") for name in names)


def _parse_columns(data: Mapping[str, object], levels: Mapping[str, tuple[str, ...] | None]) -> Query:
    return Query(QueryKind.COLUMNS, columns=_column_list(data, levels, 1))


def _parse_correlation(data: Mapping[str, object], levels: Mapping[str, tuple[str, ...] | None]) -> Query:
    return Query(QueryKind.CORRELATION, columns=_column_list(data, levels, 2))


def _parse_histogram(data: Mapping[str, object], levels: Mapping[str, tuple[str, ...] | None]) -> Query:
    column = _numeric_column(data.get("column"), levels, "column")
    return Query(QueryKind.HISTOGRAM, column=column, edges=_edges(data.get("edges"), MAX_HISTOGRAM_BINS))


def _parse_quantiles(data: Mapping[str, object], levels: Mapping[str, tuple[str, ...] | None]) -> Query:
    column = _numeric_column(data.get("column"), levels, "column")
    probabilities = _numbers(data.get("probabilities", [0.25, 0.5, 0.75]), "probabilities")
    if not probabilities or not all(0 <= p <= 1 for p in probabilities):
        raise ConfigurationError("probabilities must be numbers in [0, 1]")
    edges = _edges(data.get("edges"), MAX_QUANTILE_BINS)
    return Query(QueryKind.QUANTILES, column=column, edges=edges, probabilities=probabilities)


def _parse_cross_table(data: Mapping[str, object], levels: Mapping[str, tuple[str, ...] | None]) -> Query:
    rows = _categorical_column(data.get("rows"), levels, "rows")
    by = _categorical_column(data.get("by"), levels, "by")
    if rows == by:
        raise ConfigurationError("a cross-table needs two different columns")
    return Query(
        QueryKind.CROSS_TABLE, rows=rows, row_levels=levels[rows] or (), by=by, by_levels=levels[by] or ()
    )


def _parse_survival(data: Mapping[str, object], levels: Mapping[str, tuple[str, ...] | None]) -> Query:
    time = _numeric_column(data.get("time"), levels, "time")
    event = data.get("event")
    if (
        isinstance(event, str)
        and event in levels
        and levels[event] is not None
        and len(levels[event] or ()) != 2
    ):
        raise ConfigurationError(
            f"event {event!r} must be numeric 0/1 or have two classes (the second: the event)"
        )
    if not isinstance(event, str) or event not in levels:
        raise ConfigurationError(f"event must name a column of the study's schema, got {event!r}")
    step = data.get("time_step")
    if not isinstance(step, int | float) or isinstance(step, bool) or not step > 0 or not math.isfinite(step):
        # Without a grid the times sent would be patients' own times.
        raise ConfigurationError("time_step must be a positive number: each time is rounded up to its grid")
    if event == time:
        raise ConfigurationError("time and event must be different columns")
    event_levels = levels[event]
    return Query(
        QueryKind.SURVIVAL,
        time=time,
        event=event,
        event_levels=tuple(event_levels or ()),
        time_step=float(step),
    )


def _parse_evaluation(data: Mapping[str, object], levels: Mapping[str, tuple[str, ...] | None]) -> Query:
    versions = data.get("versions")
    if (
        not isinstance(versions, list)
        or not 1 <= len(versions) <= MAX_VERSIONS
        or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_VERSION_ID for v in versions
        )
        or len(set(versions)) != len(versions)
    ):
        raise ConfigurationError(f"versions must list 1 to {MAX_VERSIONS} distinct model version ids")
    classes = data.get("num_classes", 2)
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 2:
        raise ConfigurationError("an evaluation needs a classification study (num_classes at least 2)")
    return Query(QueryKind.EVALUATION, versions=tuple(versions), num_classes=classes)


_PARSERS: dict[QueryKind, Callable[[Mapping[str, object], Mapping[str, tuple[str, ...] | None]], Query]] = {
    QueryKind.COLUMNS: _parse_columns,
    QueryKind.HISTOGRAM: _parse_histogram,
    QueryKind.QUANTILES: _parse_quantiles,
    QueryKind.CROSS_TABLE: _parse_cross_table,
    QueryKind.CORRELATION: _parse_correlation,
    QueryKind.SURVIVAL: _parse_survival,
    QueryKind.EVALUATION: _parse_evaluation,
}


# --- the site's answer ----------------------------------------------------------------------


def _noisy(
    counts: NDArray[np.int64], epsilon: float | None, rng: np.random.Generator | None
) -> NDArray[np.int64]:
    """Counts with Laplace(1/epsilon) noise, rounded and floored at 0 (post-processing)."""
    if epsilon is None:
        return counts
    if rng is None:
        raise ConfigurationError("a noised query needs a random generator")
    noisy = counts + rng.laplace(0.0, 1.0 / epsilon, size=counts.shape)
    return np.maximum(np.rint(noisy), 0).astype(np.int64)


def _counted(
    counts: NDArray[np.int64], query: Query, min_count: int, rng: np.random.Generator | None, secure: bool
) -> Json:
    """A count cell set as the site sends it: noised if asked, then (in the clear) suppressed."""
    counts = _noisy(counts, query.epsilon, rng)
    if secure:
        return {"counts": counts.tolist()}
    kept, small = suppress(counts, min_count)
    return {"counts": kept.tolist(), "suppressed": small.tolist()}


def site_answer(
    query: Query,
    table: SiteTable,
    *,
    min_count: int,
    rng: np.random.Generator | None = None,
    secure: bool = False,
) -> Json:
    """The site's answer to a statistics query (an evaluation is :func:`evaluation_answer`).
    ``secure``: the answer goes into a secure sum, unsuppressed (the server suppresses the total)."""
    if query.kind is QueryKind.EVALUATION:
        raise ConfigurationError("an evaluation is answered from a model's scores (evaluation_answer)")
    if secure and not query.secure_supported:
        raise ConfigurationError(f"a {query.kind.value} query cannot be summed securely")
    if query.kind is QueryKind.COLUMNS:
        return _columns_answer(query, table, min_count, secure)
    if query.kind is QueryKind.CORRELATION:
        products = cross_products(np.column_stack([table.numeric[name] for name in query.columns]))
        if not secure and 0 < products.count < min_count:
            raise ConfigurationError(f"fewer complete rows than the site's minimum ({min_count})")
        return {
            "count": products.count,
            "totals": products.totals.tolist(),
            "products": products.products.tolist(),
        }
    if query.kind in (QueryKind.HISTOGRAM, QueryKind.QUANTILES):
        values = table.numeric[query.column]
        counts, _ = np.histogram(values[np.isfinite(values)], bins=np.asarray(query.edges))
        return _counted(counts.astype(np.int64), query, min_count, rng, secure)
    if query.kind is QueryKind.CROSS_TABLE:
        return _counted(_cross_counts(query, table), query, min_count, rng, secure)
    return _survival_answer(query, table, min_count)


def _column_cell(sums: ColumnSums, suppressed: bool | None) -> Json:
    """One column's sums as an answer holds them (``suppressed`` None: a secure sum's, unmarked)."""
    cell: Json = {
        "present": sums.present,
        "missing": sums.missing,
        "sum": sums.total,
        "sum_sq": sums.total_sq,
    }
    return cell if suppressed is None else {**cell, "suppressed": suppressed}


def _suppressed_column(sums: ColumnSums, min_count: int) -> tuple[ColumnSums, bool]:
    """A mean of fewer than ``min_count`` values is not sent: only the missing count is."""
    small = 0 < sums.present < min_count
    return (ColumnSums(0, sums.missing, 0.0, 0.0) if small else sums), small


def _columns_answer(query: Query, table: SiteTable, min_count: int, secure: bool) -> Json:
    answer: Json = {}
    for name in query.columns:
        sums = column_sums(table.numeric[name])
        answer[name] = (
            _column_cell(sums, None) if secure else _column_cell(*_suppressed_column(sums, min_count))
        )
    return {"columns": answer}


def _cross_counts(query: Query, table: SiteTable) -> NDArray[np.int64]:
    row_index = {level: i for i, level in enumerate(query.row_levels)}
    by_index = {level: i for i, level in enumerate(query.by_levels)}
    counts = np.zeros((len(row_index), len(by_index)), dtype=np.int64)
    for value, label in zip(_level_values(table, query.rows), _level_values(table, query.by), strict=True):
        if value in row_index and label in by_index:
            counts[row_index[value], by_index[label]] += 1
    return counts


def _level_values(table: SiteTable, column: str) -> list[str]:
    """A categorical column's values; a yes/no column's 0/1 as "no"/"yes" ("" if missing)."""
    if column in table.categorical:
        return list(table.categorical[column])
    named = {0.0: BOOLEAN_LEVELS[0], 1.0: BOOLEAN_LEVELS[1]}
    return [named.get(float(value), "") for value in table.numeric[column]]


def _event_flags(query: Query, table: SiteTable) -> NDArray[np.float64]:
    """1 for the event, 0 for censored, NaN where the event is not known (those rows are left out)."""
    if query.event_levels:
        levels = {level: float(i) for i, level in enumerate(query.event_levels)}
        values = table.categorical[query.event]
        return np.asarray([levels.get(value, np.nan) for value in values], dtype=np.float64)
    flags = np.asarray(table.numeric[query.event], dtype=np.float64)
    if not np.all(np.isin(flags[np.isfinite(flags)], (0.0, 1.0))):
        raise ConfigurationError(f"the event column {query.event!r} must hold 0 or 1")
    return flags


def _survival_answer(query: Query, table: SiteTable, min_count: int) -> Json:
    """The site's risk table on the query's time grid, each step merged into the next until
    its events, its censored rows and its exits are each none or at least ``min_count``:
    every count sent, and every difference of two, is 0 or at least the minimum."""
    times = table.numeric[query.time]
    events = _event_flags(query, table)
    known = np.isfinite(times) & ~np.isnan(events)
    times, events = times[known], events[known]
    if times.size < min_count:
        raise ConfigurationError(f"fewer rows with a time and an event than the site's minimum ({min_count})")
    step = query.time_step or 1.0
    risk = risk_table(np.ceil(times / step) * step, events)
    exits = -np.diff(np.append(risk.at_risk, 0))
    ends = _merge_small_steps(exits, risk.events, min_count)
    starts = _first_of_groups(ends)
    return {
        "times": risk.times[ends].tolist(),
        "at_risk": risk.at_risk[starts].tolist(),
        "events": [int(total) for total in np.add.reduceat(risk.events, starts)],
        "suppressed": ((ends - starts) > 0).tolist(),  # the group merged several steps
    }


def _merge_small_steps(
    exits: NDArray[np.int64], events: NDArray[np.int64], min_count: int
) -> NDArray[np.intp]:
    """Which steps end a group (reported at that step's time). Steps join the next until the
    group's exits, events and censored rows are each 0 or at least ``min_count``; what is
    left at the end joins the groups before it.
    A site whose totals cannot meet the minimum (say 3 events with a minimum of 5) refuses."""

    def enough(left: int, died: int) -> bool:
        return all(count == 0 or count >= min_count for count in (left, died, left - died))

    groups: list[tuple[int, int, int]] = []  # (last step, exits, events)
    left_sum = died_sum = 0
    for index, (left, died) in enumerate(zip(exits.tolist(), events.tolist(), strict=True)):
        left_sum, died_sum = left_sum + left, died_sum + died
        if enough(left_sum, died_sum):
            groups.append((index, left_sum, died_sum))
            left_sum = died_sum = 0
    while left_sum and groups and not enough(left_sum, died_sum):
        _, left, died = groups.pop()
        left_sum, died_sum = left_sum + left, died_sum + died
    if left_sum:
        if not enough(left_sum, died_sum):
            raise ConfigurationError(
                f"this site's events or censored rows are fewer than its minimum ({min_count}) in total"
            )
        groups.append((len(exits) - 1, left_sum, died_sum))
    return np.asarray([end for end, _, _ in groups], dtype=np.intp)


def _first_of_groups(kept: NDArray[np.intp]) -> NDArray[np.intp]:
    return np.concatenate([[0], kept[:-1] + 1]).astype(np.intp) if kept.size else kept


def evaluation_answer(
    query: Query,
    labels_and_scores: Sequence[tuple[NDArray[np.int64], NDArray[np.float64]]],
    *,
    min_count: int,
) -> Json:
    """A site's counts for each model version of an evaluation: labels (class indices) and
    the model's scores on the site's held-out rows (binary: the probability of class 1)."""
    if len(labels_and_scores) != len(query.versions):
        raise ConfigurationError("one set of scores per model version")
    answer: Json = {}
    for version, (labels, scores) in zip(query.versions, labels_and_scores, strict=True):
        if labels.size < min_count:
            raise ConfigurationError(f"fewer held-out rows than the site's minimum ({min_count})")
        answer[str(version)] = _evaluation_counts(query, labels, scores)
    return {"versions": answer}


def _evaluation_counts(query: Query, labels: NDArray[np.int64], scores: NDArray[np.float64]) -> Json:
    if query.num_classes == 2:
        return _evaluation_json(site_evaluation(labels, scores if scores.ndim == 1 else scores[:, 1]))
    return _evaluation_json(site_multiclass_evaluation(labels, scores))


# --- checking an answer ---------------------------------------------------------------------

#: The largest count an answer may hold: float64 represents every whole number up to it.
MAX_COUNT = 2**53
#: The most distinct times one site's survival answer may list.
MAX_SURVIVAL_TIMES = 100_000


def _int_array(value: object, shape: tuple[int, ...], what: str) -> NDArray[np.int64]:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{what} must be numbers") from None
    if (
        array.shape != shape
        or not np.all(np.isfinite(array))
        or np.any(array < 0)
        or np.any(array > MAX_COUNT)
        or np.any(array % 1)
    ):
        raise ConfigurationError(f"{what} must be {shape} whole numbers from 0 to 2^53")
    return array.astype(np.int64)


def _float_array(value: object, shape: tuple[int, ...], what: str) -> NDArray[np.float64]:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{what} must be numbers") from None
    if array.shape != shape or not np.all(np.isfinite(array)):
        raise ConfigurationError(f"{what} must be {shape} finite numbers")
    return array


def _marks(value: object, shape: tuple[int, ...], what: str) -> NDArray[np.bool_]:
    array = np.asarray(value if value is not None else np.zeros(shape, dtype=bool))
    if array.shape != shape or array.dtype != np.bool_:
        raise ConfigurationError(f"{what} must be {shape} true/false marks")
    return array


def _object(value: object, what: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{what} must be a JSON object")
    return value


def _count_shape(query: Query) -> tuple[int, ...]:
    if query.kind is QueryKind.CROSS_TABLE:
        return (len(query.row_levels), len(query.by_levels))
    return (len(query.edges) - 1,)


def parse_answer(query: Query, data: object, *, secure: bool = False) -> Json:
    """A site's answer, checked against the query (shapes, counts, sums that real rows could
    give); :class:`ConfigurationError` says what is wrong. Returns it normalised."""
    answer = _object(data, "the answer")
    if query.kind is QueryKind.COLUMNS:
        return {
            "columns": {
                name: _column_answer(answer, name) for name in _same_keys(answer, "columns", query.columns)
            }
        }
    if query.kind is QueryKind.CORRELATION:
        k = len(query.columns)
        count = _int_array(answer.get("count"), (), "count")
        products = _float_array(answer.get("products"), (k, k), "products")
        if not np.allclose(products, products.T) or np.any(np.diag(products) < 0):
            raise ConfigurationError("products must be symmetric with sums of squares on the diagonal")
        totals = _float_array(answer.get("totals"), (k,), "totals")
        return {"count": int(count), "totals": totals.tolist(), "products": products.tolist()}
    if query.kind in (QueryKind.HISTOGRAM, QueryKind.QUANTILES, QueryKind.CROSS_TABLE):
        shape = _count_shape(query)
        counts = _int_array(answer.get("counts"), shape, "counts")
        marks = _marks(answer.get("suppressed"), shape, "suppressed")
        if np.any(counts[marks]):
            raise ConfigurationError("a suppressed cell is sent as 0")
        return {"counts": counts.tolist(), **({} if secure else {"suppressed": marks.tolist()})}
    if query.kind is QueryKind.SURVIVAL:
        return _survival_of(answer).to_json()
    return {"versions": _evaluation_versions(query, answer)}


def _same_keys(answer: Mapping[str, object], key: str, expected: Sequence[str]) -> list[str]:
    inner = _object(answer.get(key), key)
    if sorted(inner) != sorted(expected):
        raise ConfigurationError(f"{key} must answer exactly {', '.join(expected)}")
    return list(expected)


def _column_answer(answer: Mapping[str, object], name: str) -> Json:
    column = _object(_object(answer.get("columns"), "columns").get(name), f"columns.{name}")
    present = int(_int_array(column.get("present"), (), f"{name}.present"))
    missing = int(_int_array(column.get("missing"), (), f"{name}.missing"))
    total = float(_float_array(column.get("sum"), (), f"{name}.sum"))
    total_sq = float(_float_array(column.get("sum_sq"), (), f"{name}.sum_sq"))
    # Cauchy-Schwarz: sum^2 <= n * sum of squares for any real values.
    impossible = total * total > present * total_sq * (1 + 1e-9) + 1e-9
    if total_sq < 0 or impossible or (present == 0 and (total or total_sq)):
        raise ConfigurationError(f"{name}: no {present} real values have these sums")
    suppressed = column.get("suppressed", False)
    if not isinstance(suppressed, bool):
        raise ConfigurationError(f"{name}.suppressed must be true or false")
    return _column_cell(ColumnSums(present, missing, total, total_sq), suppressed)


@dataclass(frozen=True)
class _SurvivalAnswer:
    table: RiskTable
    suppressed: NDArray[np.bool_]

    def to_json(self) -> Json:
        return {
            "times": self.table.times.tolist(),
            "at_risk": self.table.at_risk.tolist(),
            "events": self.table.events.tolist(),
            "suppressed": self.suppressed.tolist(),
        }


def _survival_of(answer: Mapping[str, object]) -> _SurvivalAnswer:
    times = answer.get("times")
    if not isinstance(times, list) or not 1 <= len(times) <= MAX_SURVIVAL_TIMES:
        raise ConfigurationError(f"times must list 1 to {MAX_SURVIVAL_TIMES} times")
    shape = (len(times),)
    table = RiskTable(
        _float_array(times, shape, "times"),
        _int_array(answer.get("at_risk"), shape, "at_risk"),
        _int_array(answer.get("events"), shape, "events"),
    )
    if np.any(table.at_risk < 1):
        raise ConfigurationError("a time step is listed only while someone is at risk")
    # A marked step merged several steps of the grid (the site's small counts).
    return _SurvivalAnswer(table, _marks(answer.get("suppressed"), shape, "suppressed"))


def _evaluation_versions(query: Query, answer: Mapping[str, object]) -> dict[str, Json]:
    versions = _same_keys(answer, "versions", [str(v) for v in query.versions])
    inner = _object(answer.get("versions"), "versions")
    return {v: _evaluation_json(_evaluation_of(query, _object(inner[v], f"versions.{v}"))) for v in versions}


def _evaluation_of(query: Query, data: Mapping[str, object]) -> SiteEvaluation | MulticlassEvaluation:
    """A site's (or the total's) counts of one version, checked to describe the same rows."""
    evaluation = _evaluation_fields(query, data)
    rows = evaluation.confusion.sum(axis=1)
    if isinstance(evaluation, SiteEvaluation):
        consistent = (
            evaluation.positive_scores.sum() == rows[1]
            and evaluation.negative_scores.sum() == rows[0]
            and evaluation.calibration_rows.sum() == rows.sum()
            and evaluation.calibration_positives.sum() == rows[1]
            and 0 <= evaluation.squared_error <= rows.sum()
            and np.all(evaluation.calibration_scores >= 0)
        )
    else:
        consistent = bool(
            np.all(evaluation.class_scores.sum(axis=1) == rows)
            and np.all(evaluation.other_scores.sum(axis=1) == rows.sum() - rows)
        )
    if not consistent:
        raise ConfigurationError("the evaluation's counts do not describe one set of rows")
    return evaluation


#: An evaluation's fields that hold sums of scores, not counts.
_SCORE_SUM_FIELDS = frozenset({"squared_error", "calibration_scores"})


def _evaluation_fields(query: Query, data: Mapping[str, object]) -> SiteEvaluation | MulticlassEvaluation:
    values: dict[str, object] = {}
    for name, shape in _evaluation_shapes(query).items():
        read = _float_array if name in _SCORE_SUM_FIELDS else _int_array
        values[name] = read(data.get(name), shape, name)
    if query.num_classes != 2:
        return MulticlassEvaluation(**values)  # type: ignore[arg-type]
    return SiteEvaluation(**{**values, "squared_error": float(values["squared_error"])})  # type: ignore[arg-type]


def _evaluation_json(evaluation: SiteEvaluation | MulticlassEvaluation) -> Json:
    return {
        name: value.tolist() if isinstance(value, np.ndarray) else value
        for name, value in vars(evaluation).items()
    }


# --- secure aggregation: one vector per site ------------------------------------------------


def _evaluation_shapes(query: Query) -> dict[str, tuple[int, ...]]:
    """The counts of one version's evaluation, in the order a secure vector holds them."""
    c = query.num_classes
    if c == 2:
        return {
            "confusion": (2, 2),
            "positive_scores": (SCORE_BINS,),
            "negative_scores": (SCORE_BINS,),
            "squared_error": (),
            "calibration_rows": (CALIBRATION_BINS,),
            "calibration_scores": (CALIBRATION_BINS,),
            "calibration_positives": (CALIBRATION_BINS,),
        }
    return {"confusion": (c, c), "class_scores": (c, SCORE_BINS), "other_scores": (c, SCORE_BINS)}


def vector_length(query: Query) -> int:
    """The length of a site's answer as a vector (SECURE_KINDS only)."""
    if query.kind is QueryKind.EVALUATION:
        per_version = sum(int(np.prod(shape)) for shape in _evaluation_shapes(query).values())
        return per_version * len(query.versions)
    if query.kind is QueryKind.COLUMNS:
        return 4 * len(query.columns)
    if query.kind is QueryKind.CORRELATION:
        k = len(query.columns)
        return 1 + k + k * k
    if not query.secure_supported:
        raise ConfigurationError(f"a {query.kind.value} query cannot be summed securely")
    return int(np.prod(_count_shape(query)))


def answer_vector(query: Query, answer: Json) -> NDArray[np.float64]:
    """A site's (unsuppressed) answer as the vector it adds to the secure sum."""
    if query.kind is QueryKind.COLUMNS:
        columns = _object(answer["columns"], "columns")
        cells = [_object(columns[name], name) for name in query.columns]
        return np.asarray(
            [float(c[key]) for c in cells for key in ("present", "missing", "sum", "sum_sq")],  # type: ignore[arg-type]
            dtype=np.float64,
        )
    if query.kind is QueryKind.CORRELATION:
        parts = [[answer["count"]], answer["totals"], np.ravel(np.asarray(answer["products"]))]
        return np.concatenate([np.asarray(p, dtype=np.float64) for p in parts])
    if query.kind is QueryKind.EVALUATION:
        versions = _object(answer["versions"], "versions")
        return np.concatenate(
            [
                np.ravel(np.asarray(_object(versions[str(v)], str(v))[name], dtype=np.float64))
                for v in query.versions
                for name in _evaluation_shapes(query)
            ]
        )
    vector = np.ravel(np.asarray(answer["counts"], dtype=np.float64))
    if vector.size != vector_length(query):
        raise ConfigurationError("the answer does not fit the query")
    return vector


def answer_of_vector(query: Query, vector: NDArray[np.float64]) -> Json:
    """The total answer a summed vector stands for (counts rounded: the fixed point is exact
    for whole numbers)."""
    if vector.shape != (vector_length(query),):
        raise ConfigurationError("the summed vector does not fit the query")
    if query.kind is QueryKind.COLUMNS:
        cells = vector.reshape(len(query.columns), 4)
        return {
            "columns": {
                name: {
                    "present": round(c[0]),
                    "missing": round(c[1]),
                    "sum": float(c[2]),
                    "sum_sq": float(c[3]),
                }
                for name, c in zip(query.columns, cells, strict=True)
            }
        }
    if query.kind is QueryKind.EVALUATION:
        return {"versions": _evaluation_of_vector(query, vector)}
    if query.kind is QueryKind.CORRELATION:
        k = len(query.columns)
        return {
            "count": round(vector[0]),
            "totals": vector[1 : 1 + k].tolist(),
            "products": vector[1 + k :].reshape(k, k).tolist(),
        }
    return {"counts": np.rint(vector).astype(np.int64).reshape(_count_shape(query)).tolist()}


def _evaluation_of_vector(query: Query, vector: NDArray[np.float64]) -> dict[str, Json]:
    versions: dict[str, Json] = {}
    position = 0
    for version in query.versions:
        fields: Json = {}
        for name, shape in _evaluation_shapes(query).items():
            size = int(np.prod(shape))
            values = vector[position : position + size].reshape(shape)
            position += size
            exact = name in _SCORE_SUM_FIELDS
            fields[name] = values.tolist() if exact else np.rint(values).astype(np.int64).tolist()
        versions[str(version)] = fields
    return versions


# --- combining ------------------------------------------------------------------------------


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _column_stats(sums: ColumnSums, suppressed: bool) -> Json:
    return {
        "count": sums.present,
        "missing": sums.missing,
        "mean": _finite_or_none(sums.mean),
        "variance": _finite_or_none(sums.variance),
        "std": _finite_or_none(sums.std),
        "suppressed": suppressed,
    }


def _columns_of(answer: Json) -> dict[str, tuple[ColumnSums, bool]]:
    columns = _object(answer["columns"], "columns")
    sums: dict[str, tuple[ColumnSums, bool]] = {}
    for name, cell in columns.items():
        c = _object(cell, name)
        numbers = [float(c[key]) for key in ("present", "missing", "sum", "sum_sq")]  # type: ignore[arg-type]
        sums[name] = (
            ColumnSums(int(numbers[0]), int(numbers[1]), numbers[2], numbers[3]),
            bool(c.get("suppressed", False)),
        )
    return sums


def _correlation_stats(answer: Json, columns: Sequence[str]) -> Json:
    products = CrossProducts(
        int(answer["count"]),  # type: ignore[call-overload]
        np.asarray(answer["totals"], dtype=np.float64),
        np.asarray(answer["products"], dtype=np.float64),
    )
    matrix = correlation(products) if products.count >= 2 else None
    return {
        "count": products.count,
        "columns": list(columns),
        "matrix": None if matrix is None else [[_finite_or_none(v) for v in row] for row in matrix],
    }


def _bin_counts(query: Query, answer: Json) -> BinCounts:
    counts = np.asarray(answer["counts"], dtype=np.int64)
    marks = np.asarray(answer.get("suppressed", np.zeros(counts.shape, dtype=bool)), dtype=bool)
    return BinCounts(np.asarray(query.edges), counts, marks)


def _histogram_stats(query: Query, histogram: BinCounts) -> Json:
    stats: Json = {"counts": histogram.counts.tolist(), "suppressed": histogram.suppressed.tolist()}
    if query.kind is QueryKind.QUANTILES and histogram.counts.sum() > 0:
        stats["quantiles"] = [
            dict(zip(("probability", "lower", "upper"), (p, *quantile_bounds(histogram, p)), strict=True))
            for p in query.probabilities
        ]
        stats["approximate"] = bool(histogram.suppressed.any()) or query.epsilon is not None
    return stats


def _curve_stats(answer: _SurvivalAnswer) -> Json:
    curve = kaplan_meier(answer.table)
    return {
        **answer.to_json(),
        "survival": curve.survival.tolist(),
        "lower": curve.lower.tolist(),
        "upper": curve.upper.tolist(),
    }


def _combined_survival(answers: Sequence[_SurvivalAnswer]) -> _SurvivalAnswer:
    table = combine_tables([a.table for a in answers])
    marks = np.zeros(table.times.shape, dtype=bool)
    for answer in answers:
        marks |= np.isin(table.times, answer.table.times[answer.suppressed])
    return _SurvivalAnswer(table, marks)


def _evaluation_metrics(evaluation: SiteEvaluation | MulticlassEvaluation) -> Json:
    if isinstance(evaluation, MulticlassEvaluation):
        metrics = {name: _finite_or_none(value) for name, value in multiclass_metrics(evaluation).items()}
        return {
            "rows": int(evaluation.confusion.sum()),
            **metrics,
            "confusion": evaluation.confusion.tolist(),
        }
    combined = combined_metrics(evaluation)
    observed, predicted = reliability_curve(evaluation)
    return {
        "rows": int(evaluation.confusion.sum()),
        **{name: _finite_or_none(value) for name, value in vars(combined).items()},
        "confusion": evaluation.confusion.tolist(),
        "reliability": {"predicted": predicted.tolist(), "observed": observed.tolist()},
    }


def _example_weighted(sites: Mapping[str, Json], name: str) -> float | None:
    """The former approximation: the per-site values averaged, weighted by rows."""
    pairs = [(float(s["rows"]), s.get(name)) for s in sites.values()]  # type: ignore[arg-type]
    usable = [(rows, float(value)) for rows, value in pairs if isinstance(value, float)]
    total = sum(rows for rows, _ in usable)
    return sum(rows * value for rows, value in usable) / total if total else None


def _evaluation_result(
    query: Query, answers: Mapping[str, Json], site_metrics: Mapping[str, Json] | None = None
) -> Json:
    """Each version's figures combined from ``answers`` (each site's counts, or the one
    secure total), each site's figures (from its counts, or as it sent them beside a secure
    sum: ``site_metrics``), and their example-weighted mean."""
    result: Json = {}
    for version in (str(v) for v in query.versions):
        parts = {
            name: _evaluation_of(query, _object(_object(a["versions"], "versions")[version], version))
            for name, a in answers.items()
        }
        if site_metrics is None:
            sites = {name: _evaluation_metrics(part) for name, part in parts.items()}
        else:
            sites = {name: _object(metrics[version], version) for name, metrics in site_metrics.items()}  # type: ignore[misc]
        weighted = {
            name: _example_weighted(sites, name) for name in ("accuracy", "balanced_accuracy", "roc_auc")
        }
        result[version] = {
            "combined": _evaluation_metrics(_sum(list(parts.values()))),
            "sites": sites,
            "example_weighted": weighted if sites else {},
        }
    return {"versions": result}


#: The figures a site may send of its own evaluation beside a secure sum: scalars, never a
#: matrix or a histogram.
SITE_METRIC_NAMES = (
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "macro_f1",
    "roc_auc",
    "roc_auc_bound",
    "brier",
)


def evaluation_site_metrics(query: Query, answer: Json) -> Json:
    """A site's own figures of each version, from its counts, to send beside its masked ones."""
    versions = _object(answer["versions"], "versions")
    figures: Json = {}
    for version in (str(v) for v in query.versions):
        metrics = _evaluation_metrics(_evaluation_of(query, _object(versions[version], version)))
        scalars = {name: metrics[name] for name in SITE_METRIC_NAMES if name in metrics}
        figures[version] = json_safe({"rows": metrics["rows"], **scalars})
    return figures


def parse_site_metrics(query: Query, data: object) -> Json:
    """A site's figures sent beside a secure evaluation, checked: per version its rows and
    known figures, each a proportion or missing."""
    versions = _same_keys({"metrics": data}, "metrics", [str(v) for v in query.versions])
    checked: Json = {}
    for version in versions:
        figures = _object(_object(data, "metrics")[version], f"metrics.{version}")
        unknown = sorted(set(figures) - {"rows", *SITE_METRIC_NAMES})
        if unknown:
            raise ConfigurationError(f"metrics.{version} holds unknown figures: {', '.join(unknown)}")
        values: Json = {"rows": int(_int_array(figures.get("rows"), (), f"metrics.{version}.rows"))}
        for name in SITE_METRIC_NAMES:
            value = figures.get(name)
            if value is None:
                continue
            number = float(_float_array(value, (), f"metrics.{version}.{name}"))
            if not 0.0 <= number <= 1.0:
                raise ConfigurationError(f"metrics.{version}.{name} must lie in [0, 1]")
            values[name] = number
        checked[version] = values
    return checked


def _sum(parts: Sequence[SiteEvaluation | MulticlassEvaluation]) -> SiteEvaluation | MulticlassEvaluation:
    total = parts[0]
    for part in parts[1:]:
        total = total + part  # type: ignore[operator]
    return total


def json_safe(value: object) -> object:
    """``value`` with every non-finite number as None: a result is stored and sent as JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def combine_answers(query: Query, answers: Mapping[str, Json]) -> Json:
    """The result of a query answered in the clear: per site and combined. ``answers`` maps
    each site's name to its checked answer (:func:`parse_answer`)."""
    return json_safe(_combine_answers(query, answers))  # type: ignore[return-value]


def _combine_answers(query: Query, answers: Mapping[str, Json]) -> Json:
    if not answers:
        raise ConfigurationError("no answer to combine")
    if query.kind is QueryKind.EVALUATION:
        return _evaluation_result(query, answers)
    if query.kind is QueryKind.SURVIVAL:
        parts = {name: _survival_of(a) for name, a in answers.items()}
        combined = _combined_survival(list(parts.values()))
        test = log_rank([p.table for p in parts.values()]) if len(parts) > 1 else None
        return {
            "combined": _curve_stats(combined),
            "sites": {name: _curve_stats(part) for name, part in parts.items()},
            "log_rank": None
            if test is None
            else {
                "statistic": test.statistic,
                "degrees_of_freedom": test.degrees_of_freedom,
                "p_value": test.p_value,
            },
        }
    sites = {name: _stats(query, answer) for name, answer in answers.items()}
    return {"combined": _stats(query, _total(query, list(answers.values()))), "sites": sites, **_frame(query)}


def _frame(query: Query) -> Json:
    """What the result's cells refer to: the bins or the levels."""
    if query.kind in (QueryKind.HISTOGRAM, QueryKind.QUANTILES):
        return {"edges": list(query.edges)}
    if query.kind is QueryKind.CROSS_TABLE:
        return {"row_levels": list(query.row_levels), "by_levels": list(query.by_levels)}
    return {}


def _total(query: Query, answers: Sequence[Json]) -> Json:
    """The sum of the sites' answers, a cell suppressed anywhere marked."""
    if query.kind is QueryKind.COLUMNS:
        parts = [_columns_of(answer) for answer in answers]
        totals = combine_columns([{name: sums for name, (sums, _) in part.items()} for part in parts])
        marked = {name: any(part[name][1] for part in parts) for name in totals}
        return {"columns": {name: _column_cell(totals[name], marked[name]) for name in query.columns}}
    if query.kind is QueryKind.CORRELATION:
        return answer_of_vector(query, np.sum([answer_vector(query, a) for a in answers], axis=0))
    counts = np.sum([np.asarray(a["counts"], dtype=np.int64) for a in answers], axis=0)
    marks = np.any([np.asarray(a["suppressed"], dtype=bool) for a in answers], axis=0)
    return {"counts": counts.tolist(), "suppressed": marks.tolist()}


def _stats(query: Query, answer: Json) -> Json:
    if query.kind is QueryKind.COLUMNS:
        return {name: _column_stats(sums, marked) for name, (sums, marked) in _columns_of(answer).items()}
    if query.kind is QueryKind.CORRELATION:
        return _correlation_stats(answer, query.columns)
    if query.kind is QueryKind.CROSS_TABLE:
        return {"counts": answer["counts"], "suppressed": answer["suppressed"]}
    return _histogram_stats(query, _bin_counts(query, answer))


def combine_total(
    query: Query, total: Json, *, min_count: int, site_metrics: Mapping[str, Json] | None = None
) -> Json:
    """The result of a securely summed query: the total only, its cells below ``min_count``
    (the largest of the sites' minimums) suppressed here, since no site saw the total. An
    evaluation also lists each site's own figures (``site_metrics``, checked by
    :func:`parse_site_metrics`)."""
    return json_safe(_combine_total(query, total, min_count=min_count, site_metrics=site_metrics))  # type: ignore[return-value]


def _combine_total(
    query: Query, total: Json, *, min_count: int, site_metrics: Mapping[str, Json] | None
) -> Json:
    if query.kind is QueryKind.COLUMNS:
        columns = {
            name: _suppressed_column(sums, min_count) for name, (sums, _) in _columns_of(total).items()
        }
        total = {"columns": {name: _column_cell(*cell) for name, cell in columns.items()}}
    elif query.kind is QueryKind.CORRELATION:
        if int(total["count"]) < min_count:  # type: ignore[call-overload]
            raise ConfigurationError(f"fewer complete rows in total than the sites' minimum ({min_count})")
    elif query.kind is QueryKind.EVALUATION:
        # Each site refused below its minimum of held-out rows; the total holds only sums.
        return _evaluation_result(query, {"total": total}, site_metrics or {})
    else:
        cells, small_cells = suppress(np.asarray(total["counts"], dtype=np.int64), min_count)
        total = {"counts": cells.tolist(), "suppressed": small_cells.tolist()}
    return {"combined": _stats(query, total), "sites": {}, **_frame(query)}
