"""``GET /messages``: a client's own messages of the history window, newest first, a page at a time.

The query (``state``, ``serv``, ``since``, ``limit``, ``cursor``) is parsed
here; the store pages through the client's own index (``MessageStore.history``).
A cursor is opaque to clients: the (created_at, id) of the last message of a
page, as unpadded base64url JSON. Reading the history changes nothing (no
report is recorded, nothing is archived).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Mapping

from .errors import InvalidInput
from .model import Message, State
from .queue.store import Cursor, MessageStore

__all__ = ["Query", "Page", "parse_query", "page", "DEFAULT_LIMIT", "MAX_LIMIT"]

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
PARAMS = ("state", "serv", "since", "limit", "cursor")


@dataclass(frozen=True)
class Query:
    state: State | None = None
    serv: str | None = None
    since: float = 0.0
    limit: int = DEFAULT_LIMIT
    cursor: Cursor | None = None


@dataclass(frozen=True)
class Page:
    messages: list[Message]
    next_cursor: str | None  # None: this was the last page


def _time(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"'since' must be Unix seconds or an RFC 3339 time with an offset, not {text!r}") from None
    if when.tzinfo is None:
        raise InvalidInput("'since' needs an offset (e.g. 2026-01-02T03:04:05Z)")
    return when.timestamp()


def encode_cursor(message: Message) -> str:
    return base64.urlsafe_b64encode(json.dumps([message.created_at, message.id]).encode()).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    try:
        at, message_id = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not isinstance(message_id, str):
            raise ValueError
        return float(at), message_id
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("'cursor' is not a cursor this server gave out (pass next_cursor as it came)") from None


def parse_query(args: Mapping[str, str]) -> Query:
    """The query of ``GET /messages``; InvalidInput with the reason for a bad one."""
    unknown = sorted(set(args) - set(PARAMS))
    if unknown:
        raise InvalidInput(f"unknown parameter {unknown[0]!r}; /messages takes {', '.join(PARAMS)}")
    state = args.get("state") or None
    if state is not None and state not in {str(s) for s in State}:
        raise InvalidInput(f"'state' must be one of {', '.join(str(s) for s in State)}, not {state!r}")
    limit_text = args.get("limit") or str(DEFAULT_LIMIT)
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
        raise InvalidInput(f"'limit' must be a whole number from 1 to {MAX_LIMIT}")
    return Query(state=State(state) if state else None, serv=args.get("serv") or None,
                 since=_time(args["since"]) if args.get("since") else 0.0, limit=int(limit_text),
                 cursor=decode_cursor(args["cursor"]) if args.get("cursor") else None)


def page(store: MessageStore, client: str, query: Query, now: float) -> Page:
    """One page of the client's history: ``limit`` messages, and the cursor of the next page if there is one."""
    def accept(message: Message) -> bool:
        return (query.state is None or message.state == query.state) and (query.serv is None or message.serv == query.serv)

    found = store.history(client, now, since=query.since, before=query.cursor, accept=accept, limit=query.limit + 1)
    shown = found[: query.limit]
    return Page(shown, encode_cursor(shown[-1]) if len(found) > query.limit else None)
