"""The main loop of ``silo-agent run``: heartbeat, long-poll for work, handle it, repeat.

The loop outlives a server outage and a failed task: it logs, pauses (growing pauses for
repeated failures) and polls again. It stops for a rejected credential (the caller exits
with code 3), for a signal (:class:`StopRequested`, exit 0), after one task with ``once``,
or after ``exit_when_idle`` seconds without a task.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from silo_agent.client import AgentClient
from silo_agent.errors import ApiError, ServerUnreachableError, TaskError
from silo_agent.runner import TaskOutcome, TaskRunner

logger = logging.getLogger(__name__)

#: Outcomes that count as work done (they reset the idle timer).
_ACTIVE_OUTCOMES = frozenset(
    {
        TaskOutcome.UPLOADED,
        TaskOutcome.EVALUATED,
        TaskOutcome.REFUSED,
        TaskOutcome.SECURE_STEP,
        TaskOutcome.SUMMARISED,
        TaskOutcome.ANSWERED,
    }
)


@dataclass(frozen=True)
class LoopOptions:
    """How long to wait and when to stop."""

    poll_wait_seconds: int
    once: bool = False
    exit_when_idle: float | None = None
    heartbeat_interval: float = 30.0
    first_failure_pause: float = 5.0
    max_failure_pause: float = 300.0


class AgentLoop:
    """Runs tasks until told to stop; ``run`` returns the process exit code."""

    def __init__(
        self,
        *,
        client: AgentClient,
        runner: TaskRunner,
        options: LoopOptions,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._runner = runner
        self._options = options
        self._clock = clock
        self._sleep = sleep
        self._last_heartbeat = -math.inf
        self._failures = 0

    def run(self) -> int:
        idle_since = self._clock()
        while True:
            self._heartbeat_if_due()
            raw_task = self._poll(self._poll_wait(idle_since))
            if raw_task is not None:
                outcome = self._handle(raw_task)
                if self._options.once:
                    return 0 if outcome is not None else 1
                if outcome in _ACTIVE_OUTCOMES:
                    idle_since = self._clock()
                elif outcome is TaskOutcome.ALREADY_DONE:
                    # The server offers a round this site finished: do not hammer it.
                    self._sleep(self._options.poll_wait_seconds)
            elif self._options.once and self._options.exit_when_idle is None:
                return 0
            if self._idle_expired(idle_since):
                logger.info("no task for %.0f s; exiting as asked", self._options.exit_when_idle)
                return 0

    def _heartbeat_if_due(self) -> None:
        if self._clock() - self._last_heartbeat < self._options.heartbeat_interval:
            return
        self._last_heartbeat = self._clock()
        try:
            self._client.heartbeat()
        except (ServerUnreachableError, ApiError) as error:
            logger.warning("heartbeat failed: %s", error)

    def _poll(self, wait_seconds: int) -> Mapping[str, object] | None:
        try:
            task = self._client.poll_work(wait_seconds)
        except (ServerUnreachableError, ApiError) as error:
            logger.warning("asking for work failed: %s", error)
            self._pause_after_failure()
            return None
        if task is None:
            self._failures = 0  # the server answers again; a failing task keeps its count
        return task

    def _handle(self, raw_task: Mapping[str, object]) -> TaskOutcome | None:
        """The task's outcome, or None if it failed (logged; the loop pauses and goes on)."""
        try:
            outcome = self._runner.handle(raw_task)
        except (TaskError, ApiError, ServerUnreachableError) as error:
            logger.error("task failed: %s", error)
            if not self._options.once:
                self._pause_after_failure()
            return None
        self._failures = 0
        return outcome

    def _pause_after_failure(self) -> None:
        self._failures += 1
        pause = min(
            self._options.max_failure_pause, self._options.first_failure_pause * 2 ** (self._failures - 1)
        )
        logger.info("pausing %.0f s before asking again", pause)
        self._sleep(pause)

    def _poll_wait(self, idle_since: float) -> int:
        wait = self._options.poll_wait_seconds
        if self._options.exit_when_idle is not None:
            remaining = self._options.exit_when_idle - (self._clock() - idle_since)
            wait = min(wait, max(0, math.ceil(remaining)))
        return wait

    def _idle_expired(self, idle_since: float) -> bool:
        limit = self._options.exit_when_idle
        return limit is not None and self._clock() - idle_since >= limit
