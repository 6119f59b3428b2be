"""Log lines with context: ``[job 3 round 2] training 1 epoch(s) on 364 rows``.

Rich's handler when stderr is a terminal, plain timestamped lines otherwise (journald,
files). What is logged: steps, sizes, hashes, counts. Never keys, tensors or rows.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_context: contextvars.ContextVar[str] = contextvars.ContextVar("silo_agent_log_context", default="")

PLAIN_FORMAT = "%(asctime)s %(levelname)-7s %(context)s%(message)s"


class ContextFilter(logging.Filter):
    """Adds ``record.context`` ("[job 3 round 2] " or "") to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.context = _context.get()
        return True


@contextmanager
def log_context(*, job_id: int, round_number: int, final_evaluation: bool = False) -> Iterator[None]:
    """Prefix log lines emitted inside the block with the job and the round's number in it
    (or "final evaluation": its number is past the training rounds)."""
    stage = "final evaluation" if final_evaluation else f"round {round_number}"
    token = _context.set(f"[job {job_id} {stage}] ")
    try:
        yield
    finally:
        _context.reset(token)


def configure_logging(*, verbose: bool = False) -> None:
    """Send the agent's logs to stderr, through rich on a terminal."""
    handler: logging.Handler
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(context)s%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # httpx logs every request line at INFO; keep the journal readable.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
