"""The embedded default's broker: a message file is seen whole or not at all."""

from __future__ import annotations

import threading
from pathlib import Path
from queue import Empty

from kombu import Connection

from fedplatform.broker import Transport

WRITERS, MESSAGES = 3, 300


def _channel(folder: Path):  # type: ignore[no-untyped-def]
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "store_processed": False}
    return Connection("filesystem://", transport=Transport, transport_options=options).channel()


def test_a_reader_racing_writers_gets_every_message_whole(tmp_path: Path) -> None:
    received: list[dict[str, int]] = []
    errors: list[Exception] = []
    done = threading.Event()

    def write(writer: int) -> None:
        channel = _channel(tmp_path)
        for number in range(MESSAGES):
            channel._put("celery", {"writer": writer, "number": number})

    def read() -> None:
        channel = _channel(tmp_path)
        while len(received) < WRITERS * MESSAGES and not done.is_set():
            try:
                received.append(channel._get("celery"))
            except Empty:
                continue
            except Exception as error:  # a half-written file: kombu's own transport fails here
                errors.append(error)
                return

    writers = [threading.Thread(target=write, args=(writer,)) for writer in range(WRITERS)]
    reader = threading.Thread(target=read)
    for thread in (*writers, reader):
        thread.start()
    for thread in writers:
        thread.join(timeout=60)
    reader.join(timeout=60)
    done.set()
    assert errors == []
    assert sorted((m["writer"], m["number"]) for m in received) == [
        (writer, number) for writer in range(WRITERS) for number in range(MESSAGES)
    ]
    assert not any(path.name.endswith(".partial") for path in tmp_path.iterdir())
