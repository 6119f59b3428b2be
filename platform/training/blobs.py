"""Content-addressed storage of model blobs (safetensors files named by their SHA-256).

The local backend writes to a temporary file, syncs it and renames it into place, so a
crash never leaves a partial blob under a real name; reads check the digest. An object
storage backend has the same three operations (a PUT is atomic there).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings

from fedplatform.errors import ServiceError


class BlobCorrupt(ServiceError):
    status_code = 500
    default_code = "blob_corrupt"


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError("not a SHA-256 hex digest")
        return self.root / sha256[:2] / f"{sha256}.safetensors"

    def put(self, data: bytes) -> str:
        """Store ``data``; returns its digest. Storing the same bytes twice is a no-op."""
        sha256 = hashlib.sha256(data).hexdigest()
        target = self.path(sha256)
        if target.exists():
            return sha256
        target.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return sha256

    def read(self, sha256: str) -> bytes:
        data = self.path(sha256).read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise BlobCorrupt(f"stored blob {sha256[:12]} does not match its checksum")
        return data

    @contextmanager
    def local_path(self, sha256: str) -> Iterator[Path]:
        """A local file holding the blob, for streaming readers."""
        yield self.path(sha256)

    def verify(self, sha256: str) -> bool:
        digest = hashlib.sha256()
        with self.path(sha256).open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest() == sha256


def blob_store() -> LocalBlobStore:
    return LocalBlobStore(Path(settings.ENV.model_storage_dir) / "blobs")
