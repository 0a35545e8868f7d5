"""Text measuring and splitting: how long a text is for a platform, and its parts.

Platforms count differently: WhatsApp counts characters (code points),
Telegram counts UTF-16 code units (a character outside the Basic Multilingual
Plane, such as most emoji, counts 2). A service names its measure as data
(``characters`` or ``utf16_units``).

``split_text(text, limit, measure)`` cuts a text that is over the limit into
ordered parts, each within the limit:

1. after the last line break in the window, if it lies in the window's second
   half (so parts are not tiny);
2. else after the last whitespace in the window;
3. else (one very long word) at the last character boundary that fits, never
   inside a character: not inside a surrogate pair, and not before a combining
   mark, variation selector or zero-width joiner that belongs to the character
   before it. The walk back to such a boundary is bounded (``MAX_WALK_BACK``
   code points): a run of marks longer than that (no real grapheme is) is cut
   at the window's end, between two code points, so hostile input cannot make
   every part one character long.

``max_parts`` stops the split as soon as the text needs more parts than that
(``TooManyParts``): the caller refuses such a text, and a huge text costs no
more than ``max_parts`` windows. Every step runs at C speed on the window
(``str`` slicing, ``rfind``, a regular expression, ``encode``), so a text at
the 512 KB upload limit is judged in milliseconds.

The separators stay at the end of the earlier part, so the parts joined give
the text back exactly, except that parts with nothing visible (only
whitespace) are dropped: platforms refuse empty messages.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Callable

__all__ = ["characters", "utf16_units", "split_text", "MEASURES", "TooManyParts", "MAX_WALK_BACK"]

MAX_WALK_BACK = 32  # code points a cut may move back to keep a character whole
_SPACE = re.compile(r"\s")


class TooManyParts(ValueError):
    """The text needs more than ``max_parts`` parts (the split stopped there)."""

    def __init__(self, max_parts: int):
        super().__init__(f"the text needs more than {max_parts} parts")
        self.max_parts = max_parts


def characters(text: str) -> int:
    return len(text)


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


MEASURES: dict[str, Callable[[str], int]] = {"characters": characters, "utf16_units": utf16_units}


def _joins_previous(char: str) -> bool:
    """Whether ``char`` is part of the character before it (so no cut before it)."""
    code = ord(char)
    return (
        unicodedata.combining(char) != 0
        or unicodedata.category(char) in ("Mn", "Me", "Mc")
        or 0xFE00 <= code <= 0xFE0F  # variation selectors
        or 0xE0100 <= code <= 0xE01EF
        or 0x1F3FB <= code <= 0x1F3FF  # emoji skin-tone modifiers
        or code == 0x200D  # zero-width joiner
    )


def _window(text: str, start: int, limit: int, measure: Callable[[str], int]) -> int:
    """The largest ``end`` such that ``text[start:end]`` measures at most ``limit``."""
    end = min(len(text), start + limit)  # no character measures less than 1
    if measure is not characters:
        used = measure(text[start:end])
        while used > limit:
            # A character measures 1 or 2 here: dropping ceil(over / 2) of them
            # never drops one that fits, and the loop ends within a few rounds.
            drop = (used - limit + 1) // 2
            used -= measure(text[end - drop:end])
            end -= drop
    return max(end, start + 1)  # a character wider than the whole limit still goes out


def _cut(text: str, start: int, end: int) -> int:
    """Where to cut ``text[start:end]`` (a window over the limit): see the module docstring."""
    window = text[start:end]
    newline = window.rfind("\n")
    if newline >= len(window) // 2:
        return start + newline + 1
    space = _SPACE.search(window[:0:-1])  # the last whitespace after the window's first character
    if space is not None:
        return end - space.start()
    floor = max(start + 1, end - MAX_WALK_BACK)
    cut = end
    while cut > floor and (_joins_previous(text[cut]) or text[cut - 1] == "\u200d"):
        cut -= 1
    if cut == floor and (_joins_previous(text[cut]) or text[cut - 1] == "\u200d"):
        return end  # a run of marks longer than any real character: cut between two code points
    return cut


def split_text(text: str, limit: int, measure: Callable[[str], int] = characters, max_parts: int | None = None) -> list[str]:
    """The parts to send ``text`` as, in order, each of at most ``limit`` by ``measure``.

    ``TooManyParts`` as soon as more than ``max_parts`` parts would be needed.
    """
    if limit < 1:
        raise ValueError("limit must be positive")
    parts: list[str] = []
    start = 0
    while start < len(text):
        end = _window(text, start, limit, measure)
        cut = len(text) if end >= len(text) else _cut(text, start, end)
        part = text[start:cut]
        if part.strip():  # platforms refuse empty messages: parts with nothing visible are dropped
            parts.append(part)
            if max_parts is not None and len(parts) > max_parts:
                raise TooManyParts(max_parts)
        start = cut
    return parts
