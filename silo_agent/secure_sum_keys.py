"""What the site's answers to questions share (the data agreement's summaries, federated
queries): the keys for secure sums, one X25519 key pair per question, its private half in
the state folder (0600) from the keys step until the masked input is delivered, then
deleted; the step a task asks for; and the site's own record of what it answered."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from federation.errors import FederationError
from federation.privacy import secagg
from federation.privacy.secure_sum import masked_input, to_text
from silo_agent.errors import TaskError

#: The site's own record of every answer and refusal, in its state folder.
ANSWERS_FILE = "answers.jsonl"


def secure_phase(secure_aggregation: Mapping[str, object] | None) -> str:
    """The secure step a task asks for ("keys", "mask"), or "" for an answer in the clear."""
    return str((secure_aggregation or {}).get("phase", ""))


def append_answer_record(state_dir: Path, entry: Mapping[str, object]) -> None:
    """One line of the site's record (``state_dir/answers.jsonl``), stamped with the time."""
    path = state_dir / ANSWERS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"at": datetime.now(UTC).isoformat(timespec="seconds"), **entry}) + "\n")


class QuestionKeys:
    """The keys of one kind of question, in ``folder``, one file per question id."""

    def __init__(self, folder: Path, what: str) -> None:
        self._folder = folder
        self._what = what

    def path(self, question_id: int) -> Path:
        return self._folder / f"{question_id}.key"

    def new_public_key(self, question_id: int) -> str:
        """A fresh key pair for the question; its public half, base64, to advertise."""
        self._folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        private_key = secagg.private_key_bytes()
        descriptor = os.open(self.path(question_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(private_key)
        return base64.b64encode(secagg.public_key_bytes(private_key)).decode()

    def masked(
        self,
        question_id: int,
        vector: NDArray[np.floating],
        *,
        site_id: int,
        roster: Mapping[str, object],
        question: str,
    ) -> str:
        """``vector`` masked with this site's key against every other site's in ``roster``
        (site id: base64 key), as the server takes it."""
        key_file = self.path(question_id)
        if not key_file.exists():
            raise TaskError(f"this site's key for the {self._what} is lost; the coordinator must ask again")
        try:
            keys = {int(site): base64.b64decode(str(key)) for site, key in roster.items()}
            masked = masked_input(
                vector, site_id=site_id, private_key=key_file.read_bytes(), roster=keys, question=question
            )
        except (FederationError, ValueError, TypeError) as error:
            raise TaskError(f"the {self._what} cannot be masked: {error}") from None
        return to_text(masked)

    def discard(self, question_id: int) -> None:
        """One use: the key goes once its masked input is delivered."""
        self.path(question_id).unlink(missing_ok=True)
