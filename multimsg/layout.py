"""The data folder's layout: every path under MULTIMSG_HOME is named here.

::

    MULTIMSG_HOME/
      keys/private.pem, public.pem     server key pair (private 0600)
      store/<shard>.json               TinyDB files, one per shard of message ids
      store/journal/<pid>-<nonce>.log  new messages, a line each, until folded into their shards (+ folded: offsets)
      spool/<client>/<data_id>         uploaded content, sealed at rest (queue/sealed.py), + <data_id>.json meta
      spool/<client>/msg/<message_id>  the message's own link to its content (a /send's: its content itself)
      spool/<client>/.usage            bytes the client's content takes (the quota's running count)
      archive/messages-YYYY-MM.jsonl   archived records, append-only
      history/<client digest>/<day>.jsonl  each client's history index (ids, archived copies)
      locks/*.lock, locks/slots.lock    lock files (multimsg/locks.py; folder 0700)
      tokens                           client token hashes, name:sha256hex (0600; MULTIMSG_TOKENS_FILE moves it)
      counters.json                    queue figures for /metrics and `multimsg stats` (queue/counters.py)
      metrics/                         prometheus-client multiprocess files (request counts per process)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

from .fsutil import ensure_private_dir

__all__ = ["Layout", "client_dir_name"]

_CLIENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9:.\-%]{0,99}")


def client_dir_name(client: str) -> str:
    """A client key (``mac:…``, ``ip:…``, ``token:…``) as a folder name.

    Client keys use letters, digits, ``:``, ``.``, ``-`` and ``%`` (before an
    IPv6 zone id, ``ip:fe80::1%eth0``) only; ``:`` becomes ``_`` and ``%``
    becomes ``+``, which no key contains, so the mapping is one to one.
    """
    if not _CLIENT_RE.fullmatch(client):
        raise ValueError(f"not a client key: {client!r}")
    return client.replace(":", "_").replace("%", "+")


@lru_cache(maxsize=4096)
def _client_spool(spool: Path, client: str) -> Path:
    return spool / client_dir_name(client)


@dataclass(frozen=True)
class Layout:
    home: Path

    def __post_init__(self) -> None:
        for folder in (self.home, self.keys, self.store, self.spool, self.archive, self.locks):
            ensure_private_dir(folder)

    @cached_property
    def keys(self) -> Path:
        return self.home / "keys"

    @cached_property
    def store(self) -> Path:
        return self.home / "store"

    @cached_property
    def spool(self) -> Path:
        return self.home / "spool"

    @cached_property
    def archive(self) -> Path:
        return self.home / "archive"

    @cached_property
    def history(self) -> Path:
        return self.home / "history"

    @cached_property
    def locks(self) -> Path:
        return self.home / "locks"

    @cached_property
    def tokens(self) -> Path:
        return self.home / "tokens"

    @cached_property
    def counters(self) -> Path:
        return self.home / "counters.json"

    @cached_property
    def metrics(self) -> Path:
        return self.home / "metrics"

    def lock(self, name: str) -> Path:
        return self.locks / f"{name}.lock"

    def shard(self, shard: str) -> Path:
        return self.store / f"{shard}.json"

    def client_spool(self, client: str) -> Path:
        # Asked several times per request: a Path is costly to build, and the clients of one server are few.
        return _client_spool(self.spool, client)
