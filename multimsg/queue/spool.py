"""The spool contract: uploaded content, one object per data id, per client.

A ``Spool`` stores an upload (``put``), finds it again for its client
(``get``), gives a message its own reference to it (``attach``, so that the
upload may expire while queued messages keep their content), stores a
message's content with no upload (``put_message``, for ``POST /send``), hands out the
content of a message (``message_content``) and forgets it (``release``). ``rewrite_heads`` changes
the first bytes of every stored object in place, durably (the re-wrap of
data keys by ``queue/sealed.py``, which wraps any spool so that all of it
is stored encrypted).

Content is handed out as an object (``multimsg.content``), never as a path
into the spool, so a spool in a blob store is a peer of the spool folder.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Iterable

from ..content import BytesContent, Content

__all__ = ["Spool", "DataInfo", "Content", "BytesContent"]


@dataclass(frozen=True)
class DataInfo:
    data_id: str
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
    def content(self, client: str, data_id: str) -> Content:
        """The content of the client's upload; NotFound if unknown, foreign or expired."""

    def lookup(self, client: str, data_id: str) -> "tuple[DataInfo, Content]":
        """``get`` and ``content`` in one (a backend that can reads the upload's record once)."""
        return self.get(client, data_id), self.content(client, data_id)

    @abstractmethod
    def attach(self, client: str, data_id: str, message_id: str) -> None:
        """Give a message its own reference to the upload's content."""

    def put_message(self, client: str, chunks: Iterable[bytes], filename: str, message_id: str) -> DataInfo:
        """Store content durably as the message's own (``POST /send``), counted in ``usage`` until released.

        By default an upload that the message is attached to (``put`` then
        ``attach``); a backend that can stores the message's content alone,
        with no upload beside it.
        """
        info = self.put(client, chunks, filename)
        self.attach(client, info.data_id, message_id)
        return info

    @abstractmethod
    def message_content(self, client: str, message_id: str) -> Content:
        """The content of a message; FileNotFoundError if it is gone."""

    @abstractmethod
    def release(self, client: str, message_id: str) -> None:
        """Forget a message's content (after it is archived)."""

    @abstractmethod
    def usage(self, client: str) -> int:
        """Bytes the client's content takes (for the per-client quota): its live uploads, and what a backend counts beside them."""

    @abstractmethod
    def sweep(self, now: float, live: "Iterable[str] | None" = None, older_than: float = 3600.0) -> int:
        """Delete uploads past their time-to-live, and leftovers older than ``older_than`` seconds.

        ``live``: ids of the messages still stored; a message reference not
        among them is an orphan (left by a crash between attach and add).
        Returns how many things were removed.
        """

    @abstractmethod
    def rewrite_heads(self, size: int, change: "Callable[[bytes], bytes | None]") -> int:
        """Replace the first ``size`` bytes of every stored object (uploads and message copies) by
        ``change(first bytes)`` where that is not None, in place and durably, one object at a time;
        the rest of each object is not rewritten. Returns how many objects changed."""
