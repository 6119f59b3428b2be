"""The site's side of federated queries: answer a query its data owner approved, or refuse it.

The server hands the agent only queries its data owner approved there; the agent's own
policy (``[policy.analytics]``) decides again: the study must be one the site takes part in,
every cell, bin or time step of fewer than ``min_count`` rows is suppressed before the answer
leaves (:func:`federation.analytics.queries.site_answer`), a site that demands secure
aggregation answers only securely summed queries, noised queries count against the site's
own ``max_epsilon``, and model evaluations may be switched off. Every answer and refusal is
logged and recorded in ``state_dir/answers.jsonl`` with the epsilon it spent, never a value.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from federation.analytics.queries import (
    Query,
    QueryKind,
    answer_vector,
    evaluation_answer,
    parse_query,
    site_answer,
)
from federation.data.schema import DataSchema
from federation.errors import FederationError
from federation.privacy import secagg
from federation.privacy.secure_sum import masked_input, to_text
from federation.protocol import ModelVersionRef, QueryTask, StudySettings
from silo_agent.client import AgentClient
from silo_agent.config import Policy
from silo_agent.errors import TaskError
from silo_agent.local_data import DataCache, site_table
from silo_agent.policy import needs_server_approvals, study_refusal

logger = logging.getLogger(__name__)

#: Scores a model version on the site's held-out rows: (class indices, scores).
Scorer = Callable[[StudySettings, ModelVersionRef], tuple[NDArray[np.int64], NDArray[np.float64]]]


def spent_epsilon(answers_file: Path) -> float:
    """The epsilon this site's answers to noised queries have spent, from its own record."""
    if not answers_file.exists():
        return 0.0
    total = 0.0
    for line in answers_file.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        total += float(entry.get("epsilon") or 0.0)
    return total


def query_refusal(
    policy: Policy, task: QueryTask, query: Query, server_approved: Collection[int], spent: float
) -> str | None:
    """The reason to refuse ``task`` under the site's policy, or None."""
    reason = study_refusal(policy, task.study_id, task.study_name, server_approved)
    if reason is not None:
        return reason
    rules = policy.analytics
    if (
        rules.require_secure_aggregation
        and task.secure_aggregation is None
        and query.kind is not QueryKind.EVALUATION
    ):
        return (
            "this site's policy demands secure aggregation for its answers "
            "(policy.analytics.require_secure_aggregation): ask again with secure aggregation"
        )
    if query.kind is QueryKind.EVALUATION and not rules.allow_evaluation:
        return "this site's policy does not evaluate models for queries (policy.analytics.allow_evaluation)"
    if query.epsilon is not None and spent + query.epsilon > rules.max_epsilon:
        return (
            f"this query's epsilon {query.epsilon:g} would take the site past its limit for queries "
            f"(spent {spent:g} of policy.analytics.max_epsilon = {rules.max_epsilon:g})"
        )
    return None


class QueryAnswerer:
    """Answers the federated queries of one enrolled site."""

    def __init__(
        self,
        *,
        client: AgentClient,
        policy: Policy,
        data: DataCache,
        institution_id: int,
        state_dir: Path,
        scorer: Scorer,
    ) -> None:
        self._client = client
        self._policy = policy
        self._data = data
        self._institution_id = institution_id
        self._keys = state_dir / "query-keys"
        self._answers = state_dir / "answers.jsonl"
        self._scorer = scorer

    def answer(self, task: QueryTask) -> bool:
        """Send the answer (or this step of a secure one) or the refusal; True if a refusal."""
        try:
            schema = DataSchema.from_json(dict(task.data_schema))
            query = parse_query(dict(task.query), schema)
        except FederationError as error:
            raise TaskError(f"the query cannot be read: {error}") from None
        approved = self._client.me().approved_study_ids() if needs_server_approvals(self._policy) else ()
        reason = query_refusal(self._policy, task, query, approved, spent_epsilon(self._answers))
        body = None
        if reason is None:
            try:
                body = self._body(task, query, schema)
            except (TaskError, FederationError) as error:
                # The detail stays in this log; the coordinator learns that this site cannot answer.
                logger.error(
                    "the query %d of study %r cannot be answered: %s", task.query_id, task.study_name, error
                )
                reason = f"this site could not answer: {_public_reason(error)} (the agent's log says more)"
        if reason is not None:
            logger.warning("refusing query %d of study %r: %s", task.query_id, task.study_name, reason)
            self._client.post_query(task.query_id, {"refused": reason})
            self._record(task, query, refused=reason)
            return True
        assert body is not None
        self._client.post_query(task.query_id, body)
        self._record(task, query, refused=None)
        if self._phase(task) == "mask":
            self._key_file(task.query_id).unlink(missing_ok=True)
        logger.info("answered query %d of study %r (%s)", task.query_id, task.study_name, query.describe())
        return False

    @staticmethod
    def _phase(task: QueryTask) -> str:
        return str((task.secure_aggregation or {}).get("phase", ""))

    def _body(self, task: QueryTask, query: Query, schema: DataSchema) -> dict[str, object]:
        min_count = self._policy.analytics.min_count
        if self._phase(task) == "keys":
            return {
                "public_key": base64.b64encode(self._new_key(task.query_id)).decode(),
                "min_count": min_count,
            }
        secure = task.secure_aggregation is not None
        if query.kind is QueryKind.EVALUATION:
            study = task.evaluation_study()
            scores = [self._scorer(study, version) for version in task.evaluation_versions()]
            answer = evaluation_answer(query, scores, min_count=min_count)
        else:
            rng = np.random.default_rng(secrets.randbits(128)) if query.epsilon else None
            table = site_table(self._data.source, schema)
            answer = site_answer(query, table, min_count=min_count, rng=rng, secure=secure)
        if not secure:
            return {"answer": answer}
        return {"masked": self._masked(task, answer_vector(query, answer))}

    def _record(self, task: QueryTask, query: Query, *, refused: str | None) -> None:
        """The site's own record: the query, the step, the epsilon spent or the refusal."""
        final = self._phase(task) in ("", "mask")
        entry = {
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "study_id": task.study_id,
            "study": task.study_name,
            "query_id": task.query_id,
            "query": query.describe(),
            "step": self._phase(task) or "answer",
            "epsilon": query.epsilon if refused is None and final and query.epsilon else None,
            "refused": refused,
        }
        self._answers.parent.mkdir(parents=True, exist_ok=True)
        with self._answers.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")

    def _key_file(self, query_id: int) -> Path:
        return self._keys / f"{query_id}.key"

    def _new_key(self, query_id: int) -> bytes:
        self._keys.mkdir(mode=0o700, parents=True, exist_ok=True)
        private_key = secagg.private_key_bytes()
        descriptor = os.open(self._key_file(query_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(private_key)
        return secagg.public_key_bytes(private_key)

    def _masked(self, task: QueryTask, vector: NDArray[np.float64]) -> str:
        key_file = self._key_file(task.query_id)
        if not key_file.exists():
            raise TaskError("this site's key for the secure query is lost; the coordinator must ask again")
        roster_json = dict((task.secure_aggregation or {}).get("roster", {}))  # type: ignore[call-overload]
        try:
            roster = {int(site): base64.b64decode(str(key)) for site, key in roster_json.items()}
            masked = masked_input(
                vector,
                site_id=self._institution_id,
                private_key=key_file.read_bytes(),
                roster=roster,
                question=f"query-{task.query_id}",
            )
        except (FederationError, ValueError, TypeError) as error:
            raise TaskError(f"the secure answer cannot be masked: {error}") from None
        return to_text(masked)


def _public_reason(error: Exception) -> str:
    """What the coordinator may read of a failure: its kind of trouble, never a file's value."""
    text = str(error)
    if "minimum" in text:
        return text  # the site's own threshold, a policy fact
    return "its data could not be read for this query"
