"""The data agreement: per-site summaries combine to the pooled scaling and the union of
categories, checked against pandas and scikit-learn on the pooled rows."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.preprocessing import StandardScaler

from federation.data import DataSchema, Standardizer, load_csv
from federation.data.agreement import (
    SiteSummary,
    combine_summaries,
    summarise,
    summary_length,
    summary_of_vector,
    summary_vector,
    undeclared_values,
    widened_schema,
)
from federation.data.csv_loader import categories_in
from federation.errors import ConfigurationError

SCHEMA = DataSchema.from_json(
    {
        "features": [
            {"name": "age", "kind": "numeric"},
            {"name": "smoker", "kind": "boolean"},
            {"name": "ward", "kind": "categorical", "categories": ["icu"]},
        ],
        "label": "outcome",
        "task": "binary",
        "classes": ["no", "yes"],
    }
)
WARDS = ["icu", "cardio", "onco", "neuro"]


def write_site(path: Path, rows: list[tuple[float, bool, str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["age", "smoker", "ward", "outcome"])
        writer.writerows([age, "yes" if smoker else "no", ward, label] for age, smoker, ward, label in rows)
    return path


def summary_of(path: Path) -> SiteSummary:
    """What an agent sends: its file read with the categories it holds."""
    widened = widened_schema(SCHEMA, categories_in(path, SCHEMA))
    return summarise(widened, load_csv(path, widened).features)


site_rows = st.lists(
    st.tuples(
        st.floats(min_value=-1e3, max_value=1e3, allow_nan=False).map(lambda v: round(v, 3)),
        st.booleans(),
        st.sampled_from(WARDS),
        st.sampled_from(["no", "yes"]),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=40, deadline=None)
@given(sites=st.lists(site_rows, min_size=1, max_size=4))
def test_combined_summaries_give_the_pooled_scaling_and_the_union_of_categories(
    sites: list[list[tuple[float, bool, str, str]]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("sites")
    paths = [write_site(folder / f"site{i}.csv", rows) for i, rows in enumerate(sites)]
    agreed = combine_summaries(SCHEMA, [summary_of(path) for path in paths])

    pooled = pd.concat([pd.read_csv(path, keep_default_na=False) for path in paths], ignore_index=True)
    held = set(pooled["ward"])
    assert agreed.schema.features[2].categories == ("icu", *sorted(held - {"icu"}))
    # The reference: pandas' one-hot encoding of the pooled rows, in the agreed column order,
    # scaled by scikit-learn (population standard deviation; constant columns scaled by 1).
    one_hot = pd.get_dummies(pd.Categorical(pooled["ward"], categories=agreed.schema.features[2].categories))
    encoded = np.column_stack(
        [pooled["age"].to_numpy(float), (pooled["smoker"] == "yes").to_numpy(float), one_hot.to_numpy(float)]
    )
    reference = StandardScaler().fit(encoded)
    scaler = Standardizer.from_moments(agreed.moments)
    assert agreed.moments.count == len(pooled)
    # The sites read their files as float32, as they train on them: agreement to its
    # precision (values up to 1e3 are stored to about 6e-5).
    np.testing.assert_allclose(scaler.mean, reference.mean_, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(scaler.std, reference.scale_, rtol=1e-5, atol=1e-4)


def test_a_site_summary_holds_aggregates_only(tmp_path: Path) -> None:
    path = write_site(tmp_path / "a.csv", [(50.0, True, "onco", "yes"), (70.0, False, "icu", "no")])
    summary = summary_of(path).to_json()
    assert summary == {
        "count": 2,
        "numeric": {"age": {"sum": 120.0, "sum_sq": 7400.0}, "smoker": {"sum": 1.0, "sum_sq": 1.0}},
        "categories": {"ward": {"icu": 1, "onco": 1}},
    }
    assert SiteSummary.from_json(summary, SCHEMA) == summary_of(path)


GOOD = {
    "count": 2,
    "numeric": {"age": {"sum": 120.0, "sum_sq": 7400.0}, "smoker": {"sum": 1.0, "sum_sq": 1.0}},
    "categories": {"ward": {"icu": 1, "onco": 1}},
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"count": 0}, "whole number in 1.."),
        ({"count": True}, "whole number in 1.."),
        ({"count": 10**400}, "whole number in 1.."),
        ({"categories": {"ward": {"icu": 1, "x" * 201: 1}}}, "at most 200 characters"),
        (
            {"count": 1001, "categories": {"ward": {f"P{i:05d}": 1 for i in range(1001)}}},
            "at most 1000 values",
        ),
        ({"numeric": {"age": {"sum": 1.0, "sum_sq": 1.0}}}, "missing ['smoker']"),
        ({"numeric": {**GOOD["numeric"], "bmi": {"sum": 1.0, "sum_sq": 1.0}}}, "unexpected ['bmi']"),
        ({"numeric": {**GOOD["numeric"], "age": {"sum": float("nan"), "sum_sq": 1.0}}}, "finite"),
        # Two values summing to 120 cannot have squares summing to 100.
        ({"numeric": {**GOOD["numeric"], "age": {"sum": 120.0, "sum_sq": 100.0}}}, "cannot come from 2"),
        ({"categories": {"ward": {"icu": 1}}}, "do not add up to 2"),
        ({"categories": {"ward": {"icu": 1, " onco": 1}}}, "non-empty values"),
        ({"categories": {"ward": {"icu": 2, "onco": 0}}}, "row counts >= 1"),
        ({"categories": {}}, "missing ['ward']"),
    ],
)
def test_a_malformed_summary_is_refused_with_the_reason(change: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SiteSummary.from_json({**GOOD, **change}, SCHEMA)


def test_categories_in_lists_every_value_declared_or_not(tmp_path: Path) -> None:
    path = write_site(tmp_path / "a.csv", [(1.0, True, "neuro", "no"), (2.0, False, "icu", "yes")])
    assert categories_in(path, SCHEMA) == {"ward": {"neuro", "icu"}}
    with pytest.raises(Exception, match="not one of the declared categories"):
        load_csv(path, SCHEMA)  # the declared schema alone refuses the undeclared value


@settings(max_examples=30, deadline=None)
@given(sites=st.lists(site_rows, min_size=1, max_size=3))
def test_the_summary_vectors_add_up_to_the_combined_summary(
    sites: list[list[tuple[float, bool, str, str]]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    declared = widened_schema(SCHEMA, {"ward": set(WARDS)})  # every value declared: a fixed layout
    folder = tmp_path_factory.mktemp("sites")
    summaries = [
        summarise(declared, load_csv(write_site(folder / f"s{i}.csv", rows), declared).features)
        for i, rows in enumerate(sites)
    ]
    total = summary_of_vector(np.sum([summary_vector(s, declared) for s in summaries], axis=0), declared)
    assert len(summary_vector(summaries[0], declared)) == summary_length(declared)
    separate, summed = combine_summaries(declared, summaries), combine_summaries(declared, [total])
    assert summed.schema == separate.schema
    assert summed.moments.count == separate.moments.count
    np.testing.assert_allclose(summed.moments.sum, separate.moments.sum, rtol=1e-12)
    np.testing.assert_allclose(summed.moments.sum_sq, separate.moments.sum_sq, rtol=1e-12)
    assert undeclared_values(summaries[0], SCHEMA) == (
        ["ward"] if set(summaries[0].categories["ward"]) - {"icu"} else []
    )
