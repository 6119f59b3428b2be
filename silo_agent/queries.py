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

import json
import logging
import math
import secrets
from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from federation.analytics.queries import (
    Query,
    QueryKind,
    answer_vector,
    evaluation_answer,
    evaluation_site_metrics,
    parse_query,
    site_answer,
)
from federation.data.schema import DataSchema
from federation.errors import FederationError
from federation.protocol import ModelVersionRef, QueryTask, StudySettings
from silo_agent.client import AgentClient
from silo_agent.config import Policy
from silo_agent.errors import ApiError
from silo_agent.local_data import DataCache, site_table
from silo_agent.policy import needs_server_approvals, study_refusal
from silo_agent.secure_sum_keys import ANSWERS_FILE, QuestionKeys, append_answer_record, secure_phase

logger = logging.getLogger(__name__)

#: The largest answer the agent sends; the server takes 2.5 MB JSON bodies.
MAX_ANSWER_BYTES = 2_500_000

#: Scores a model version on the site's held-out rows: (class indices, scores).
Scorer = Callable[[StudySettings, ModelVersionRef], tuple[NDArray[np.int64], NDArray[np.float64]]]


def spent_epsilon(answers_file: Path) -> float:
    """The epsilon this site's answers to noised queries have spent, from its own record."""
    if not answers_file.exists():
        return 0.0
    total = 0.0
    for line in answers_file.read_text(encoding="utf-8").splitlines():
        try:
            total += float(json.loads(line).get("epsilon") or 0.0)
        except (ValueError, TypeError, AttributeError):
            logger.error(
                "%s holds an unreadable line: counting every noised query as over the limit", answers_file
            )
            return math.inf
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
        self._keys = QuestionKeys(state_dir / "query-keys", "secure answer")
        self._state_dir = state_dir
        self._scorer = scorer

    def answer(self, task: QueryTask) -> bool:
        """Send the answer (or this step of a secure one) or the refusal; True if a refusal.
        Whatever goes wrong here ends in a refusal with its reason, never in a query left
        waiting at this site until its deadline."""
        try:
            schema = DataSchema.from_json(dict(task.data_schema))
            query = parse_query(dict(task.query), schema)
        except FederationError as error:
            return self._refuse(task, None, f"this site cannot read the query: {error}")
        approved = self._client.me().approved_study_ids() if needs_server_approvals(self._policy) else ()
        reason = query_refusal(
            self._policy, task, query, approved, spent_epsilon(self._state_dir / ANSWERS_FILE)
        )
        if reason is not None:
            return self._refuse(task, query, reason)
        try:
            body = self._body(task, query, schema)
        except Exception as error:  # any failure with this site's own data ends in a refusal
            # The detail stays in this log; the coordinator learns that this site cannot answer.
            logger.exception("the query %d of study %r cannot be answered", task.query_id, task.study_name)
            return self._refuse(task, query, f"this site could not answer: {_public_reason(error)}")
        if len(json.dumps(body)) > MAX_ANSWER_BYTES:
            return self._refuse(task, query, "this site's answer would be larger than the server takes")
        try:
            self._client.post_query(task.query_id, body)
        except ApiError as error:
            if error.status >= 500:
                raise
            logger.error("the server refused this site's answer to query %d: %s", task.query_id, error)
            return self._refuse(task, query, f"the server did not take this site's answer ({error.code})")
        self._record(task, query, refused=None)
        if secure_phase(task.secure_aggregation) == "mask":
            self._keys.discard(task.query_id)
        logger.info("answered query %d of study %r (%s)", task.query_id, task.study_name, query.describe())
        return False

    def _refuse(self, task: QueryTask, query: Query | None, reason: str) -> bool:
        logger.warning("refusing query %d of study %r: %s", task.query_id, task.study_name, reason)
        self._client.post_query(task.query_id, {"refused": reason})
        self._record(task, query, refused=reason)
        return True

    def _body(self, task: QueryTask, query: Query, schema: DataSchema) -> dict[str, object]:
        min_count = self._policy.analytics.min_count
        if secure_phase(task.secure_aggregation) == "keys":
            return {
                "public_key": self._keys.new_public_key(task.query_id),
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
        masked: dict[str, object] = {"masked": self._masked(task, answer_vector(query, answer))}
        if query.kind is QueryKind.EVALUATION:  # its own figures, never its histograms
            return {**masked, "metrics": evaluation_site_metrics(query, answer)}
        return masked

    def _record(self, task: QueryTask, query: Query | None, *, refused: str | None) -> None:
        """The site's own record: the query, the step, the epsilon spent or the refusal."""
        final = secure_phase(task.secure_aggregation) in ("", "mask")
        spent = query is not None and query.epsilon and refused is None and final
        entry = {
            "study_id": task.study_id,
            "study": task.study_name,
            "query_id": task.query_id,
            "query": query.describe() if query is not None else "unreadable",
            "step": secure_phase(task.secure_aggregation) or "answer",
            "epsilon": query.epsilon if spent and query is not None else None,
            "refused": refused,
        }
        append_answer_record(self._state_dir, entry)

    def _masked(self, task: QueryTask, vector: NDArray[np.float64]) -> str:
        roster = dict((task.secure_aggregation or {}).get("roster", {}))  # type: ignore[call-overload]
        return self._keys.masked(
            task.query_id,
            vector,
            site_id=self._institution_id,
            roster=roster,
            question=f"query-{task.query_id}",
        )


def _public_reason(error: Exception) -> str:
    """What the coordinator may read of a failure: its kind of trouble, never a file's value."""
    text = str(error)
    if "minimum" in text:
        return text  # the site's own threshold, a policy fact
    return "its data could not be read for this query (the agent's log says why)"
