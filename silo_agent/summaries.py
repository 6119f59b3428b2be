"""The site's side of the data agreement: answer a study's summary request, or refuse it.

The answer holds aggregates only (:class:`federation.data.agreement.SiteSummary`: the row
count, sums, sums of squares and per-category row counts). The hospital's policy decides
first: the study must be one its data owner approved, and the file must hold at least
``policy.summaries.min_rows`` rows. A site whose policy sets
``policy.summaries.require_secure_aggregation`` answers only a request summed under secure
aggregation (:mod:`federation.privacy.secure_sum`), in two steps: a public key for the
request, then its summary as a fixed-point vector masked so that only the sum of every
site's vector means anything. Under secure aggregation only the schema's declared
categories can be summed: a site holding other values refuses rather than reveal them.
Every answer and refusal is logged here, and recorded in ``state_dir/answers.jsonl`` (the
site's own account of what it told the server), without any value from the file.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path

from federation.data.agreement import SiteSummary, summary_vector, undeclared_values
from federation.data.schema import DataSchema
from federation.errors import FederationError
from federation.protocol import SummaryTask
from silo_agent.client import AgentClient
from silo_agent.config import Policy
from silo_agent.errors import TaskError
from silo_agent.local_data import DataCache, site_summary
from silo_agent.policy import needs_server_approvals, study_refusal
from silo_agent.secure_sum_keys import QuestionKeys, append_answer_record, secure_phase

logger = logging.getLogger(__name__)


def summary_refusal(
    policy: Policy,
    task: SummaryTask,
    server_approved: Collection[int],
    summary: SiteSummary | None,
    schema: DataSchema | None = None,
) -> str | None:
    """The reason to refuse ``task`` (``summary``: the site's under the task's ``schema``,
    both None before its file is read)."""
    reason = study_refusal(policy, task.study_id, task.study_name, server_approved)
    if reason is not None:
        return reason
    if policy.summaries.require_secure_aggregation and task.secure_aggregation is None:
        return (
            "this site's policy demands secure aggregation for its summaries "
            "(policy.summaries.require_secure_aggregation): ask again with secure aggregation"
        )
    if summary is None or schema is None:
        return None
    if summary.count < policy.summaries.min_rows:
        return (
            f"this site holds fewer rows than its policy's minimum for summaries "
            f"(policy.summaries.min_rows = {policy.summaries.min_rows})"
        )
    undeclared = undeclared_values(summary, schema)
    if task.secure_aggregation is not None and undeclared:
        return (
            f"this site holds values of {', '.join(undeclared)} that the schema does not declare; "
            "a secure sum has no place for them: declare them, or ask without secure aggregation"
        )
    return None


class SummaryAnswerer:
    """Answers the summary requests of one enrolled site."""

    def __init__(
        self, *, client: AgentClient, policy: Policy, data: DataCache, institution_id: int, state_dir: Path
    ) -> None:
        self._client = client
        self._policy = policy
        self._data = data
        self._institution_id = institution_id
        self._keys = QuestionKeys(state_dir / "summary-keys", "secure summary")
        self._state_dir = state_dir

    def answer(self, task: SummaryTask) -> bool:
        """Send the summary (or this step of a secure one) or the refusal; True if a refusal."""
        approved = self._client.me().approved_study_ids() if needs_server_approvals(self._policy) else ()
        reason = summary_refusal(self._policy, task, approved, None)
        summary = body = None
        if reason is None:
            try:
                schema, summary = self._summary(task)
                reason = summary_refusal(self._policy, task, approved, summary, schema)
                body = None if reason is not None else self._body(task, schema, summary)
            except TaskError as error:
                # The detail (file, line, column) stays in this log; the coordinator learns
                # that this site cannot answer, rather than waiting for the deadline.
                logger.error("the summary request of study %r cannot be answered: %s", task.study_name, error)
                reason = "this site's data could not be summarised for this study (the agent's log says why)"
        if reason is not None:
            logger.warning("refusing the summary request of study %r: %s", task.study_name, reason)
            self._client.post_summary(task.request_id, {"refused": reason})
            self._record(task, rows=None, refused=reason)
            return True
        assert summary is not None
        assert body is not None
        self._client.post_summary(task.request_id, body)
        self._record(task, rows=summary.count, refused=None)
        if secure_phase(task.secure_aggregation) == "mask":
            self._keys.discard(task.request_id)
        logger.info(
            "answered the summary request of study %r%s: %d rows, %d numeric feature sums, "
            "%d category counts",
            task.study_name,
            ""
            if task.secure_aggregation is None
            else f" (secure aggregation, {secure_phase(task.secure_aggregation)} step)",
            summary.count,
            len(summary.numeric),
            sum(len(counts) for counts in summary.categories.values()),
        )
        return False

    def _summary(self, task: SummaryTask) -> tuple[DataSchema, SiteSummary]:
        """The task's schema, parsed once, and the site's summary under it."""
        try:
            schema = DataSchema.from_json(dict(task.data_schema))
            return schema, site_summary(self._data.source, schema)
        except FederationError as error:
            raise TaskError(f"the summary of this site's data failed: {error}") from None

    def _record(self, task: SummaryTask, *, rows: int | None, refused: str | None) -> None:
        """The site's own record of what it answered (``state_dir/answers.jsonl``): the
        request, the step, the rows summarised or the refusal; never a value."""
        entry = {
            "study_id": task.study_id,
            "study": task.study_name,
            "request_id": task.request_id,
            "step": secure_phase(task.secure_aggregation) or "summary",
            "rows": rows,
            "refused": refused,
        }
        append_answer_record(self._state_dir, entry)

    def _body(self, task: SummaryTask, schema: DataSchema, summary: SiteSummary) -> dict[str, object]:
        if task.secure_aggregation is None:
            return {"summary": summary.to_json()}
        if secure_phase(task.secure_aggregation) == "keys":
            return {"public_key": self._keys.new_public_key(task.request_id)}
        if secure_phase(task.secure_aggregation) == "mask":
            return {"masked": self._masked(task, schema, summary)}
        raise TaskError(f"unknown step of a secure summary: {secure_phase(task.secure_aggregation)!r}")

    def _masked(self, task: SummaryTask, schema: DataSchema, summary: SiteSummary) -> str:
        roster = dict((task.secure_aggregation or {}).get("roster", {}))  # type: ignore[call-overload]
        return self._keys.masked(
            task.request_id,
            summary_vector(summary, schema),
            site_id=self._institution_id,
            roster=roster,
            question=f"summary-request-{task.request_id}",
        )
