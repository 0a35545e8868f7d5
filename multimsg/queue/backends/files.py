"""The embedded backend's spool: uploads as files under ``spool/<client>/`` in the data folder.

An upload is written atomically (temporary file, fsync, rename) with a small
JSON sidecar. Each message gets its own hard link to the content
(``msg/<message_id>``), so a data file can expire on its own schedule while
the messages that use it keep theirs, and nothing is copied (unless the
filesystem refuses another link: then the message gets a copy).

The sweep also removes what a crash can leave behind, once it is older than
a threshold (so nothing in progress is touched): temporary files of
interrupted writes, data files whose sidecar was never written, and message
links whose message was never stored (or was archived before its release).
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from ...errors import NotFound
from ...fsutil import copy_stream, ensure_private_dir, fsync_dir, read_file, write_atomic, write_stream_atomic
from ...ids import is_id, new_id
from ...layout import Layout, client_dir_name
from ...locks import locks_of
from ..spool import Content, DataInfo, Spool

__all__ = ["FileSpool", "FileContent"]


class FileContent(Content):
    def __init__(self, path: Path):
        self.path = path
        self.size = os.stat(path).st_size

    def open(self) -> BinaryIO:
        return open(self.path, "rb")

    @contextmanager
    def local_path(self) -> Iterator[Path]:
        yield self.path  # already a private local file


class FileSpool(Spool):
    def __init__(self, layout: Layout, *, ttl: float, fsync: bool = True):
        self.layout = layout
        self.ttl = ttl
        self.fsync = fsync
        self.locks = locks_of(layout.locks)
        self._made: set[Path] = set()  # folders known to exist (they are never removed while the process runs)

    def _dir(self, client: str, *under: str) -> Path:
        folder = self.layout.client_spool(client).joinpath(*under)
        if folder not in self._made:
            ensure_private_dir(folder)
            self._made.add(folder)
        return folder

    def put(self, client: str, chunks: Iterable[bytes], filename: str) -> DataInfo:
        folder = self._dir(client)
        data_id = new_id()
        size = write_stream_atomic(folder / data_id, chunks, fsync=self.fsync, sync_folder=False)
        info = DataInfo(data_id, size, filename, time.time())
        meta = {"filename": filename, "size": size, "created_at": info.created_at}
        try:
            write_atomic(folder / f"{data_id}.json", json.dumps(meta).encode(), fsync=self.fsync, sync_folder=False)
            if self.fsync:
                fsync_dir(folder)  # one folder fsync for both names (shared with concurrent uploads)
        except BaseException:  # e.g. a full disk: no content without its sidecar
            (folder / data_id).unlink(missing_ok=True)
            raise
        self._add_usage(client, size)
        return info

    def _meta(self, client: str, data_id: str) -> dict:
        try:
            meta = json.loads(read_file(self.layout.client_spool(client) / f"{data_id}.json"))
        except (FileNotFoundError, ValueError):
            raise NotFound("unknown data id") from None
        if time.time() - meta["created_at"] > self.ttl:
            raise NotFound("data id has expired; upload the file again")
        return meta

    @staticmethod
    def _info(data_id: str, meta: dict) -> DataInfo:
        return DataInfo(data_id, meta["size"], meta["filename"], meta["created_at"])

    def get(self, client: str, data_id: str) -> DataInfo:
        return self._info(data_id, self._meta(client, data_id))

    def content(self, client: str, data_id: str) -> Content:
        return self.lookup(client, data_id)[1]

    def lookup(self, client: str, data_id: str) -> tuple[DataInfo, Content]:
        meta = self._meta(client, data_id)
        try:
            content = FileContent(self.layout.client_spool(client) / data_id)
        except FileNotFoundError:
            raise NotFound("data id has expired; upload the file again") from None
        return self._info(data_id, meta), content

    def attach(self, client: str, data_id: str, message_id: str) -> None:
        self._meta(client, data_id)
        source = self.layout.client_spool(client) / data_id
        target = self._dir(client, "msg") / message_id
        try:
            os.link(source, target)
        except FileNotFoundError:
            raise NotFound("data id has expired; upload the file again") from None
        except FileExistsError:  # left by a request that died before its message was stored (its reserved id is used again)
            os.unlink(target)
            os.link(source, target)
        except OSError:
            # Too many links to one file (ext4 allows ~65,000), or a filesystem
            # without hard links: the message gets its own copy instead.
            with open(source, "rb") as content:
                write_stream_atomic(target, copy_stream(content), fsync=self.fsync)
            return
        if self.fsync:
            fsync_dir(target.parent)

    def message_content(self, client: str, message_id: str) -> Content:
        return FileContent(self.layout.client_spool(client) / "msg" / message_id)

    def release(self, client: str, message_id: str) -> None:
        (self.layout.client_spool(client) / "msg" / message_id).unlink(missing_ok=True)

    def rewrite_heads(self, size: int, change: Callable[[bytes], bytes | None]) -> int:
        """In place (``pwrite`` and fsync): a message's hard link is the same file as its upload, changed once."""
        changed, seen = 0, set()
        for folder in (p for p in self.layout.spool.iterdir() if p.is_dir()):
            links = folder / "msg"
            for path in [*folder.iterdir(), *(links.iterdir() if links.is_dir() else [])]:
                if not is_id(path.name):
                    continue
                try:
                    fd = os.open(path, os.O_RDWR)
                except (FileNotFoundError, IsADirectoryError):
                    continue
                try:
                    stat = os.fstat(fd)
                    if (stat.st_dev, stat.st_ino) in seen:
                        continue
                    seen.add((stat.st_dev, stat.st_ino))
                    head = os.pread(fd, size, 0)
                    new = change(head) if len(head) == size else None
                    if new is not None:
                        os.pwrite(fd, new, 0)
                        os.fsync(fd)
                        changed += 1
                finally:
                    os.close(fd)
        return changed

    # -- usage: bytes of the client's live uploads, kept in spool/<client>/.usage ---------
    # Counted as uploads come and go (a scan per upload would cost O(uploads)); the
    # sweep recounts it from the folder. Message links of an expired upload are not
    # counted: they go as their messages are archived.
    def _usage_path(self, client: str) -> Path:
        return self.layout.client_spool(client) / ".usage"

    def _add_usage(self, client: str, delta: int) -> None:
        with self.locks.named(f"usage-{client_dir_name(client)}"):
            self._write_usage(client, max(0, self.usage(client) + delta))

    def _write_usage(self, client: str, value: int) -> None:
        write_atomic(self._usage_path(client), str(value).encode(), fsync=False)

    def usage(self, client: str) -> int:
        try:
            return int(read_file(self._usage_path(client)) or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _recount_usage(self, client_folder: Path) -> None:
        total = 0
        for entry in os.scandir(client_folder):
            if is_id(entry.name) and entry.is_file(follow_symlinks=False):
                try:
                    total += entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue
        write_atomic(client_folder / ".usage", str(total).encode(), fsync=False)

    def sweep(self, now: float, live: Iterable[str] | None = None, older_than: float = 3600.0) -> int:
        removed = 0
        keep = None if live is None else set(live)

        def old(path: Path) -> bool:
            try:
                stat = path.lstat()
                return now - max(stat.st_mtime, stat.st_ctime) > older_than  # ctime: when a link was last made
            except FileNotFoundError:
                return False

        for folder in (p for p in self.layout.spool.iterdir() if p.is_dir()):
            for path in list(folder.iterdir()):
                name = path.name
                if name.endswith(".json") and is_id(name[: -len(".json")]):
                    try:
                        created_at = json.loads(path.read_bytes())["created_at"]
                    except (OSError, ValueError, KeyError):
                        continue
                    if now - created_at > self.ttl:
                        path.with_suffix("").unlink(missing_ok=True)
                        path.unlink(missing_ok=True)
                        removed += 1
                elif name.endswith(".tmp") and old(path):
                    path.unlink(missing_ok=True)  # an interrupted write
                    removed += 1
                elif is_id(name) and not (folder / f"{name}.json").exists() and old(path):
                    path.unlink(missing_ok=True)  # its sidecar was never written (a full disk, a crash)
                    removed += 1
            try:
                self._recount_usage(folder)  # outside the request path: drift from a crash is fixed here
            except OSError:
                pass
            links = folder / "msg"
            if keep is not None and links.is_dir():
                for path in list(links.iterdir()):
                    if (path.name.endswith(".tmp") or path.name not in keep) and old(path):
                        path.unlink(missing_ok=True)  # a message that was never stored, or already archived
                        removed += 1
        return removed
