"""Identifiers: data ids and message ids, 16 letters and digits from ``secrets``.

Every id that arrives from outside is checked with ``check_id`` before it is
used to name anything on disk or in the store.
"""

from __future__ import annotations

import re
import secrets
import string

from .errors import InvalidInput, NotFound

__all__ = ["new_id", "is_id", "check_id", "ID_LENGTH"]

ID_LENGTH = 16
_ALPHABET = string.ascii_letters + string.digits
_UNBIASED = 256 - 256 % len(_ALPHABET)  # bytes at or past this would favour the first letters: skipped
_ID_RE = re.compile(r"[A-Za-z0-9]{%d}" % ID_LENGTH)


# Each random byte below _UNBIASED as its letter (``_ALPHABET[b % 62]``), the others dropped: one bytes.translate.
_LETTER_OF = bytes(ord(_ALPHABET[b % len(_ALPHABET)]) if b < _UNBIASED else 0 for b in range(256))
_BIASED = bytes(range(_UNBIASED, 256))


def new_id() -> str:
    """A fresh, unguessable id (about 95 bits of entropy)."""
    letters = b""
    while len(letters) < ID_LENGTH:  # one getrandom call for all letters (secrets.choice makes one per letter)
        letters += secrets.token_bytes(2 * ID_LENGTH).translate(_LETTER_OF, _BIASED)
    return letters[:ID_LENGTH].decode("ascii")


def is_id(value: object) -> bool:
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def check_id(value: str | None, what: str = "id") -> str:
    """``value`` if it is a well-formed id; otherwise the error a client gets.

    A missing id is a malformed request (400); a malformed one cannot exist,
    so it gets the same 404 as an unknown id.
    """
    if value is None or value == "":
        raise InvalidInput(f"missing field '{what}'")
    if not is_id(value):
        raise NotFound(f"unknown {what} (ids are {ID_LENGTH} letters and digits)")
    return value
