"""A TinyDB storage whose every write is atomic and durable.

TinyDB's ``JSONStorage`` rewrites its file in place (seek, write, truncate),
so a crash mid-write leaves a torn file and a concurrent reader can see half
of one. ``AtomicJSONStorage`` writes a temporary file, fsyncs it and
``os.replace``-s it over the old one: readers see the old or the new state.
"""

from __future__ import annotations

from pathlib import Path

from tinydb.storages import Storage

from .. import jsonbytes
from ..fsutil import read_file, write_atomic

__all__ = ["AtomicJSONStorage"]


class AtomicJSONStorage(Storage):
    def __init__(self, path: str | Path, fsync: bool = True, sync_folder: bool = True):
        self.path = path  # as given: a string is cheaper to open than a Path
        self.fsync = fsync
        self.sync_folder = sync_folder  # False: the caller fsyncs the folder (once for many files)

    def read(self) -> dict | None:
        try:
            raw = read_file(self.path)
        except FileNotFoundError:
            return None
        return jsonbytes.loads(raw) if raw else None

    def write(self, data: dict) -> None:
        write_atomic(self.path, jsonbytes.dumps(data), fsync=self.fsync, sync_folder=self.sync_folder)

    def close(self) -> None:
        pass
