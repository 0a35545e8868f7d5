"""File names that come from clients: one rule for ``/data``'s upload name and ``/msg``'s ``filename``.

A plain file name has at most ``FILENAME_MAX`` characters, no control
characters (C0, DEL, C1: NUL, ESC, newlines...) and no slashes or
backslashes. ``/msg``'s ``filename`` is a name the client chose on purpose, so
one that breaks the rule is refused (``check_filename``: 400 with the reason).
The name of an upload is what the client's file system or library put in the
multipart header, so ``/data`` cleans it instead (``clean_filename``): the last
path component, control characters dropped, cut to ``FILENAME_MAX``; a name
with nothing left becomes ``data``. Either way a stored name is plain.
"""

from __future__ import annotations

import re

from .errors import InvalidInput

__all__ = ["FILENAME_MAX", "is_plain_filename", "check_filename", "clean_filename"]

FILENAME_MAX = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_BAD = re.compile(r"[\x00-\x1f\x7f-\x9f/\\]")


def is_plain_filename(name: str) -> bool:
    return 0 < len(name) <= FILENAME_MAX and not _BAD.search(name)


def check_filename(name: str, field: str = "filename") -> str:
    """``name`` stripped, if it is a plain file name; InvalidInput otherwise."""
    name = name.strip()
    if not is_plain_filename(name):
        raise InvalidInput(f"'{field}' must be a plain file name: at most {FILENAME_MAX} characters, no slashes or control characters")
    return name


def clean_filename(name: str | None, default: str = "data") -> str:
    """A plain file name made from ``name``: its last path component, control characters dropped, at most FILENAME_MAX."""
    name = _CONTROL.sub("", name or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name[:FILENAME_MAX].strip() or default
