"""Client tokens for ``MULTIMSG_IDENTITY=token``: the token file, making tokens, checking them.

The file is ``MULTIMSG_TOKENS_FILE``, or ``tokens`` in the data folder. One
``name:sha256-hex-of-the-token`` line per client; blank lines and lines that
start with ``#`` are ignored. Only hashes are stored, so the file can be read
without giving any token away; the token itself is printed once, when made.
Tokens are 256-bit random strings (``secrets.token_urlsafe(32)``), so an
unsalted SHA-256 is enough: there is nothing to brute-force.

A name is what the client is known as (its client key is ``token:NAME``):
1–64 letters, digits, ``.`` and ``-``, starting with a letter or digit.

With the Redis backend (``MULTIMSG_BACKEND=redis://...``) and no
``MULTIMSG_TOKENS_FILE``, the same hashes are kept in Redis instead
(``redis_engine.RedisTokens``), so ``multimsg token`` on any host acts for
every process of the deployment.

The server re-reads the file when it changes (size, mtime or inode), so tokens
added or removed while it runs take effect on the next request. Checking a
token hashes it and compares it with every line in constant time.

    python -m multimsg token add NAME [--callback URL]  # prints the new token once

``--callback`` keeps a per-token default callback URL (status events of the
client's messages sent without ``callback``) where the token is kept: in
``<token file>.callbacks.json``, or with the Redis backend in Redis, so that
every process of the deployment uses it.
    python -m multimsg token list
    python -m multimsg token remove NAME
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sys
import threading
from pathlib import Path

from .errors import InvalidInput
from .fsutil import ensure_private_dir, write_atomic

__all__ = ["TokenFile", "token_file", "token_store", "tokens_path", "add_token", "remove_token", "hash_token", "NAME_RE", "main",
           "token_callback", "set_token_callback"]

log = logging.getLogger("multimsg.tokens")

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]{0,63}")
_LINE_RE = re.compile(r"([A-Za-z0-9][A-Za-z0-9.\-]{0,63}):([0-9a-f]{64})")
MAX_TOKEN_LENGTH = 512  # ours are 43 characters; anything far longer is not a token


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidInput("a token name is 1-64 letters, digits, '.' and '-', starting with a letter or digit")
    return name


class TokenLookup:
    """What every token store shares: its ``entries()`` (name, sha256 digest) and the lookup rule."""

    def entries(self) -> list[tuple[str, bytes]]:
        raise NotImplementedError

    def callback(self, name: str) -> str | None:
        """The default callback URL of token ``name``, if one was set."""
        raise NotImplementedError

    def set_callback(self, name: str, url: str | None) -> None:
        """Keep (or with None forget) the default callback URL of token ``name``."""
        raise NotImplementedError

    def names(self) -> list[str]:
        return [name for name, _ in self.entries()]

    def name_for(self, token: str) -> str | None:
        """The name whose hash matches ``token``, or None. Compares with every entry, in constant time."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found = None
        for name, stored in self.entries():
            if hmac.compare_digest(digest, stored) and found is None:
                found = name
        return found


class TokenFile(TokenLookup):
    """The token file at ``path``: read (cached until it changes), checked, appended to."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._entries: list[tuple[str, bytes]] = []

    # -- reading -----------------------------------------------------------
    def _stat(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode)

    def entries(self) -> list[tuple[str, bytes]]:
        """``(name, sha256 digest)`` for every valid line, re-read when the file changed."""
        stamp = self._stat()
        with self._lock:
            if stamp != self._stamp:
                self._entries = self._load() if stamp else []
                self._stamp = stamp
                if stamp and stamp[3] & 0o022:
                    log.warning("token file %s is writable by others than its owner: anyone who can write it can add a client", self.path)
            return self._entries

    def _load(self) -> list[tuple[str, bytes]]:
        entries = []
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            match = _LINE_RE.fullmatch(line)
            if not match:
                log.warning("token file %s line %d is not 'name:sha256hex'; ignored", self.path, number)
                continue
            entries.append((match[1], bytes.fromhex(match[2])))
        return entries

    # -- writing -----------------------------------------------------------
    def _locked(self) -> int:
        """An fd of the file, appending, under an exclusive flock (released on close).

        ``remove`` replaces the file; a writer that waited on the old one's lock
        opens the new one and locks again.
        """
        ensure_private_dir(self.path.parent)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def add(self, name: str) -> str:
        """Make a token for ``name``, append its hash line, return the token (shown once)."""
        check_name(name)
        token = secrets.token_urlsafe(32)
        fd = self._locked()
        try:
            if name in (n for n, _ in self._load()):
                raise InvalidInput(f"a token named {name!r} exists already; remove it first to replace it")
            size = os.fstat(fd).st_size
            ends_open = size > 0 and os.pread(fd, 1, size - 1) != b"\n"  # a hand-edited last line
            os.write(fd, (b"\n" if ends_open else b"") + f"{name}:{hash_token(token)}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return token

    # -- default callback URLs, beside the file ----------------------------------
    def _callbacks(self) -> dict:
        try:
            found = json.loads(self.path.with_name(self.path.name + ".callbacks.json").read_bytes())
        except (FileNotFoundError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    def callback(self, name: str) -> str | None:
        found = self._callbacks().get(name)
        return found if isinstance(found, str) and found else None

    def set_callback(self, name: str, url: str | None) -> None:
        current = self._callbacks()
        if url:
            current[check_name(name)] = url
        else:
            current.pop(name, None)
        write_atomic(self.path.with_name(self.path.name + ".callbacks.json"), json.dumps(current, indent=1).encode())

    def remove(self, name: str) -> bool:
        """Delete ``name``'s line(s); True if there were any."""
        fd = self._locked()
        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
            kept = [line for line in lines if not (_LINE_RE.fullmatch(line.strip()) and line.strip().split(":", 1)[0] == name)]
            if len(kept) == len(lines):
                return False
            write_atomic(self.path, "".join(kept).encode())
            return True
        finally:
            os.close(fd)


def tokens_path(s=None) -> Path:
    """``MULTIMSG_TOKENS_FILE``, else ``tokens`` in the data folder."""
    from .config import settings
    from .layout import Layout

    s = s or settings()
    return s.tokens_file or Layout(s.home).tokens


_files: dict[Path, TokenFile] = {}
_files_lock = threading.Lock()


def token_file(path: Path | None = None) -> TokenFile:
    """The process's ``TokenFile`` for ``path`` (default: ``tokens_path()``)."""
    path = Path(path) if path else tokens_path()
    with _files_lock:
        return _files.setdefault(path, TokenFile(path))


def token_store(path: Path | None = None):
    """Where tokens are checked and kept: the token file, or Redis with the Redis backend (unless a file is named)."""
    from .config import settings

    s = settings()
    if path is None and s.tokens_file is None and (s.backend or "").strip():
        from .gateway import redis_client

        client = redis_client(s)
        if client is not None:
            from .queue.backends.redis_engine import RedisTokens

            with _files_lock:
                key = ("redis", s.redis_tag)
                if key not in _stores:
                    _stores[key] = RedisTokens(client, s.redis_tag)
                return _stores[key]
    return token_file(path)


_stores: dict = {}


def add_token(name: str, path: Path | None = None) -> str:
    """Create a token for ``name`` (in the token file, or in Redis); returns the token."""
    return token_store(path).add(name)


def remove_token(name: str, path: Path | None = None) -> bool:
    return token_store(path).remove(name)


def set_token_callback(name: str, url: str | None, path: Path | None = None) -> None:
    """Keep (or with None forget) the default callback URL of token ``name``, where its token is kept."""
    token_store(path).set_callback(name, url)


def token_callback(client: str, path: Path | None = None) -> str | None:
    """The default callback URL of a ``token:NAME`` client, if one was set."""
    if not client.startswith("token:"):
        return None
    return token_store(path).callback(client[len("token:"):])


def main(argv: list[str] | None = None) -> int:
    """``token add NAME | list | remove NAME`` (the ``multimsg token`` subcommand)."""
    parser = argparse.ArgumentParser(prog="multimsg token", description="Manage client tokens (MULTIMSG_IDENTITY=token).")
    parser.add_argument("--file", type=Path, help="token file (default: MULTIMSG_TOKENS_FILE, else MULTIMSG_HOME/tokens)")
    actions = parser.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="create a token for NAME, print it once and store its hash")
    add.add_argument("name")
    add.add_argument("--callback", help="default callback URL for this client's messages (status events)")
    actions.add_parser("list", help="the names that have a token")
    remove = actions.add_parser("remove", help="revoke NAME's token")
    remove.add_argument("name")
    args = parser.parse_args(argv)
    path = args.file
    try:
        if args.action == "add":
            check_name(args.name)  # before tokens_path(), which makes the data folder
        store = token_store(args.file)
        path = store.path
        if args.action == "add":
            if args.callback:
                from .callbacks import check_syntax

                check_syntax(args.callback)
            token = store.add(args.name)
            if args.callback:
                store.set_callback(args.name, args.callback)
            print(token)
            print(f"token for {args.name!r} added to {path}; it is shown only now", file=sys.stderr)
        elif args.action == "list":
            for name in store.names():
                print(name)
        elif store.remove(args.name):
            store.set_callback(args.name, None)
        else:
            print(f"multimsg token: no token named {args.name!r} in {path}", file=sys.stderr)
            return 1
    except InvalidInput as exc:
        print(f"multimsg token: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"multimsg token: {path or 'the token file'}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
