"""Federated queries end to end in one process: each site answers from its own rows, the
answers travel as JSON and are checked, and the combination equals pandas, lifelines and
scikit-learn on the pooled rows (random splits). Also: suppression at the threshold, DP
noise, the secure-sum vectors, and answers a hostile site could send."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lifelines import KaplanMeierFitter
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from federation.analytics.queries import (
    Query,
    QueryKind,
    SiteTable,
    answer_of_vector,
    answer_vector,
    combine_answers,
    combine_total,
    evaluation_answer,
    parse_answer,
    parse_query,
    site_answer,
)
from federation.data.schema import DataSchema
from federation.errors import ConfigurationError

pytestmark = pytest.mark.analytics

SCHEMA = DataSchema.from_json(
    {
        "features": [
            {"name": "age", "kind": "numeric"},
            {"name": "days", "kind": "numeric"},
            {"name": "died", "kind": "boolean"},
            {"name": "ward", "kind": "categorical", "categories": ["a", "b", "c"]},
        ],
        "label": "outcome",
        "task": "binary",
        "classes": ["no", "yes"],
    }
)


def random_site(rng: np.random.Generator, rows: int) -> pd.DataFrame:
    age = rng.normal(60, 12, rows).round(1)
    age[rng.random(rows) < 0.1] = np.nan
    return pd.DataFrame(
        {
            "age": age,
            "days": rng.integers(1, 400, rows).astype(float),
            "died": (rng.random(rows) < 0.6).astype(float),
            "ward": rng.choice(["a", "b", "c"], rows),
            "outcome": rng.choice(["no", "yes"], rows),
        }
    )


def table_of(frame: pd.DataFrame) -> SiteTable:
    return SiteTable(
        numeric={name: frame[name].to_numpy(np.float64) for name in ("age", "days", "died")},
        categorical={name: list(frame[name]) for name in ("ward", "outcome")},
    )


def over_the_wire(query: Query, frames: list[pd.DataFrame], min_count: int = 1) -> dict[str, object]:
    """Each site answers, the answer goes through JSON and the server's checks, then combines."""
    wire = parse_query(json.loads(json.dumps(query.to_json())), SCHEMA)
    answers = {
        f"site {i}": parse_answer(
            wire, json.loads(json.dumps(site_answer(wire, table_of(f), min_count=min_count)))
        )
        for i, f in enumerate(frames)
    }
    return combine_answers(wire, answers)


splits = st.tuples(st.integers(0, 2**32 - 1), st.lists(st.integers(5, 60), min_size=1, max_size=4))


def sites_of(split: tuple[int, list[int]]) -> list[pd.DataFrame]:
    rng = np.random.default_rng(split[0])
    return [random_site(rng, rows) for rows in split[1]]


@settings(max_examples=25, deadline=None)
@given(split=splits)
def test_columns_are_pandas_on_the_pool(split: tuple[int, list[int]]) -> None:
    frames = sites_of(split)
    result = over_the_wire(parse_query({"kind": "columns", "columns": ["age", "days"]}, SCHEMA), frames)
    pooled = pd.concat(frames, ignore_index=True)
    combined = result["combined"]
    for name in ("age", "days"):
        assert combined[name]["count"] == pooled[name].count()
        assert combined[name]["missing"] == pooled[name].isna().sum()
        assert combined[name]["mean"] == pytest.approx(pooled[name].mean(), rel=1e-12)
        assert combined[name]["variance"] == pytest.approx(pooled[name].var(), rel=1e-9)


@settings(max_examples=25, deadline=None)
@given(split=splits)
def test_correlation_is_pandas_on_the_complete_pooled_rows(split: tuple[int, list[int]]) -> None:
    frames = sites_of(split)
    result = over_the_wire(
        parse_query({"kind": "correlation", "columns": ["age", "days", "died"]}, SCHEMA), frames
    )
    pooled = pd.concat(frames, ignore_index=True)[["age", "days", "died"]].dropna()
    np.testing.assert_allclose(
        np.asarray(result["combined"]["matrix"], float), pooled.corr().to_numpy(), atol=1e-9
    )


@settings(max_examples=25, deadline=None)
@given(split=splits)
def test_histograms_cross_tables_and_quantile_bounds_are_the_pooled_ones(
    split: tuple[int, list[int]],
) -> None:
    frames = sites_of(split)
    pooled = pd.concat(frames, ignore_index=True)
    edges = list(range(0, 420, 20))
    histogram = over_the_wire(
        parse_query({"kind": "histogram", "column": "days", "edges": edges}, SCHEMA), frames
    )
    assert histogram["combined"]["counts"] == np.histogram(pooled["days"], bins=edges)[0].tolist()
    table = over_the_wire(
        parse_query({"kind": "cross_table", "rows": "ward", "by": "outcome"}, SCHEMA), frames
    )
    expected = pd.crosstab(pooled["ward"], pooled["outcome"]).reindex(
        index=["a", "b", "c"], columns=["no", "yes"]
    )
    assert table["combined"]["counts"] == expected.fillna(0).astype(int).to_numpy().tolist()
    fine = list(range(0, 401))
    quantiles = over_the_wire(
        parse_query(
            {"kind": "quantiles", "column": "days", "edges": fine, "probabilities": [0.1, 0.5, 0.9]}, SCHEMA
        ),
        frames,
    )
    for bound in quantiles["combined"]["quantiles"]:
        exact = np.quantile(pooled["days"], bound["probability"], method="inverted_cdf")
        assert bound["lower"] <= exact <= bound["upper"]
        assert bound["upper"] - bound["lower"] == 1.0


@settings(max_examples=15, deadline=None)
@given(split=splits)
def test_kaplan_meier_is_lifelines_on_the_pool(split: tuple[int, list[int]]) -> None:
    frames = sites_of(split)
    query = parse_query({"kind": "survival", "time": "days", "event": "died", "time_step": 1}, SCHEMA)
    result = over_the_wire(query, frames)
    pooled = pd.concat(frames, ignore_index=True)
    fitter = KaplanMeierFitter().fit(pooled["days"], pooled["died"])
    combined = result["combined"]
    expected = fitter.survival_function_at_times(combined["times"]).to_numpy()
    np.testing.assert_allclose(combined["survival"], expected, atol=1e-12)
    assert combined["times"] == sorted(pooled["days"].unique().tolist())


def test_a_label_with_two_classes_is_an_event_column_its_second_class_the_event() -> None:
    frames = sites_of((3, [40, 50]))
    result = over_the_wire(
        parse_query({"kind": "survival", "time": "days", "event": "outcome", "time_step": 7}, SCHEMA), frames
    )
    pooled = pd.concat(frames, ignore_index=True)
    assert sum(result["combined"]["events"]) == int((pooled["outcome"] == "yes").sum())


@settings(max_examples=30, deadline=None)
@given(split=splits, min_count=st.integers(2, 8), step=st.sampled_from([1, 10, 30]))
def test_survival_steps_merge_until_every_count_reaches_the_minimum(
    split: tuple[int, list[int]], min_count: int, step: int
) -> None:
    """Every count a site sends, and every difference of two, is 0 or at least its minimum;
    the combined curve is lifelines' on the pooled rows with each time moved to the end of
    its site's merged step (the coarsening is all that changes)."""
    query = parse_query({"kind": "survival", "time": "days", "event": "died", "time_step": step}, SCHEMA)
    frames, moved = [], []
    for frame in sites_of(split):
        died, censored = int(frame["died"].sum()), int(len(frame) - frame["died"].sum())
        if any(0 < count < min_count for count in (died, censored, len(frame))):
            with pytest.raises(ConfigurationError, match="minimum"):
                site_answer(query, table_of(frame), min_count=min_count)
            continue  # the site refuses: its totals alone would break its minimum
        frames.append(frame)
        answer = site_answer(query, table_of(frame), min_count=min_count)
        at_risk, events = np.asarray(answer["at_risk"]), np.asarray(answer["events"])
        exits = -np.diff(np.append(at_risk, 0))
        for count in (*events, *exits, *(exits - events)):
            assert count == 0 or count >= min_count
        assert at_risk[0] == len(frame)
        assert events.sum() == frame["died"].sum()
        ends = np.asarray(answer["times"])
        grid = np.ceil(frame["days"].to_numpy() / step) * step
        moved.append(
            frame.assign(days=ends[np.searchsorted(ends, grid, side="left").clip(max=len(ends) - 1)])
        )
    if not frames:
        return
    result = over_the_wire(query, frames, min_count=min_count)
    pooled = pd.concat(moved, ignore_index=True)
    expected = (
        KaplanMeierFitter()
        .fit(pooled["days"], pooled["died"])
        .survival_function_at_times(result["combined"]["times"])
    )
    np.testing.assert_allclose(result["combined"]["survival"], expected.to_numpy(), atol=1e-12)


def test_a_survival_query_needs_a_time_grid() -> None:
    with pytest.raises(ConfigurationError, match="time_step"):
        parse_query({"kind": "survival", "time": "days", "event": "died"}, SCHEMA)


def test_small_cells_are_suppressed_at_the_site_exactly_below_the_threshold() -> None:
    frame = pd.DataFrame(
        {"age": [1.0] * 4 + [15.0] * 5 + [25.0] * 6, "days": 1.0, "died": 0.0, "ward": "a", "outcome": "no"}
    )
    query = parse_query({"kind": "histogram", "column": "age", "edges": [0, 10, 20, 30]}, SCHEMA)
    answer = site_answer(query, table_of(frame), min_count=5)
    assert answer == {"counts": [0, 5, 6], "suppressed": [True, False, False]}
    result = over_the_wire(query, [frame, frame], min_count=5)
    assert result["combined"]["suppressed"] == [True, False, False]
    assert result["combined"]["counts"] == [0, 10, 12]


def test_a_column_of_too_few_values_is_sent_without_its_sums() -> None:
    frame = pd.DataFrame(
        {"age": [50.0, 60.0, np.nan], "days": 1.0, "died": 0.0, "ward": "a", "outcome": "no"}
    )
    answer = site_answer(
        parse_query({"kind": "columns", "columns": ["age"]}, SCHEMA), table_of(frame), min_count=5
    )
    assert answer["columns"]["age"] == {
        "present": 0,
        "missing": 1,
        "sum": 0.0,
        "sum_sq": 0.0,
        "suppressed": True,
    }


def test_laplace_noise_has_the_scale_epsilon_asks_for() -> None:
    frame = pd.DataFrame({"age": [15.0] * 500, "days": 1.0, "died": 0.0, "ward": "a", "outcome": "no"})
    query = parse_query({"kind": "histogram", "column": "age", "edges": [0, 10, 20], "epsilon": 0.5}, SCHEMA)
    rng = np.random.default_rng(0)
    noisy = np.array(
        [site_answer(query, table_of(frame), min_count=1, rng=rng)["counts"][1] for _ in range(3000)]
    )
    # Laplace(1/0.5) has mean 0 and standard deviation 2*sqrt(2); rounding adds 1/12 variance.
    assert abs(noisy.mean() - 500) < 0.2
    assert noisy.std() == pytest.approx(np.sqrt(8 + 1 / 12), rel=0.06)


def test_noise_is_refused_where_a_row_moves_more_than_one_cell() -> None:
    with pytest.raises(ConfigurationError, match="counting queries"):
        parse_query({"kind": "columns", "epsilon": 1.0}, SCHEMA)


@settings(max_examples=20, deadline=None)
@given(split=splits, kind=st.sampled_from(["columns", "correlation", "histogram", "cross_table"]))
def test_a_secure_sum_of_vectors_gives_the_clear_total(split: tuple[int, list[int]], kind: str) -> None:
    frames = sites_of(split)
    spec = {
        "columns": {"kind": "columns", "columns": ["age", "days"]},
        "correlation": {"kind": "correlation", "columns": ["age", "days"]},
        "histogram": {"kind": "histogram", "column": "days", "edges": [0, 100, 200, 400]},
        "cross_table": {"kind": "cross_table", "rows": "ward", "by": "outcome"},
    }[kind]
    query = parse_query(spec, SCHEMA)
    vectors = [
        answer_vector(query, site_answer(query, table_of(f), min_count=1, secure=True)) for f in frames
    ]
    secure = combine_total(query, answer_of_vector(query, np.sum(vectors, axis=0)), min_count=1)
    clear = over_the_wire(query, frames)
    # The clear answers carry suppression marks (none at min_count 1); the secure total too.
    assert _close(secure["combined"], clear["combined"])


def _close(a: object, b: object) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return bool(np.isclose(a, b, rtol=1e-9, atol=1e-9))
    return a == b


def test_the_server_suppresses_a_secure_totals_small_cells() -> None:
    query = parse_query({"kind": "histogram", "column": "days", "edges": [0, 10, 20]}, SCHEMA)
    result = combine_total(query, {"counts": [3, 7]}, min_count=5)
    assert result["combined"]["counts"] == [0, 7]
    assert result["combined"]["suppressed"] == [True, False]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), sizes=st.lists(st.integers(20, 80), min_size=2, max_size=4))
def test_cross_site_evaluation_is_scikit_learn_on_the_pooled_scores(seed: int, sizes: list[int]) -> None:
    rng = np.random.default_rng(seed)
    query = parse_query({"kind": "evaluation", "versions": [7], "num_classes": 2}, SCHEMA)
    sites = []
    for size in sizes:
        labels = rng.integers(0, 2, size)
        scores = np.clip(labels * 0.3 + rng.random(size) * 0.7, 0, 1)
        sites.append((labels, scores))
    answers = {
        f"site {i}": parse_answer(query, json.loads(json.dumps(evaluation_answer(query, [s], min_count=5))))
        for i, s in enumerate(sites)
    }
    combined = combine_answers(query, answers)["versions"]["7"]["combined"]
    labels = np.concatenate([s[0] for s in sites])
    scores = np.concatenate([s[1] for s in sites])
    assert combined["accuracy"] == pytest.approx(accuracy_score(labels, scores >= 0.5), abs=1e-12)
    assert combined["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(labels, scores >= 0.5), abs=1e-12
    )
    assert abs(combined["roc_auc"] - roc_auc_score(labels, scores)) <= combined["roc_auc_bound"] + 1e-12


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "histogram", "column": "ward", "edges": [0, 1]}, "categorical"),
        ({"kind": "histogram", "column": "nope", "edges": [0, 1]}, "schema"),
        ({"kind": "histogram", "column": "age", "edges": [1, 0]}, "increasing"),
        ({"kind": "cross_table", "rows": "age", "by": "outcome"}, "is numeric; a cross-table counts"),
        ({"kind": "histogram", "column": "age"}, "edges is required"),
        ({"kind": "median"}, "unknown query kind"),
        ({"kind": "columns", "sql": "drop"}, "takes no sql"),
        ({"kind": "evaluation", "versions": []}, "versions"),
        ({"kind": "histogram", "column": "age", "edges": [0, 1], "epsilon": 0}, "epsilon"),
    ],
)
def test_bad_queries_are_refused_with_the_reason(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_query(spec, SCHEMA)


@pytest.mark.parametrize(
    "answer",
    [
        {"counts": [1, 2], "suppressed": [False, False]},
        {"counts": [1, -2, 3], "suppressed": [False, False, False]},
        {"counts": [1, 2.5, 3], "suppressed": [False, False, False]},
        {"counts": [1, 2, 3], "suppressed": [True, False, False]},
        {"counts": "many"},
    ],
)
def test_a_hostile_sites_answer_is_refused(answer: dict[str, object]) -> None:
    query = parse_query({"kind": "histogram", "column": "age", "edges": [0, 1, 2, 3]}, SCHEMA)
    with pytest.raises(ConfigurationError):
        parse_answer(query, answer)


def test_impossible_column_sums_are_refused() -> None:
    query = parse_query({"kind": "columns", "columns": ["age"]}, SCHEMA)
    bad = {"columns": {"age": {"present": 2, "missing": 0, "sum": 10.0, "sum_sq": 1.0, "suppressed": False}}}
    with pytest.raises(ConfigurationError, match="real values"):
        parse_answer(query, bad)


@settings(max_examples=15, deadline=None)
@given(split=splits)
def test_a_yes_no_column_is_cross_tabulated_as_two_levels(split: tuple[int, list[int]]) -> None:
    frames = sites_of(split)
    query = parse_query({"kind": "cross_table", "rows": "died", "by": "outcome"}, SCHEMA)
    assert query.row_levels == ("no", "yes")
    table = over_the_wire(query, frames)
    pooled = pd.concat(frames, ignore_index=True)
    expected = pd.crosstab(pooled["died"], pooled["outcome"]).reindex(index=[0.0, 1.0], columns=["no", "yes"])
    assert table["combined"]["counts"] == expected.fillna(0).astype(int).to_numpy().tolist()


def test_queries_describe_themselves() -> None:
    query = parse_query({"kind": "cross_table", "rows": "ward", "by": "outcome"}, SCHEMA)
    assert query.kind is QueryKind.CROSS_TABLE
    assert query.describe() == "cross-table: ward by outcome"
    assert query.to_json()["row_levels"] == ["a", "b", "c"]


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), classes=st.sampled_from([2, 3]))
def test_a_securely_summed_evaluation_gives_the_clear_combined_figures(seed: int, classes: int) -> None:
    rng = np.random.default_rng(seed)
    query = parse_query({"kind": "evaluation", "versions": [3, 5], "num_classes": classes}, SCHEMA)
    answers = []
    for size in (30, 45, 25):
        labels = rng.integers(0, classes, size)
        raw = rng.random((size, classes))
        scores = raw / raw.sum(axis=1, keepdims=True)
        pair = (labels, scores[:, 1] if classes == 2 else scores)
        answers.append(evaluation_answer(query, [pair, pair], min_count=5))
    total = answer_of_vector(query, np.sum([answer_vector(query, a) for a in answers], axis=0))
    secure = combine_total(query, parse_answer(query, total, secure=True), min_count=5)
    clear = combine_answers(query, {f"site {i}": parse_answer(query, a) for i, a in enumerate(answers)})
    for version in ("3", "5"):
        assert _close(secure["versions"][version]["combined"], clear["versions"][version]["combined"])
        assert secure["versions"][version]["sites"] == {}
