"""Form bodies parsed for less: multipart without compiling regular expressions for each request's boundary.

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
``load_urlencoded`` reads a urlencoded body (``/msg``) without werkzeug's
form-parser set-up, with the same answers.
"""

from __future__ import annotations

import io
import re
from functools import lru_cache
from urllib.parse import parse_qsl

import flask
import werkzeug.formparser
import werkzeug.sansio.multipart
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import MultipartDecoder, State

__all__ = ["Decoder", "BoundarySearch", "part_options", "load_urlencoded", "install"]

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


URLENCODED = "application/x-www-form-urlencoded"


def load_urlencoded(request: flask.Request) -> list[tuple[str, str]] | None:
    """Read a urlencoded body into ``request.form`` (and an empty ``request.files``) as werkzeug reads it, for less.

    Returns the fields in the order given (None when it left the body to
    werkzeug). werkzeug first builds a form parser from three of the app's
    limits, wraps the input in a guarded stream and asks for the content
    length through the request's headers (an absent ``Transfer-Encoding``
    costs a raised exception): some 60 us of the 70 it took for the four
    fields of a ``/msg``. This takes its steps alone, with the same answers:
    413 past ``max_content_length`` or ``MAX_FORM_MEMORY_SIZE``, exactly
    ``Content-Length`` bytes read (``ClientDisconnected`` when fewer came),
    the same ``parse_qsl`` call, a body that is not UTF-8 read as no fields
    (werkzeug's parser is silent), and the results put where werkzeug puts
    them, the stream left read. Anything else (another type, no plain
    ``Content-Length``, a chunked input, a form already
    read, a body read by ``get_data``, Flask's debug mode) is left to
    werkzeug. ``tests/test_formparser.py`` compares the two.
    """
    state, environ = request.__dict__, request.environ
    if "form" in state or "stream" in state or state.get("_cached_data") is not None:
        return None
    content_type, length = environ.get("CONTENT_TYPE"), environ.get("CONTENT_LENGTH")
    if not content_type or not length or not length.isdigit() or not length.isascii():
        return None
    if content_type != URLENCODED and request.mimetype != URLENCODED:
        return None
    if "HTTP_TRANSFER_ENCODING" in environ:
        return None
    app = flask.current_app._get_current_object() if flask.has_app_context() else None  # type: ignore[attr-defined]
    if app is not None and app.debug:
        return None
    size = int(length)
    for limit in (_limit(request, app, "max_content_length", "MAX_CONTENT_LENGTH"),
                  _limit(request, app, "max_form_memory_size", "MAX_FORM_MEMORY_SIZE")):
        if limit is not None and size > limit:
            raise RequestEntityTooLarge()
    if "wsgi.input_terminated" in environ:  # the server bounds the input (waitress does): read it all, as werkzeug does
        body = environ["wsgi.input"].read()
    else:
        body = _read_exactly(environ["wsgi.input"], size)
    try:
        items = parse_qsl(body.decode(), keep_blank_values=True, errors="werkzeug.url_quote")
    except ValueError:
        items = []
    state["stream"] = io.BytesIO()  # read to its end, as werkzeug's guarded stream is after parsing
    state["form"] = request.parameter_storage_class(items)
    state["files"] = request.parameter_storage_class()
    return items


def _limit(request: flask.Request, app: flask.Flask | None, name: str, setting: str) -> int | None:
    """Flask's ``request.<name>``: the request's own value, else the app's setting (each property looks the app up twice)."""
    own = getattr(request, "_" + name, _UNSET)
    if own is _UNSET or app is None:
        return getattr(request, name)
    return own if own is not None else app.config[setting]  # type: ignore[return-value]


_UNSET = object()


def _read_exactly(stream, size: int) -> bytes:
    """``size`` bytes of the input, as werkzeug's ``LimitedStream`` reads them (a body cut short: ``ClientDisconnected``)."""
    parts, left = [], size
    while left > 0:
        part = stream.read(min(left, 64 * 1024))
        if not part:
            raise ClientDisconnected()
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


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
