"""The agent's side of federated queries: it answers from its own file with small cells
suppressed, or refuses by its policy (secure aggregation demanded, epsilon spent, model
evaluations off, a study not approved), and keeps its own record of every answer."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from federation.protocol import QueryTask
from silo_agent.config import AnalyticsPolicy, DataSource, DataSourceKind, Policy, load_config
from silo_agent.errors import ApiError, ConfigError
from silo_agent.local_data import DataCache
from silo_agent.queries import QueryAnswerer, spent_epsilon

pytestmark = pytest.mark.analytics

SCHEMA = {
    "features": [
        {"name": "age", "kind": "numeric"},
        {"name": "days", "kind": "numeric"},
        {"name": "died", "kind": "boolean"},
        {"name": "ward", "kind": "categorical", "categories": ["icu", "onco"]},
    ],
    "label": "outcome",
    "task": "binary",
    "classes": ["no", "yes"],
}


def task(
    query: Mapping[str, object], *, secure: Mapping[str, object] | None = None, query_id: int = 9
) -> QueryTask:
    return QueryTask(
        query_id=query_id,
        deadline_at="",
        study_id=3,
        study_name="Wards",
        data_schema=SCHEMA,
        query=query,
        secure_aggregation=secure,
    )


class RecordingClient:
    """Records what the agent sends (the only edge faked here)."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, Mapping[str, object]]] = []

    def post_query(self, query_id: int, body: Mapping[str, object]) -> None:
        self.sent.append((query_id, body))


def site_file(tmp_path: Path) -> DataCache:
    """Ages 40..51 (one missing), 7 in the ICU and 5 in oncology, days 10..120, half died."""
    path = tmp_path / "site.csv"
    lines = ["age,days,died,ward,outcome"]
    for i in range(12):
        age = "" if i == 3 else str(40 + i)
        lines.append(f"{age},{10 * (i + 1)},{'yes' if i % 2 else 'no'},{'icu' if i < 7 else 'onco'},no")
    path.write_text("\n".join(lines) + "\n")
    return DataCache(DataSource(DataSourceKind.CSV, csv_path=path), institution_id=1)


def answer(tmp_path: Path, policy: Policy, query_task: QueryTask) -> Mapping[str, object]:
    client = RecordingClient()
    QueryAnswerer(
        client=client,  # type: ignore[arg-type]
        policy=policy,
        data=site_file(tmp_path),
        institution_id=2,
        state_dir=tmp_path / "state",
        scorer=lambda study, version: (np.zeros(1, dtype=np.int64), np.zeros(1)),
    ).answer(query_task)
    [(query_id, body)] = client.sent
    assert query_id == query_task.query_id
    return body


POLICY = Policy(approved_studies=("Wards",))


def test_the_answer_counts_the_sites_rows_and_suppresses_below_its_minimum(tmp_path: Path) -> None:
    body = answer(tmp_path, POLICY, task({"kind": "cross_table", "rows": "ward", "by": "outcome"}))
    assert body == {"answer": {"counts": [[7, 0], [5, 0]], "suppressed": [[False, False], [False, False]]}}
    strict = Policy(approved_studies=("Wards",), analytics=AnalyticsPolicy(min_count=6))
    body = answer(
        tmp_path, strict, task({"kind": "cross_table", "rows": "ward", "by": "outcome"}, query_id=10)
    )
    assert body == {"answer": {"counts": [[7, 0], [0, 0]], "suppressed": [[False, False], [True, False]]}}


def test_missing_values_are_counted_not_refused(tmp_path: Path) -> None:
    body = answer(tmp_path, POLICY, task({"kind": "columns", "columns": ["age"]}))
    ages = [40 + i for i in range(12) if i != 3]
    assert body["answer"]["columns"]["age"] == {  # type: ignore[index]
        "present": 11,
        "missing": 1,
        "sum": float(sum(ages)),
        "sum_sq": float(sum(a * a for a in ages)),
        "suppressed": False,
    }


def test_a_survival_query_reads_a_boolean_event_column_and_merges_small_steps(tmp_path: Path) -> None:
    one_step = answer(
        tmp_path, POLICY, task({"kind": "survival", "time": "days", "event": "died", "time_step": 10})
    )
    # One exit every 10 days, below the minimum of 5: steps merge until 5 died and 5 were
    # censored; the last two rows join the step before.
    assert one_step["answer"] == {"times": [120.0], "at_risk": [12], "events": [6], "suppressed": [True]}
    lenient = Policy(approved_studies=("Wards",), analytics=AnalyticsPolicy(min_count=1))
    query = {"kind": "survival", "time": "days", "event": "died", "time_step": 10}
    exact = answer(tmp_path, lenient, task(query, query_id=11))["answer"]
    assert exact["times"] == [10.0 * (i + 1) for i in range(12)]  # type: ignore[index]
    assert exact["at_risk"] == list(range(12, 0, -1))  # type: ignore[index]
    assert exact["events"] == [i % 2 for i in range(12)]  # type: ignore[index]


@pytest.mark.parametrize(
    ("policy", "query", "reason"),
    [
        (
            Policy(approved_studies=("Wards",), analytics=AnalyticsPolicy(require_secure_aggregation=True)),
            {"kind": "columns"},
            "demands secure aggregation",
        ),
        (
            Policy(approved_studies=("Wards",), analytics=AnalyticsPolicy(max_epsilon=0.4)),
            {"kind": "histogram", "column": "age", "edges": [0, 50, 100], "epsilon": 0.5},
            "past its limit",
        ),
        (
            Policy(approved_studies=("Wards",), analytics=AnalyticsPolicy(allow_evaluation=False)),
            {"kind": "evaluation", "versions": [4], "num_classes": 2},
            "allow_evaluation",
        ),
        (Policy(approved_studies=("Other study",)), {"kind": "columns"}, "Wards"),
        (POLICY, {"kind": "correlation", "columns": ["age", "days"]}, "minimum"),
    ],
)
def test_a_query_outside_the_sites_policy_is_refused_with_the_reason(
    tmp_path: Path, policy: Policy, query: Mapping[str, object], reason: str
) -> None:
    strict = Policy(
        approved_studies=policy.approved_studies,
        analytics=AnalyticsPolicy(
            min_count=20 if query["kind"] == "correlation" else policy.analytics.min_count,
            require_secure_aggregation=policy.analytics.require_secure_aggregation,
            max_epsilon=policy.analytics.max_epsilon,
            allow_evaluation=policy.analytics.allow_evaluation,
        ),
    )
    body = answer(tmp_path, strict, task(query))
    assert reason in str(body["refused"])


def test_the_sites_own_record_counts_the_epsilon_it_spent(tmp_path: Path) -> None:
    policy = Policy(approved_studies=("Wards",), analytics=AnalyticsPolicy(max_epsilon=1.0))
    noised = {"kind": "histogram", "column": "age", "edges": [0, 50, 100], "epsilon": 0.5}
    for query_id in (1, 2):
        assert "answer" in answer(tmp_path, policy, task(noised, query_id=query_id))
    assert spent_epsilon(tmp_path / "state" / "answers.jsonl") == pytest.approx(1.0)
    third = answer(tmp_path, policy, task(noised, query_id=3))
    assert "past its limit" in str(third["refused"])
    records = [json.loads(line) for line in (tmp_path / "state" / "answers.jsonl").read_text().splitlines()]
    assert [(r["query_id"], r["epsilon"], r["refused"] is None) for r in records] == [
        (1, 0.5, True),
        (2, 0.5, True),
        (3, None, False),
    ]
    assert all("40" not in json.dumps(r) for r in records)  # no value of the file


def test_a_secure_query_sends_a_key_and_the_sites_minimum_then_a_masked_vector(tmp_path: Path) -> None:
    query = {"kind": "histogram", "column": "age", "edges": [0, 50, 100]}
    keys = answer(tmp_path, POLICY, task(query, secure={"phase": "keys"}))
    assert set(keys) == {"public_key", "min_count"}
    assert keys["min_count"] == 5
    key_file = tmp_path / "state" / "query-keys" / "9.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    roster = {"2": keys["public_key"], "5": keys["public_key"]}
    masked = answer(tmp_path, POLICY, task(query, secure={"phase": "mask", "roster": roster}))
    assert set(masked) == {"masked"}
    assert not key_file.exists()  # one use


def test_the_analytics_policy_is_read_from_the_agent_file(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        'server_url = "http://127.0.0.1:1"\nstate_dir = "state"\n[data]\nbuiltin = "breast_cancer"\n'
        '[policy]\napproved_studies = ["*"]\n[policy.analytics]\nmin_count = 11\nmax_epsilon = 2\n'
        "allow_evaluation = false\n"
    )
    analytics = load_config(config).policy.analytics
    assert analytics == AnalyticsPolicy(min_count=11, max_epsilon=2.0, allow_evaluation=False)
    config.write_text(config.read_text().replace("min_count = 11", "min_count = 0"))
    with pytest.raises(ConfigError, match="min_count"):
        load_config(config)


def test_a_query_the_agent_cannot_read_is_refused_not_left_waiting(tmp_path: Path) -> None:
    body = answer(tmp_path, POLICY, task({"kind": "median", "column": "age"}))
    assert "cannot read the query" in str(body["refused"])


class RefusingServer(RecordingClient):
    """Refuses the first answer with a 400, as a server whose check an answer fails."""

    def post_query(self, query_id: int, body: Mapping[str, object]) -> None:
        if "answer" in body:
            raise ApiError(400, "invalid", "answer: counts must be whole numbers")
        super().post_query(query_id, body)


def test_an_answer_the_server_refuses_ends_in_a_refusal(tmp_path: Path) -> None:
    client = RefusingServer()
    QueryAnswerer(
        client=client,  # type: ignore[arg-type]
        policy=POLICY,
        data=site_file(tmp_path),
        institution_id=2,
        state_dir=tmp_path / "state",
        scorer=lambda study, version: (np.zeros(1, dtype=np.int64), np.zeros(1)),
    ).answer(task({"kind": "columns"}))
    [(_, body)] = client.sent
    assert "did not take this site's answer (invalid)" in str(body["refused"])


def test_an_unreadable_own_record_stops_noised_answers(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "answers.jsonl").write_text("{not json\n")
    assert spent_epsilon(tmp_path / "state" / "answers.jsonl") == float("inf")
    noised = {"kind": "histogram", "column": "age", "edges": [0, 50, 100], "epsilon": 0.1}
    limited = Policy(approved_studies=("Wards",), analytics=AnalyticsPolicy(max_epsilon=5.0))
    assert "past its limit" in str(answer(tmp_path, limited, task(noised))["refused"])
