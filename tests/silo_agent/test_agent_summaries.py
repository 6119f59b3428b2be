"""The agent's side of the data agreement: it answers with aggregates of its own file, or
refuses by its policy (study not approved, too few rows, secure aggregation demanded)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from federation.protocol import SummaryTask
from silo_agent.config import DataSource, DataSourceKind, Policy, SummaryPolicy, load_config
from silo_agent.errors import ConfigError
from silo_agent.local_data import DataCache
from silo_agent.summaries import SummaryAnswerer

SCHEMA = {
    "features": [
        {"name": "age", "kind": "numeric"},
        {"name": "ward", "kind": "categorical", "categories": ["icu"]},
    ],
    "label": "outcome",
    "task": "binary",
    "classes": ["no", "yes"],
}
TASK = SummaryTask(request_id=7, deadline_at="", study_id=3, study_name="Wards", data_schema=SCHEMA)


class RecordingClient:
    """Records what the agent sends (the only edge faked here)."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, Mapping[str, object]]] = []

    def post_summary(self, request_id: int, body: Mapping[str, object]) -> None:
        self.sent.append((request_id, body))


def site_file(tmp_path: Path, rows: int) -> DataCache:
    path = tmp_path / "site.csv"
    lines = ["age,ward,outcome"] + [f"{40 + i},{'icu' if i % 2 else 'onco'},no" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return DataCache(DataSource(DataSourceKind.CSV, csv_path=path), institution_id=1)


def answer(tmp_path: Path, policy: Policy, rows: int = 12) -> Mapping[str, object]:
    client = RecordingClient()
    SummaryAnswerer(client=client, policy=policy, data=site_file(tmp_path, rows)).answer(TASK)  # type: ignore[arg-type]
    [(request_id, body)] = client.sent
    assert request_id == 7
    return body


def test_the_answer_holds_sums_and_category_counts_with_undeclared_values(tmp_path: Path) -> None:
    body = answer(tmp_path, Policy(approved_studies=("Wards",)), rows=12)
    ages = [40 + i for i in range(12)]
    assert body == {
        "summary": {
            "count": 12,
            "numeric": {"age": {"sum": float(sum(ages)), "sum_sq": float(sum(a * a for a in ages))}},
            "categories": {"ward": {"icu": 6, "onco": 6}},  # "onco" is not declared: counted
        }
    }


@pytest.mark.parametrize(
    ("policy", "rows", "reason"),
    [
        (Policy(approved_studies=("Other",)), 12, "not approved by this hospital's policy"),
        (Policy(approved_studies=("3",), summaries=SummaryPolicy(min_rows=20)), 12, "min_rows = 20"),
        (
            Policy(approved_studies=("Wards",), summaries=SummaryPolicy(require_secure_aggregation=True)),
            12,
            "demands secure aggregation",
        ),
        (Policy(approved_studies=("Wards",)), 9, "min_rows = 10"),  # the default minimum
    ],
)
def test_the_policy_refuses_with_its_rule(tmp_path: Path, policy: Policy, rows: int, reason: str) -> None:
    body = answer(tmp_path, policy, rows=rows)
    assert list(body) == ["refused"]
    assert reason in str(body["refused"])


def test_the_summary_policy_is_read_from_the_config(tmp_path: Path) -> None:
    text = (
        'server_url = "https://fl.example.org"\n[data]\nbuiltin = "breast_cancer"\n'
        '[policy]\napproved_studies = ["*"]\n[policy.summaries]\nmin_rows = 25\n'
        "require_secure_aggregation = true\n"
    )
    path = tmp_path / "agent.toml"
    path.write_text(text)
    assert load_config(path).policy.summaries == SummaryPolicy(min_rows=25, require_secure_aggregation=True)
    path.write_text(text + "min_row = 3\n")
    with pytest.raises(ConfigError, match=r"policy\.summaries\.min_row"):
        load_config(path)
