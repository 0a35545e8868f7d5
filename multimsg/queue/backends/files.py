"""The embedded backend's spool: uploads as files under ``spool/<client>/`` in the data folder.

An upload is its content file and a small JSON sidecar, each written in
place, fsynced, then their folder fsynced once, before its id is answered.
Each message gets its own hard link to the content (``msg/<message_id>``), so
a data file can expire on its own schedule while the messages that use it
keep theirs, and nothing is copied (unless the filesystem refuses another
link: then the message gets a copy). A ``POST /send`` writes its message's
content straight to ``msg/<message_id>``: no upload, no sidecar, no link.

The sweep also removes what a crash can leave behind, once it is older than
a threshold (so nothing in progress is touched): temporary files of
interrupted writes, data files whose sidecar was never written (or was torn),
and message files whose message was never stored (or was archived before its release).
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from ...content import HEAD
from ...errors import NotFound
from ...fsutil import copy_stream, ensure_private_dir, fsync_dir, read_fd, read_file, unlink_quietly, write_file, write_stream_atomic
from ...ids import is_id, new_id
from ...layout import Layout, client_dir_name
from ...locks import locks_of
from ..spool import Content, DataInfo, Spool

__all__ = ["FileSpool", "FileContent"]


def _aged(stat: os.stat_result, now: float, older_than: float) -> bool:
    """Whether a leftover was last written or linked more than ``older_than`` seconds before ``now`` (ctime: its last link)."""
    return now - max(stat.st_mtime, stat.st_ctime) > older_than


def _write_usage(path: str | Path, value: int) -> None:
    """The usage count, written in place without fsync (derived data: the sweep recounts it).

    One ``pwrite`` of a fixed width over the old count, so a reader sees the old
    number or the new one, and no new file is made for each change (a
    temporary file and a rename cost some 120 us of CPU here, this 5 us).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.pwrite(fd, b"%020d" % value, 0)
    finally:
        os.close(fd)


class FileContent(Content):
    def __init__(self, path: str | Path):
        self.path = path
        self.size = os.stat(path).st_size

    def open(self) -> BinaryIO:
        # A buffer size given: with the default, open() asks whether the file is a terminal (an ioctl that fails).
        return open(self.path, "rb", buffering=1 << 16)

    def head(self, n: int = HEAD) -> bytes:
        return self.read(n)

    def read(self, limit: int | None = None) -> bytes:
        # One open, reads and a close: a buffered file also asks for its size, whether it is a terminal, and its position.
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return read_fd(fd, limit)
        finally:
            os.close(fd)

    @contextmanager
    def local_path(self) -> Iterator[Path]:
        yield Path(self.path)  # already a private local file


class FileSpool(Spool):
    def __init__(self, layout: Layout, *, ttl: float, fsync: bool = True, links_synced_by_store: bool = False):
        self.layout = layout
        self.ttl = ttl
        self.fsync = fsync
        # True: ``msg/`` is fsynced by the store's add that always follows (``TinyStore(link_folder=...)``), with its journal line.
        self.links_synced_by_store = links_synced_by_store
        self.locks = locks_of(layout.locks)
        self._made: set[str] = set()  # folders known to exist (they are never removed while the process runs)
        self._link_folders: dict[str, str] = {}
        self._folders: dict[str, str] = {}

    def _dir(self, client: str, *under: str) -> Path:
        folder = self.layout.client_spool(client).joinpath(*under)
        if str(folder) not in self._made:
            ensure_private_dir(folder)
            self._made.add(str(folder))
        return folder

    def _folder(self, client: str, make: bool = False) -> str:
        """The client's spool folder as a string (joined on every lookup; a Path costs some 4 us a join).

        ``make``: made if need be (once per process: folders are never removed while it runs)."""
        folder = self._folders.get(client)
        if folder is None:
            folder = self._folders[client] = str(self.layout.client_spool(client))
        if make and folder not in self._made:
            self._dir(client)
        return folder

    def link_folder(self, client: str) -> str:
        """The client's ``msg/`` folder (of its messages' links and own content), made if need be."""
        return self._links(client)

    def _links(self, client: str) -> str:
        """The client's ``msg/`` folder, made if need be (as a string: it is joined on every message)."""
        folder = self._link_folders.get(client)
        if folder is None:
            folder = self._link_folders[client] = str(self._dir(client, "msg"))
        return folder

    def put(self, client: str, chunks: Iterable[bytes], filename: str) -> DataInfo:
        folder = self._folder(client, make=True)
        data_id = new_id()
        # Written in place, not renamed into place: nobody knows the id before the answer, which comes after the
        # fsyncs. A crash leaves a file without its sidecar, or a torn sidecar, that the sweep removes.
        content, sidecar = f"{folder}/{data_id}", f"{folder}/{data_id}.json"
        try:
            size = write_file(content, chunks, fsync=self.fsync)
            info = DataInfo(data_id, size, filename, time.time())
            meta = {"filename": filename, "size": size, "created_at": info.created_at}
            write_file(sidecar, [json.dumps(meta).encode()], fsync=self.fsync)
            if self.fsync:
                fsync_dir(folder)  # one folder fsync for both names (shared with concurrent uploads)
        except BaseException:  # e.g. a full disk, or a decryption that failed mid-stream: nothing is left behind
            unlink_quietly(sidecar)
            unlink_quietly(content)
            raise
        self._add_usage(client, size)
        return info

    def put_message(self, client: str, chunks: Iterable[bytes], filename: str, message_id: str) -> DataInfo:
        """The message's own file ``msg/<message_id>`` (one write, one fsync): no upload, no sidecar, no link."""
        links = self._links(client)
        path = f"{links}/{message_id}"
        try:
            size = write_file(path, chunks, fsync=self.fsync)  # a file left by a request that died first is replaced
            if self.fsync and not self.links_synced_by_store:
                fsync_dir(links)
        except BaseException:
            unlink_quietly(path)
            raise
        self._add_usage(client, size)
        return DataInfo(new_id(), size, filename, time.time())

    def _meta(self, client: str, data_id: str) -> dict:
        try:
            meta = json.loads(read_file(f"{self._folder(client)}/{data_id}.json"))
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
            content = FileContent(f"{self._folder(client)}/{data_id}")
        except FileNotFoundError:
            raise NotFound("data id has expired; upload the file again") from None
        return self._info(data_id, meta), content

    def attach(self, client: str, data_id: str, message_id: str) -> None:
        # Its caller has just looked the upload up (``lookup``); an upload removed since fails the link.
        links = self._links(client)
        source, target = f"{self._folder(client)}/{data_id}", f"{links}/{message_id}"
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
        if self.fsync and not self.links_synced_by_store:
            fsync_dir(links)

    def message_content(self, client: str, message_id: str) -> Content:
        return FileContent(f"{self._folder(client)}/msg/{message_id}")

    def release(self, client: str, message_id: str) -> None:
        path = f"{self._folder(client)}/msg/{message_id}"
        try:
            stat = os.stat(path)
            os.unlink(path)
        except FileNotFoundError:
            return
        if stat.st_nlink == 1:  # the message's own content (POST /send, or its upload expired): counted in usage
            self._add_usage(client, -stat.st_size)

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

    # -- usage: bytes the client's content takes, kept in spool/<client>/.usage ----------
    # Its uploads, and the content of its messages that no upload shares (a /send's, or
    # one whose upload expired): files with one link. Counted as content comes and goes
    # (a scan per upload would cost O(uploads)); the sweep recounts it from the folder.
    def _usage_path(self, client: str) -> str:
        return f"{self._folder(client)}/.usage"

    def _add_usage(self, client: str, delta: int) -> None:
        with self.locks.keyed(f"usage-{client_dir_name(client)}"):
            _write_usage(self._usage_path(client), max(0, self.usage(client) + delta))

    def usage(self, client: str) -> int:
        try:
            return int(read_file(self._usage_path(client)) or 0)
        except (FileNotFoundError, ValueError):
            return 0

    @staticmethod
    def _uploads(client_folder: Path) -> tuple[int, set[int]]:
        """The bytes of the folder's uploads, and their inode numbers."""
        total, inodes = 0, set()
        for entry in os.scandir(client_folder):
            if is_id(entry.name) and entry.is_file(follow_symlinks=False):
                try:
                    total += entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue
                inodes.add(entry.inode())
        return total, inodes

    @staticmethod
    def _sweep_links(links: Path, keep: set[str] | None, now: float, older_than: float, uploads: set[int]) -> tuple[int, int]:
        """One pass over ``msg/``: removes the files of messages not in ``keep`` (older than ``older_than``);
        (the bytes of the content left there that no upload shares, how many were removed).

        ``uploads``: the inode numbers of the client's uploads. A link to one of them is counted with its
        upload; the others (a /send's content, or a link whose upload expired) are counted here. The
        inode number comes with the folder's listing: only those others, and orphans, cost an ``lstat``.
        """
        own = removed = 0
        try:
            entries = list(os.scandir(links))
        except (FileNotFoundError, NotADirectoryError):
            return 0, 0
        for entry in entries:
            name = entry.name
            orphan = keep is not None and (name.endswith(".tmp") or name not in keep)
            if not orphan and (entry.inode() in uploads or not is_id(name)):
                continue
            try:
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if orphan:
                if _aged(stat, now, older_than):
                    unlink_quietly(entry.path)  # a message that was never stored, or already archived
                    removed += 1
                continue
            own += stat.st_size
        return own, removed

    def sweep(self, now: float, live: Iterable[str] | None = None, older_than: float = 3600.0) -> int:
        removed = 0
        keep = None if live is None else set(live)

        def old(path: Path) -> bool:
            try:
                return _aged(path.lstat(), now, older_than)
            except FileNotFoundError:
                return False

        for folder in (p for p in self.layout.spool.iterdir() if p.is_dir()):
            for path in list(folder.iterdir()):
                name = path.name
                if name.endswith(".json") and is_id(name[: -len(".json")]):
                    try:
                        created_at = json.loads(path.read_bytes())["created_at"]
                    except OSError:
                        continue
                    except (ValueError, KeyError, TypeError):
                        if old(path):  # torn by a crash before its upload was answered
                            path.with_suffix("").unlink(missing_ok=True)
                            path.unlink(missing_ok=True)
                            removed += 1
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
                uploads, inodes = self._uploads(folder)
                own, orphans = self._sweep_links(folder / "msg", keep, now, older_than, inodes)
                removed += orphans
                _write_usage(folder / ".usage", uploads + own)  # outside the request path: drift from a crash is fixed here
            except OSError:
                pass
        return removed
