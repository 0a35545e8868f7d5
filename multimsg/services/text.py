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
   before it.

The separators stay at the end of the earlier part, so the parts joined give
the text back exactly, except that parts with nothing visible (only
whitespace) are dropped: platforms refuse empty messages.
"""

from __future__ import annotations

import unicodedata
from typing import Callable

__all__ = ["characters", "utf16_units", "split_text", "MEASURES"]


def characters(text: str) -> int:
    return len(text)


def utf16_units(text: str) -> int:
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


MEASURES: dict[str, Callable[[str], int]] = {"characters": characters, "utf16_units": utf16_units}


def _width(measure: Callable[[str], int]) -> Callable[[str], int]:
    if measure is utf16_units:
        return lambda char: 2 if ord(char) > 0xFFFF else 1
    return lambda char: 1


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


def _window(text: str, start: int, limit: int, width: Callable[[str], int]) -> int:
    """The largest ``end`` such that ``text[start:end]`` measures at most ``limit``."""
    used = 0
    end = start
    while end < len(text):
        used += width(text[end])
        if used > limit:
            break
        end += 1
    return max(end, start + 1)  # a character wider than the whole limit still goes out


def _cut(text: str, start: int, end: int) -> int:
    """Where to cut ``text[start:end]`` (a window over the limit): see the module docstring."""
    window = text[start:end]
    newline = window.rfind("\n")
    if newline >= len(window) // 2:
        return start + newline + 1
    for index in range(len(window) - 1, 0, -1):
        if window[index].isspace():
            return start + index + 1
    cut = end
    while cut > start + 1 and (_joins_previous(text[cut]) or text[cut - 1] == "\u200d"):
        cut -= 1
    return cut


def split_text(text: str, limit: int, measure: Callable[[str], int] = characters) -> list[str]:
    """The parts to send ``text`` as, in order, each of at most ``limit`` by ``measure``."""
    if limit < 1:
        raise ValueError("limit must be positive")
    width = _width(measure)
    parts: list[str] = []
    start = 0
    while start < len(text):
        end = _window(text, start, limit, width)
        if end >= len(text):
            parts.append(text[start:])
            break
        cut = _cut(text, start, end)
        parts.append(text[start:cut])
        start = cut
    return [part for part in parts if part.strip()]
