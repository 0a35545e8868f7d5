"""Multipart bodies parsed without compiling regular expressions for each request's boundary.

werkzeug's ``MultipartDecoder`` compiles two regular expressions that contain
the request's boundary. Every real client (curl, ``requests``, browsers, our
own ``MultipartBody``) sends a fresh random boundary, so ``re``'s cache never
hits and each upload paid about 0.75 ms of CPU for the compiles alone: a
fifth of a small ``/data``. ``Decoder`` is werkzeug's decoder with those two
expressions replaced by ``BoundarySearch``: ``bytes.find`` for ``--boundary``
and one expression compiled once for what may follow it. It answers exactly
what werkzeug's expressions answer (``tests/test_formparser.py`` compares the
two on generated bodies split at random), and everything else is werkzeug's.

``install()`` makes werkzeug's form parser use it (``werkzeug.formparser``
looks the decoder up by name when it parses), and makes the decoder parse
each part's Content-Disposition once per value (``part_options``).
"""

from __future__ import annotations

import re
from functools import lru_cache

import werkzeug.formparser
import werkzeug.sansio.multipart
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import MultipartDecoder, State

__all__ = ["Decoder", "BoundarySearch", "part_options", "install"]

# What werkzeug's expressions accept after ``--boundary``: the closing ``--`` (then optional horizontal
# space and line break), or horizontal space and a line break.
_AFTER = re.compile(rb"(--[^\S\n\r]*(?:\r\n|\n|\r)?|[^\S\n\r]*(?:\r\n|\n|\r))")


class _Match:
    __slots__ = ("_start", "_end", "_after")

    def __init__(self, start: int, end: int, after: bytes):
        self._start, self._end, self._after = start, end, after

    def start(self) -> int:
        return self._start

    def end(self) -> int:
        return self._end

    def group(self, index: int) -> bytes:
        assert index == 1
        return self._after


class BoundarySearch:
    """The ``search`` of ``[line break]--boundary(after)``, the line break optional or required."""

    def __init__(self, boundary: bytes, line_break_required: bool):
        self.marker = b"--" + boundary
        self.required = line_break_required

    def search(self, data: bytes | bytearray, pos: int = 0) -> _Match | None:
        marker, at = self.marker, data.find(self.marker, pos)
        while at != -1:
            after = _AFTER.match(data, at + len(marker))
            if after is not None:
                # The leftmost match: it starts at the line break before the marker, if there is one.
                if at - 2 >= pos and data[at - 2:at] == b"\r\n":
                    return _Match(at - 2, after.end(), after.group(1))
                if at - 1 >= pos and data[at - 1:at] in (b"\n", b"\r"):
                    return _Match(at - 1, after.end(), after.group(1))
                if not self.required:
                    return _Match(at, after.end(), after.group(1))
            at = data.find(marker, at + 1)
        return None


class Decoder(MultipartDecoder):
    """werkzeug's decoder, its two per-boundary expressions replaced by ``BoundarySearch``."""

    def __init__(self, boundary: bytes, max_form_memory_size: int | None = None, *, max_parts: int | None = None):
        # werkzeug's __init__, field by field, but for the two expressions: calling it with a placeholder
        # boundary escaped and looked up two expressions only to drop them (16 us of every upload).
        # tests/test_formparser.py checks that these are the fields werkzeug's __init__ sets, with its values.
        self.buffer = bytearray()
        self.complete = False
        self.max_form_memory_size = max_form_memory_size
        self.max_parts = max_parts
        self.state = State.PREAMBLE
        self.boundary = boundary
        self.preamble_re = BoundarySearch(boundary, line_break_required=False)  # type: ignore[assignment]
        self.boundary_re = BoundarySearch(boundary, line_break_required=True)  # type: ignore[assignment]
        self._search_position = 0
        self._parts_decoded = 0


CACHED_HEADER = 256  # a part's Content-Disposition up to this long is parsed once; a longer one each time


def part_options(value: str | None) -> tuple[str, dict[str, str]]:
    """werkzeug's ``parse_options_header`` for a part's Content-Disposition, remembered per value.

    Clients send the same few (``form-data; name="serv"``, the same file
    names); werkzeug parses each with several expressions, some 14 us a text
    field and 30 us a file part. The answer depends on the text alone; each
    caller gets its own dict.
    """
    if value is None or len(value) > CACHED_HEADER:
        return parse_options_header(value)
    disposition, options = _part_options(value)
    return disposition, dict(options)


@lru_cache(maxsize=512)
def _part_options(value: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    disposition, options = parse_options_header(value)
    return disposition, tuple(options.items())


def install() -> None:
    """Make werkzeug's form parsing (``request.form``, ``request.files``) use ``Decoder`` and ``part_options``."""
    werkzeug.formparser.MultipartDecoder = Decoder  # type: ignore[misc]
    werkzeug.sansio.multipart.parse_options_header = part_options  # what its decoder parses a part's Content-Disposition with
