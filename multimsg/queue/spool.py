"""The spool: uploaded files, one per data id, in a folder per client.

``Spool`` is the contract; ``FileSpool`` keeps files under ``spool/`` in the
data folder. An upload is written atomically (temporary file, fsync, rename)
with a small JSON sidecar. Each message gets its own hard link to the content
(``attach``), so a data file can expire on its own schedule while the
messages that use it keep theirs, and nothing is ever copied.
"""

from __future__ import annotations

import json
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import NotFound
from ..fsutil import copy_stream, ensure_private_dir, fsync_dir, write_atomic, write_stream_atomic
from ..ids import new_id
from .layout import Layout

__all__ = ["Spool", "FileSpool", "DataInfo"]


@dataclass(frozen=True)
class DataInfo:
    data_id: str
    path: Path
    size: int
    filename: str
    created_at: float


class Spool(ABC):
    @abstractmethod
    def put(self, client: str, chunks: Iterable[bytes], filename: str) -> DataInfo:
        """Store an upload durably; returns its info with a fresh data id."""

    @abstractmethod
    def get(self, client: str, data_id: str) -> DataInfo:
        """The client's upload; NotFound if unknown, foreign or expired."""

    @abstractmethod
    def attach(self, client: str, data_id: str, message_id: str) -> Path:
        """Give a message its own reference to the upload's content."""

    @abstractmethod
    def message_path(self, client: str, message_id: str) -> Path:
        """Where a message's content is."""

    @abstractmethod
    def release(self, client: str, message_id: str) -> None:
        """Forget a message's content (after it is archived)."""

    @abstractmethod
    def sweep(self, now: float) -> int:
        """Delete uploads older than their time-to-live; returns how many."""


class FileSpool(Spool):
    def __init__(self, layout: Layout, *, ttl: float, fsync: bool = True):
        self.layout = layout
        self.ttl = ttl
        self.fsync = fsync

    def _dir(self, client: str) -> Path:
        return ensure_private_dir(self.layout.client_spool(client))

    def put(self, client: str, chunks: Iterable[bytes], filename: str) -> DataInfo:
        folder = self._dir(client)
        data_id = new_id()
        path = folder / data_id
        size = write_stream_atomic(path, chunks, fsync=self.fsync)
        info = DataInfo(data_id, path, size, filename, time.time())
        meta = {"filename": filename, "size": size, "created_at": info.created_at}
        try:
            write_atomic(folder / f"{data_id}.json", json.dumps(meta).encode(), fsync=self.fsync)
        except BaseException:  # e.g. a full disk: no content without its sidecar (the sweep would never find it)
            path.unlink(missing_ok=True)
            raise
        return info

    def get(self, client: str, data_id: str) -> DataInfo:
        folder = self.layout.client_spool(client)
        try:
            meta = json.loads((folder / f"{data_id}.json").read_bytes())
        except (FileNotFoundError, ValueError):
            raise NotFound("unknown data id") from None
        if time.time() - meta["created_at"] > self.ttl:
            raise NotFound("data id has expired; upload the file again")
        return DataInfo(data_id, folder / data_id, meta["size"], meta["filename"], meta["created_at"])

    def attach(self, client: str, data_id: str, message_id: str) -> Path:
        source = self.get(client, data_id).path
        target = ensure_private_dir(self._dir(client) / "msg") / message_id
        try:
            os.link(source, target)
        except FileNotFoundError:
            raise NotFound("data id has expired; upload the file again") from None
        except OSError:
            # Too many links to one file (ext4 allows ~65,000), or a filesystem
            # without hard links: the message gets its own copy instead.
            with open(source, "rb") as content:
                write_stream_atomic(target, copy_stream(content), fsync=self.fsync)
            return target
        if self.fsync:
            fsync_dir(target.parent)
        return target

    def message_path(self, client: str, message_id: str) -> Path:
        return self.layout.client_spool(client) / "msg" / message_id

    def release(self, client: str, message_id: str) -> None:
        self.message_path(client, message_id).unlink(missing_ok=True)

    def usage(self, client: str) -> int:
        """Bytes the spool holds for ``client``: its uploads and its messages' content (a hard link counts once)."""
        seen, total = set(), 0
        folder = self.layout.client_spool(client)
        for path in (folder, folder / "msg"):
            try:
                entries = list(os.scandir(path))
            except FileNotFoundError:
                continue
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if entry.is_file(follow_symlinks=False) and (info.st_dev, info.st_ino) not in seen:
                    seen.add((info.st_dev, info.st_ino))
                    total += info.st_size
        return total

    def sweep(self, now: float) -> int:
        removed = 0
        for meta_path in self.layout.spool.glob("*/*.json"):
            try:
                created_at = json.loads(meta_path.read_bytes())["created_at"]
            except (OSError, ValueError, KeyError):
                continue
            if now - created_at > self.ttl:
                meta_path.with_suffix("").unlink(missing_ok=True)
                meta_path.unlink(missing_ok=True)
                removed += 1
        return removed
