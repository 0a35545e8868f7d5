"""The multipart decoder that finds boundaries with ``bytes.find`` (``multimsg/functions/formparser.py``).

It must answer exactly what werkzeug's own decoder answers: generated bodies
(random boundaries, CRLF, LF and CR line breaks, preambles, epilogues, a
boundary's text inside a part, trailing spaces, bodies cut short) are fed to
both in the same random chunks and their events compared one by one. Then a
real runner takes uploads with a fresh random boundary each, as every client
sends them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.sansio.multipart import Epilogue, MultipartDecoder, NeedData

from multimsg.functions.formparser import BoundarySearch, Decoder, part_options
from tests.gatewayproc import ROOT

BOUNDARY_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'()+_,-./:=?"
LINE_BREAKS = st.sampled_from([b"\r\n", b"\n", b"\r"])


@st.composite
def bodies(draw) -> tuple[bytes, bytes]:
    boundary = draw(st.text(BOUNDARY_CHARS, min_size=1, max_size=70)).encode()
    lb = draw(LINE_BREAKS)
    out = draw(st.sampled_from([b"", b"preamble" + lb, lb]))
    for n in range(draw(st.integers(0, 3))):
        out += b"--" + boundary + draw(st.sampled_from([b"", b" ", b"\t "])) + lb
        name = f"f{n}".encode()
        if draw(st.booleans()):
            out += b'Content-Disposition: form-data; name="' + name + b'"; filename="x.bin"' + lb + b"Content-Type: application/octet-stream" + lb
        else:
            out += b'Content-Disposition: form-data; name="' + name + b'"' + lb
        out += lb
        # Content that looks like a boundary without being one, and bytes around line breaks.
        out += draw(st.lists(st.sampled_from([b"x", b"\r", b"\n", b"\r\n", b"-", b"--", b"--" + boundary[:-1], b"--" + boundary + b"x",
                                              b"\r\n--" + boundary[: len(boundary) // 2], os.urandom(3)]), max_size=12).map(b"".join))
        out += lb
    out += b"--" + boundary + draw(st.sampled_from([b"--", b"-- ", b"--" + lb, b"--\t" + lb, b"--" + lb + b"epilogue"]))
    cut = draw(st.sampled_from([None, None, None, -1, -3, -len(boundary) - 2]))
    return boundary, out if cut is None else out[:cut]


def events(decoder: MultipartDecoder, body: bytes, cuts: list[int]) -> list:
    """Every event the decoder gives, fed the body in the pieces ``cuts`` make (or the error it raised)."""
    seen: list = []
    pieces, start = [], 0
    for cut in sorted(set(c % (len(body) + 1) for c in cuts)) + [len(body)]:
        pieces.append(body[start:cut])
        start = cut
    try:
        for piece in pieces + [None]:
            decoder.receive_data(piece)
            event = decoder.next_event()
            while not isinstance(event, (NeedData, Epilogue)):
                seen.append(event)
                event = decoder.next_event()
            seen.append(event)
            if isinstance(event, Epilogue):
                break
    except ValueError as exc:
        seen.append(("error", str(exc)))
    return seen


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies(), st.lists(st.integers(0, 10_000), max_size=6))
def test_the_decoder_gives_werkzeugs_events_for_any_body_in_any_pieces(sample, cuts):
    boundary, body = sample
    assert events(Decoder(boundary), body, cuts) == events(MultipartDecoder(boundary), body, cuts)


@pytest.mark.parametrize("required", [False, True])
@settings(max_examples=150, deadline=None)
@given(boundary=st.text(BOUNDARY_CHARS, min_size=1, max_size=20).map(str.encode),
       parts=st.lists(st.sampled_from([b"\r\n", b"\n", b"\r", b"--", b"-", b" ", b"\t", b"x", b"BOUNDARY"]), max_size=14),
       pos=st.integers(0, 6))
def test_a_search_finds_what_werkzeugs_expression_finds(required, boundary, parts, pos):
    data = b"".join(boundary if p == b"BOUNDARY" else p for p in parts)
    line_break = rb"(?:\r\n|\n|\r)"
    expression = re.compile(rb"%s%s--%s(--[^\S\n\r]*%s?|[^\S\n\r]*%s)"
                            % (line_break, b"" if required else b"?", re.escape(boundary), line_break, line_break), re.MULTILINE)
    theirs, ours = expression.search(data, pos), BoundarySearch(boundary, required).search(data, pos)
    assert (ours and (ours.start(), ours.end(), ours.group(1))) == (theirs and (theirs.start(), theirs.end(), theirs.group(1)))


@pytest.mark.parametrize("limits", [{}, {"max_form_memory_size": 500_000, "max_parts": 1000}])
def test_the_decoder_starts_with_the_fields_werkzeugs_decoder_starts_with(limits):
    ours, theirs = vars(Decoder(b"b0undary", **limits)), vars(MultipartDecoder(b"b0undary", **limits))
    assert ours.keys() == theirs.keys()  # a werkzeug that adds a field to its decoder fails here
    for name in ours.keys() - {"preamble_re", "boundary_re"}:
        assert ours[name] == theirs[name] and type(ours[name]) is type(theirs[name]), name
    assert Decoder(b"b0undary").buffer is not Decoder(b"b0undary").buffer


def test_werkzeugs_form_parser_uses_it():
    import werkzeug.formparser
    import werkzeug.sansio.multipart

    import multimsg.functions.http  # noqa: F401  (installs it)

    assert werkzeug.formparser.MultipartDecoder is Decoder
    assert werkzeug.sansio.multipart.parse_options_header is part_options


DISPOSITIONS = ['form-data; name="serv"', 'form-data; name="data"; filename="b.txt"', "form-data; name=data; filename=x.bin",
                'form-data; name="a\\"b"; filename="%22q%22.txt"', "form-data; filename*=UTF-8''%C3%B1and%C3%BA.txt; name=\"d\"",
                "form-data", "form-data;", "; name=x", "", 'attachment; name="k"; name="twice"', "form-data; name=\"" + "n" * 300 + "\""]


@pytest.mark.parametrize("value", DISPOSITIONS)
def test_a_parts_content_disposition_is_parsed_as_werkzeug_parses_it_each_time(value):
    from werkzeug.http import parse_options_header

    for _ in range(3):  # the first parse, then remembered ones
        answer = part_options(value)
        assert answer == parse_options_header(value)
        answer[1]["name"] = "changed by a caller"  # each caller's own dict


UPLOADS = """
import sys, time, requests
url, n = sys.argv[1], int(sys.argv[2])
with requests.Session() as s:
    for i in range(n):  # requests makes a fresh random boundary for every body
        r = s.post(url + "/data", files={"data": ("t.txt", b"contenido %d" % i)}, timeout=30)
        assert r.status_code == 200 and len(r.text) == 16, (r.status_code, r.text)
print("ok")
"""


def test_uploads_with_a_fresh_boundary_each_are_stored_and_read_back(make_gateway, telegram):
    runner = make_gateway()
    done = subprocess.run([sys.executable, "-c", UPLOADS, runner.url, "20"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]
    data_id = runner.upload_id(b"hola, multipart", filename="t.txt")
    assert runner.msg(id=data_id, serv="telegram", dest="4242", type="text").status_code == 200
    runner.drain()
    deadline = time.monotonic() + 30
    while not telegram.received() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert telegram.received()[0]["fields"]["text"] == "hola, multipart"


FORM = "application/x-www-form-urlencoded"
URLENCODED_BODIES = [  # (body, content type, environ changes)
    (b"id=AAAABBBBCCCCDDDD&serv=telegram&dest=4242&type=text", FORM, {}),
    (b"a=&b&c=1&a=2&&=x&d==", FORM, {}),
    (b"caption=hola+mundo%21&x=%zz&y=%C3%B1&z=%ff%fe&w=%", FORM, {}),
    (b"bad=\xff\xfe", FORM, {}),  # not UTF-8: werkzeug's silent parser gives no fields
    (b"a=1", FORM + "; charset=utf-8", {}),
    (b"a=1", "Application/X-WWW-Form-URLEncoded", {}),
    (b"", FORM, {}),
    (b"a=1&b=2", FORM, {"CONTENT_LENGTH": "3"}),  # only what Content-Length says is read
    (b"a=1", FORM, {"CONTENT_LENGTH": "30"}),  # the client went away before its body was whole
    (b"a=1", FORM, {"CONTENT_LENGTH": "x"}),
    (b"a=1", FORM, {"CONTENT_LENGTH": None}),
    (b"a=1", FORM, {"CONTENT_LENGTH": None, "HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True}),
    (b"a=1", FORM, {"HTTP_TRANSFER_ENCODING": "chunked"}),
    (b"id=AAAABBBBCCCCDDDD&serv=telegram", FORM, {"wsgi.input_terminated": True}),  # what waitress hands over
    (b"a=1&b=2", FORM, {"CONTENT_LENGTH": "3", "wsgi.input_terminated": True}),  # the server bounds it: all is read
    (b"a=" + b"x" * 70_000, FORM, {"wsgi.input_terminated": True}),
    (b"a=" + b"x" * 70_000, FORM, {}),  # over SMALL_BODY: 413
    (b"a=" + b"x" * 600_000, FORM, {}),  # over MAX_FORM_MEMORY_SIZE too: 413 with no max_content_length
    ("&".join(f"f{i}={i}" for i in range(1500)).encode(), FORM, {}),
    (b"a=1", "text/plain", {}),
    (b'{"a": "1"}', "application/json", {}),
    (b"a=1", "", {}),
]


def _read_form(body: bytes, content_type: str, changes: dict, ours: bool, max_content_length: int | None, debug: bool = False):
    """What a request's form, files and leftover stream are after reading it (by werkzeug, or first by load_urlencoded)."""
    import io

    import flask
    from werkzeug.exceptions import HTTPException
    from werkzeug.test import EnvironBuilder

    from multimsg.functions.formparser import load_urlencoded

    environ = EnvironBuilder(method="POST", input_stream=io.BytesIO(body), content_type=content_type or None,
                             content_length=len(body)).get_environ()
    for name, value in changes.items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    app = flask.Flask("forms")
    app.debug = debug
    with app.request_context(environ):
        request = flask.request._get_current_object()
        request.max_content_length = max_content_length
        try:
            if ours:
                load_urlencoded(request)
            form, files = request.form, request.files
            return (type(form).__qualname__, list(form.items(multi=True)), type(files).__qualname__, list(files.items(multi=True)),
                    request.stream.read())
        except HTTPException as exc:
            return ("error", type(exc), exc.code, exc.description)


@pytest.mark.parametrize("max_content_length", [64 * 1024, None])
@pytest.mark.parametrize("body,content_type,changes", URLENCODED_BODIES, ids=[f"body{i}" for i in range(len(URLENCODED_BODIES))])
def test_a_urlencoded_body_is_read_as_werkzeug_reads_it(body, content_type, changes, max_content_length):
    theirs = _read_form(body, content_type, changes, ours=False, max_content_length=max_content_length)
    assert _read_form(body, content_type, changes, ours=True, max_content_length=max_content_length) == theirs


def test_in_debug_mode_werkzeug_reads_the_form():
    body, content_type, changes = URLENCODED_BODIES[0]
    theirs = _read_form(body, content_type, changes, ours=False, max_content_length=None, debug=True)
    assert _read_form(body, content_type, changes, ours=True, max_content_length=None, debug=True) == theirs


def test_the_urlencoded_body_waitress_hands_over_is_read_without_werkzeugs_parser():
    """waitress bounds the input itself (``wsgi.input_terminated``): that body is still ours to read, not left to werkzeug."""
    import io

    import flask
    from werkzeug.test import EnvironBuilder

    from multimsg.functions.formparser import load_urlencoded

    body = b"id=AAAABBBBCCCCDDDD&serv=telegram&dest=4242&type=text"
    environ = EnvironBuilder(method="POST", input_stream=io.BytesIO(body), content_type=FORM, content_length=len(body)).get_environ()
    environ["wsgi.input_terminated"] = True
    with flask.Flask("forms").request_context(environ):
        request = flask.request._get_current_object()
        assert load_urlencoded(request) == [("id", "AAAABBBBCCCCDDDD"), ("serv", "telegram"), ("dest", "4242"), ("type", "text")]
        assert request.form["dest"] == "4242"
