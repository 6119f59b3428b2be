"""The agent's side of the data agreement: it answers with aggregates of its own file, or
refuses by its policy (study not approved, too few rows, secure aggregation demanded)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from federation.data import DataSchema
from federation.data.agreement import summary_length
from federation.privacy import secagg
from federation.privacy.secure_sum import from_text, masked_input, masked_length, unmasked_sum
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


def answerer(tmp_path: Path, client: RecordingClient, policy: Policy, rows: int = 12) -> SummaryAnswerer:
    return SummaryAnswerer(
        client=client,  # type: ignore[arg-type]
        policy=policy,
        data=site_file(tmp_path, rows),
        institution_id=2,
        state_dir=tmp_path / "state",
    )


def answer(tmp_path: Path, policy: Policy, rows: int = 12, task: SummaryTask = TASK) -> Mapping[str, object]:
    client = RecordingClient()
    answerer(tmp_path, client, policy, rows).answer(task)
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
            "ask again with secure aggregation",
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


SECURE_SCHEMA = {
    **SCHEMA,
    "features": [SCHEMA["features"][0], {**SCHEMA["features"][1], "categories": ["icu", "onco"]}],
}  # type: ignore[index]


def secure_task(step: dict[str, object], schema: dict[str, object] = SECURE_SCHEMA) -> SummaryTask:
    return SummaryTask(
        request_id=7,
        deadline_at="",
        study_id=3,
        study_name="Wards",
        data_schema=schema,
        secure_aggregation=step,
    )


def test_a_secure_summary_sends_a_key_then_a_masked_vector_that_only_sums_to_the_truth(
    tmp_path: Path,
) -> None:
    policy = Policy(approved_studies=("Wards",), summaries=SummaryPolicy(require_secure_aggregation=True))
    keys_body = answer(tmp_path, policy, task=secure_task({"phase": "keys"}))
    own_key = base64.b64decode(str(keys_body["public_key"]))
    key_file = tmp_path / "state" / "summary-keys" / "7.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    # The other site of the sum: its key, and its masked input of zeros (the masks alone).
    other_private = secagg.private_key_bytes()
    roster = {2: own_key, 5: secagg.public_key_bytes(other_private)}
    step = {"phase": "mask", "roster": {str(k): base64.b64encode(v).decode() for k, v in roster.items()}}
    client = RecordingClient()
    answerer(tmp_path, client, policy).answer(secure_task(step))
    [(_, body)] = client.sent
    length = summary_length(DataSchema.from_json(SECURE_SCHEMA))
    masked = from_text(body["masked"], masked_length(length))
    ages = [40 + i for i in range(12)]
    truth = [12, sum(ages), sum(a * a for a in ages), 6, 6]  # count, age sums, icu and onco rows
    assert not np.allclose(unmasked_sum([masked]), truth)  # alone, the vector says nothing
    others = masked_input(
        np.zeros(length), site_id=5, private_key=other_private, roster=roster, question="summary-request-7"
    )
    np.testing.assert_allclose(unmasked_sum([masked, others]), truth, atol=1e-4)
    assert not key_file.exists()  # used once


def test_a_secure_summary_refuses_values_the_schema_does_not_declare(tmp_path: Path) -> None:
    body = answer(tmp_path, Policy(approved_studies=("Wards",)), task=secure_task({"phase": "keys"}, SCHEMA))
    assert "values of ward that the schema does not declare" in str(body["refused"])


def test_a_step_that_cannot_be_taken_is_refused_with_the_detail_kept_here(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = RecordingClient()
    step = {"phase": "mask", "roster": {"2": base64.b64encode(bytes(32)).decode()}}
    answerer(tmp_path, client, Policy(approved_studies=("Wards",))).answer(secure_task(step))
    [(_, body)] = client.sent  # refused at once: the coordinator does not wait for the deadline
    assert body == {
        "refused": "this site's data could not be summarised for this study (the agent's log says why)"
    }
    assert "key for the secure summary is lost" in caplog.text


def test_the_site_keeps_its_own_record_of_what_it_answered(tmp_path: Path) -> None:
    answer(tmp_path, Policy(approved_studies=("Wards",)), rows=12)
    answer(tmp_path, Policy(approved_studies=("Wards",)), rows=3)  # below min_rows: refused
    lines = (tmp_path / "state" / "answers.jsonl").read_text().splitlines()
    first, second = (json.loads(line) for line in lines)
    assert (first["study"], first["request_id"], first["step"], first["rows"], first["refused"]) == (
        "Wards",
        7,
        "summary",
        12,
        None,
    )
    assert second["rows"] is None
    assert "min_rows" in second["refused"]
