"""Kombu's filesystem transport, with message files that appear whole or not at all.

Kombu creates a message file in the queue folder, then locks it and writes it; a worker
polling the folder moves and reads files without taking the lock, so it can read a file
that is still empty and die on the JSON error (reported upstream as celery/kombu#1551).
Here a message is written under a name no queue matches, then renamed into place: a
rename within one folder is atomic, so a reader sees the whole message or nothing.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    # kombu's virtual base names the second argument "message", its filesystem channel
    # "payload"; callers pass it by position.
    def _put(self, queue: str, payload: object, **kwargs: object) -> None:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # A leading dot: the reader keeps only names whose part after the first dot is
        # "<queue>.msg", which this temporary name never is.
        temporary = os.path.join(self.data_folder_out, f".{name}.partial")
        try:
            with open(temporary, "wb") as handle:
                handle.write(str_to_bytes(dumps(payload)))
            os.replace(temporary, final)
        except OSError as error:
            raise ChannelError(f"Cannot add file {final!r} to directory") from error


class Transport(filesystem.Transport):
    Channel = Channel
