"""The site's side of the data agreement: answer a study's summary request, or refuse it.

The answer holds aggregates only (:class:`federation.data.agreement.SiteSummary`: the row
count, sums, sums of squares and per-category row counts). The hospital's policy decides
first: the study must be one its data owner approved, the file must hold at least
``policy.summaries.min_rows`` rows, and a site that demands secure aggregation for its
summaries refuses, because this request sends them in the clear. Every answer and
refusal is logged here, without any value from the file.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from federation.data.agreement import SiteSummary
from federation.data.schema import DataSchema
from federation.errors import FederationError
from federation.protocol import SummaryTask
from silo_agent.client import AgentClient
from silo_agent.config import Policy
from silo_agent.errors import TaskError
from silo_agent.local_data import DataCache, site_summary
from silo_agent.policy import needs_server_approvals, study_refusal

logger = logging.getLogger(__name__)


def summary_refusal(
    policy: Policy, task: SummaryTask, server_approved: Collection[int], rows: int | None
) -> str | None:
    """The reason to refuse ``task`` (``rows``: the file's row count, None before it is read)."""
    reason = study_refusal(policy, task.study_id, task.study_name, server_approved)
    if reason is not None:
        return reason
    if policy.summaries.require_secure_aggregation:
        return (
            "this site's policy demands secure aggregation for its summaries "
            "(policy.summaries.require_secure_aggregation); this request would send them in the clear"
        )
    if rows is not None and rows < policy.summaries.min_rows:
        return (
            f"this site holds fewer rows than its policy's minimum for summaries "
            f"(policy.summaries.min_rows = {policy.summaries.min_rows})"
        )
    return None


class SummaryAnswerer:
    """Answers the summary requests of one enrolled site."""

    def __init__(self, *, client: AgentClient, policy: Policy, data: DataCache) -> None:
        self._client = client
        self._policy = policy
        self._data = data

    def answer(self, task: SummaryTask) -> bool:
        """Send the summary or the refusal; True if it was a refusal."""
        approved = self._client.me().approved_study_ids() if needs_server_approvals(self._policy) else ()
        reason = summary_refusal(self._policy, task, approved, rows=None)
        summary = None
        if reason is None:
            summary = self._summary(task)
            reason = summary_refusal(self._policy, task, approved, rows=summary.count)
        if reason is not None:
            logger.warning("refusing the summary request of study %r: %s", task.study_name, reason)
            self._client.post_summary(task.request_id, {"refused": reason})
            return True
        assert summary is not None
        self._client.post_summary(task.request_id, {"summary": summary.to_json()})
        logger.info(
            "answered the summary request of study %r: %d rows, %d numeric feature sums, %d category counts",
            task.study_name,
            summary.count,
            len(summary.numeric),
            sum(len(counts) for counts in summary.categories.values()),
        )
        return False

    def _summary(self, task: SummaryTask) -> SiteSummary:
        try:
            return site_summary(self._data.source, DataSchema.from_json(dict(task.data_schema)))
        except FederationError as error:
            raise TaskError(f"the summary of this site's data failed: {error}") from None
