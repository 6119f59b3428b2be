"""``manage.py audit_verify [--batch-size N] [--anchor SEQUENCE:HASH ...]``: check the
audit trail's hash chain.

Prints ``audit chain OK: N events, head <first 12 hex digits>`` on standard output and
exits 0, or prints ``audit chain BROKEN at event sequence S (id I): <reason>`` (the first
broken link) on standard error and exits 1. With ``-v 2`` an intact chain also prints the
full head hash, to be kept outside the database; ``--anchor`` checks such a kept hash
(docs/audit.md).
"""

from __future__ import annotations

import re
from argparse import ArgumentParser

from django.core.management.base import BaseCommand, CommandError

from audit.selectors import audit_chain_verify

ANCHOR = re.compile(r"(?P<sequence>[1-9][0-9]*):(?P<hash>[0-9a-fA-F]{64})")


class Command(BaseCommand):
    help = "Verify the audit trail's hash chain; exit 1 naming the first broken link if it is broken."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--batch-size", type=int, default=1000, help="events read at a time (bounds the memory used)"
        )
        parser.add_argument(
            "--anchor",
            action="append",
            default=[],
            metavar="SEQUENCE:HASH",
            help="a head hash kept outside the database (from an earlier `-v 2` run); may repeat",
        )

    def handle(self, *args: object, **options: object) -> None:
        batch_size = options["batch_size"]
        assert isinstance(batch_size, int)
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        result = audit_chain_verify(batch_size=batch_size, anchors=_anchors(options["anchor"]))
        if not result.ok:
            self.stderr.write(result.message)
            raise SystemExit(1)
        self.stdout.write(result.message)
        verbosity = options["verbosity"]
        if isinstance(verbosity, int) and verbosity >= 2 and result.num_events:
            self.stdout.write(f"anchor {result.num_events}:{result.head_hash}")


def _anchors(values: object) -> dict[int, str]:
    assert isinstance(values, list)
    anchors = {}
    for value in values:
        match = ANCHOR.fullmatch(str(value))
        if match is None:
            raise CommandError(f"--anchor {value!r}: expected SEQUENCE:HASH (64 hex digits)")
        anchors[int(match["sequence"])] = match["hash"].lower()
    return anchors
