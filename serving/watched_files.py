"""Files the server re-reads while it runs, noticed by polling their signature."""

from __future__ import annotations

import os

Signature = tuple[int, int, int] | None


def file_signature(path: str) -> Signature:
    """Changes whenever the file is rewritten or replaced (None: it is missing). ``os.stat``
    follows symbolic links, so a file replaced by a rename of a link it goes through (a
    Kubernetes volume swaps its ``..data`` link) changes it too."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


class WatchedFiles:
    """Files read together: ``changed()`` tells whether any of them changed since the last
    call (or since this was made: make it before the first read, so a change while reading is seen)."""

    def __init__(self, *paths: str) -> None:
        self.paths = paths
        self.signature = self._now()

    def _now(self) -> tuple[Signature, ...]:
        return tuple(file_signature(path) for path in self.paths)

    def changed(self) -> bool:
        now = self._now()
        if now == self.signature:
            return False
        self.signature = now
        return True
