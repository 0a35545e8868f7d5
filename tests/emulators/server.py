"""The emulators' HTTP/1.1 server, and the request and response objects the platform modules use.

Owns `serve()` (a thread per connection, keep-alive, bodies by Content-Length or chunked), `Request`
and `Response`.  It replaced werkzeug's development server, which cost more CPU than the gateway's
own work on each message in the benchmarks (the e-mail package parsing every header block, a new
connection and thread per request, as it answers `Connection: close`; and 0.1 s of CPU to import
werkzeug at start): the emulators run on the same cores as the gateway they measure.

`Request` answers what the platform modules ask (`method`, `path`, `args`, `headers`, `form`,
`files`, `get_data`, `get_json`, `is_json`, `mimetype`, `content_type`, `environ`) the way
werkzeug's `Request` does, from the same WSGI environ werkzeug's server would build; a multipart
body, the rare cases werkzeug words its own way (a form over 64 MiB, percent-escapes that are not
UTF-8) and any other attribute (`host`, ...) go to a werkzeug `Request` over that environ,
imported on first use.  tests/test_emulators.py compares the two on the same requests.
"""

from __future__ import annotations

import io
import json
import socket
import sys
import threading
import time
from http import HTTPStatus
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["Params", "Request", "Response", "serve"]

MAX_FORM_MEMORY = 64 * 1024 * 1024  # let over-long texts reach validation, not a 413
_MAX_LINE = 65536
_FORM = "application/x-www-form-urlencoded"
_MULTIPART = "multipart/form-data"
_HEADER_ENVIRON = {"CONTENT_TYPE", "CONTENT_LENGTH"}


class Params(dict):  # type: ignore[type-arg]
    """Parsed parameters as werkzeug's `MultiDict` shows them: `get`, `[]`, `items()` give the first
    value of each name (in order of first appearance), `getlist` all of them."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__()
        self.lists: dict[str, list[str]] = {}
        for name, value in pairs:
            self.lists.setdefault(name, []).append(value)
            self.setdefault(name, value)

    def getlist(self, name: str) -> list[str]:
        return list(self.lists.get(name, ()))


class Headers:
    """The request headers, read from the environ as werkzeug's `EnvironHeaders` does."""

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ

    @staticmethod
    def _key(name: str) -> str:
        key = name.upper().replace("-", "_")
        return key if key in _HEADER_ENVIRON else "HTTP_" + key

    def __getitem__(self, name: str) -> str:
        return str(self.environ[self._key(name)])

    def get(self, name: str, default: Any = None) -> Any:
        return self.environ.get(self._key(name), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) in self.environ

    def items(self) -> list[tuple[str, str]]:
        found = []
        for key, value in self.environ.items():
            if key.startswith("HTTP_") and key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                found.append((key[5:].replace("_", "-").title(), value))
            elif key in _HEADER_ENVIRON and value:
                found.append((key.replace("_", "-").title(), value))
        return found

    def __iter__(self) -> Any:
        return iter(self.items())


_WERKZEUG: list[Any] = []


def _werkzeug_request() -> Any:
    """werkzeug's Request class, with the emulators' form limit; imported on first use."""
    if not _WERKZEUG:
        from werkzeug.wrappers import Request as WerkzeugRequest

        class Full(WerkzeugRequest):
            max_form_memory_size = MAX_FORM_MEMORY

        _WERKZEUG.append(Full)
    return _WERKZEUG[0]


class Request:
    """One request (see the module's docstring)."""

    def __init__(self, environ: dict[str, Any], body: bytes, sock: socket.socket | None = None) -> None:
        self.environ, self.body, self.socket = environ, body, sock
        self.method: str = environ["REQUEST_METHOD"]
        self.path = "/" + environ["PATH_INFO"].encode("latin-1").decode(errors="replace").lstrip("/")
        self.headers = Headers(environ)
        self.content_type: str | None = environ.get("CONTENT_TYPE")
        self.mimetype = (self.content_type or "").partition(";")[0].strip().lower()
        self._multipart = self.mimetype == _MULTIPART
        self._werkzeug: Any = None
        self._data: bytes | None = None  # as werkzeug's get_data(cache=True) would give it
        self._consumed = False  # the form was parsed from the stream before any get_data
        self._args: Params | None = None
        self._form: Params | None = None
        self._json: Any = ...

    def werkzeug(self) -> Any:
        """A werkzeug Request over the same environ and body (imported on first use)."""
        if self._werkzeug is None:
            self.environ["wsgi.input"] = io.BytesIO(self.body)
            self._werkzeug = _werkzeug_request()(self.environ)
            if self._data is not None:  # what get_data gave is werkzeug's cache
                self._werkzeug._cached_data = self._data
        return self._werkzeug

    def __getattr__(self, name: str) -> Any:  # host, url, ...: werkzeug's answer
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.werkzeug(), name)

    @property
    def is_json(self) -> bool:
        mimetype = self.mimetype
        return mimetype == "application/json" or mimetype.startswith("application/") and mimetype.endswith("+json")

    @property
    def args(self) -> Any:
        if self._args is None:
            if not self.environ["QUERY_STRING"]:
                self._args = Params()
                return self._args
            try:
                self._args = Params(parse_qsl(self.environ["QUERY_STRING"].encode("latin-1").decode(), keep_blank_values=True,
                                              errors="strict"))
            except UnicodeDecodeError:  # werkzeug keeps such bytes percent-encoded
                return self.werkzeug().args
        return self._args

    @property
    def form(self) -> Any:
        if self._multipart:
            return self.werkzeug().form
        if self._form is None:
            form: Any = Params()
            if self.mimetype == _FORM:
                if len(self.body) > MAX_FORM_MEMORY:
                    return self.werkzeug().form  # werkzeug's 413
                try:
                    form = Params(parse_qsl(self.body.decode(), keep_blank_values=True, errors="strict"))
                except UnicodeDecodeError:
                    if self._valid_utf8():  # percent-escaped bytes that are not UTF-8: werkzeug keeps them escaped
                        form = self.werkzeug().form
                    # else: werkzeug's form parser gives an empty form for a body that is not UTF-8
                self._consumed = self._data is None  # as werkzeug's parser read the stream
            self._form = form
        return self._form

    def _valid_utf8(self) -> bool:
        try:
            self.body.decode()
        except UnicodeDecodeError:
            return False
        return True

    @property
    def files(self) -> Any:
        if self._multipart:
            return self.werkzeug().files
        return Params()

    def get_data(self, cache: bool = True, as_text: bool = False, parse_form_data: bool = False) -> Any:
        if self._multipart or not cache:
            return self.werkzeug().get_data(cache=cache, as_text=as_text, parse_form_data=parse_form_data)
        if parse_form_data:
            _ = self.form
        if self._data is None:
            self._data = b"" if self._consumed else self.body
        return self._data.decode(errors="replace") if as_text else self._data

    def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        if not silent or not cache or self._multipart:
            return self.werkzeug().get_json(force=force, silent=silent, cache=cache)
        if not (force or self.is_json):
            return None
        if self._json is ...:
            try:
                self._json = json.loads(self.get_data())
            except ValueError:
                self._json = None
        return self._json


class Response:
    """One answer: status, headers (Content-Type among them) and the body's bytes."""

    def __init__(self, body: bytes | str, status: int = 200, headers: Any = None, content_type: str = "text/html; charset=utf-8") -> None:
        # As werkzeug's Response: `content_type` replaces any Content-Type among `headers`.
        self.body = body.encode() if isinstance(body, str) else body
        self.status = status
        given = list(dict(headers).items()) if headers else []
        self.headers = [(k, str(v)) for k, v in given if k.lower() != "content-type"] + [("Content-Type", content_type)]


_REASONS = {status.value: status.phrase for status in HTTPStatus}


def _reason(status: int) -> str:
    return _REASONS.get(status, "UNKNOWN")


def _environ(method: str, target: str, version: str, headers: list[tuple[str, str]], server: tuple[str, int],
             client: tuple[str, int]) -> dict[str, Any]:
    """The WSGI environ werkzeug's development server builds for this request (its make_environ)."""
    if target.startswith("/") and not target.startswith("//"):  # the usual origin form: what urlsplit gives, quicker
        path, _, query = target.partition("#")[0].partition("?")
        scheme = netloc = ""
    else:
        url = urlsplit(target)
        path, query, scheme, netloc = url.path, url.query, url.scheme, url.netloc
        path = f"/{netloc}{path}" if not scheme and netloc else path
    environ: dict[str, Any] = {
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr, "wsgi.multithread": True,
        "wsgi.multiprocess": False, "wsgi.run_once": False, "SERVER_SOFTWARE": "multimsg-emulator",
        "REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": unquote(path).encode().decode("latin-1"),
        "QUERY_STRING": query.encode().decode("latin-1"), "REQUEST_URI": target.encode().decode("latin-1"),
        "RAW_URI": target.encode().decode("latin-1"), "REMOTE_ADDR": client[0], "REMOTE_PORT": client[1],
        "SERVER_NAME": server[0], "SERVER_PORT": str(server[1]), "SERVER_PROTOCOL": version,
    }
    for name, value in headers:
        if "_" in name:
            continue
        key = name.upper().replace("-", "_")
        if key not in _HEADER_ENVIRON:
            key = "HTTP_" + key
            if key in environ:
                value = f"{environ[key]},{value}"
        environ[key] = value
    if scheme and netloc:
        environ["HTTP_HOST"] = netloc
    return environ


class _BadRequest(Exception):
    pass


def _read_head(rfile: Any) -> tuple[str, str, str, list[tuple[str, str]]] | None:
    """The request line and headers; None when the client closed the connection between requests."""
    line = rfile.readline(_MAX_LINE)
    while line in (b"\r\n", b"\n"):  # stray line ends between requests are allowed (RFC 9112 2.2)
        line = rfile.readline(_MAX_LINE)
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(f"bad request line {line[:100]!r}")
    headers: list[tuple[str, str]] = []
    while True:
        raw = rfile.readline(_MAX_LINE)
        if raw in (b"\r\n", b"\n"):
            return parts[0], parts[1], parts[2], headers
        if not raw.endswith(b"\n"):
            raise _BadRequest("header line too long or connection closed")
        text = raw.decode("latin-1")
        if text[0] in " \t" and headers:  # obsolete line folding
            headers[-1] = (headers[-1][0], headers[-1][1] + " " + text.strip())
            continue
        name, colon, value = text.partition(":")
        if not colon:
            raise _BadRequest(f"bad header line {raw[:100]!r}")
        headers.append((name.strip(), value.strip()))
        if len(headers) > 200:
            raise _BadRequest("too many headers")


def _read_chunked(rfile: Any) -> bytes:
    parts = []
    while True:
        size_line = rfile.readline(_MAX_LINE)
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _BadRequest("bad chunk size") from None
        if size == 0:
            while rfile.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(parts)
        chunk = rfile.read(size)
        if len(chunk) < size:
            raise _BadRequest("connection closed inside a chunk")
        parts.append(chunk)
        rfile.readline(_MAX_LINE)


_date: list[Any] = [0, ""]  # the Date header, made once a second


def _head_bytes(status: int, headers: list[tuple[str, str]], length: int, close: bool) -> bytes:
    now = int(time.time())
    if _date[0] != now:
        _date[:] = [now, time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))]
    lines = [f"HTTP/1.1 {status} {_reason(status)}", "Server: multimsg-emulator", "Date: " + _date[1]]
    lines += [f"{name}: {value}" for name, value in headers]
    if not any(name.lower() == "content-length" for name, _ in headers):
        lines.append(f"Content-Length: {length}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


_ERROR_PAGE = ('<!doctype html>\n<html lang=en>\n<title>{status} {reason}</title>\n<h1>{reason}</h1>\n'
               '<p>{why}</p>\n')


def _error(status: int, why: str) -> Response:
    return Response(_ERROR_PAGE.format(status=status, reason=_reason(status), why=why), status)


def _connection(handle: Callable[[Request], Response | None], sock: socket.socket, client: tuple[str, int],
                server: tuple[str, int]) -> None:
    rfile = sock.makefile("rb", buffering=65536)
    try:
        while True:
            method = ""
            try:
                head = _read_head(rfile)
                if head is None:
                    return
                method, target, version, headers = head
                environ = _environ(method, target, version, headers, server, client)
                chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
                if environ.get("HTTP_EXPECT", "").lower() == "100-continue" and version == "HTTP/1.1":
                    sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                if chunked:
                    body = _read_chunked(rfile)
                    environ["wsgi.input_terminated"] = True
                else:
                    length = environ.get("CONTENT_LENGTH", "").strip()
                    if length and not length.isdigit():
                        raise _BadRequest("bad Content-Length")
                    body = rfile.read(int(length)) if length else b""
                    if length and len(body) < int(length):
                        return  # the client went away mid-body
            except _BadRequest as exc:
                response: Response | None = _error(400, str(exc))
                close = True
            else:
                tokens = {t.strip().lower() for t in environ.get("HTTP_CONNECTION", "").split(",")}
                close = "close" in tokens or (version == "HTTP/1.0" and "keep-alive" not in tokens)
                try:
                    response = handle(Request(environ, body, sock))
                except Exception:  # as werkzeug's server: a 500, the traceback on stderr
                    import traceback

                    sys.stderr.write(f"Error on request {method} {target}:\n{traceback.format_exc()}")
                    sys.stderr.flush()
                    response, close = _error(500, "The server encountered an internal error."), True
            if response is None:  # dropped by a script
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            payload = b"" if method == "HEAD" else response.body
            sock.sendall(_head_bytes(response.status, response.headers, len(response.body), close) + payload)
            if close:
                return
    except OSError:  # the client went away
        return
    finally:
        try:
            rfile.close()
            sock.close()
        except OSError:
            pass


def serve(handle: Callable[[Request], Response | None], port: int, ready: Callable[[int], None]) -> None:
    """Answer HTTP on 127.0.0.1:`port` (0: a free one) with `handle` (None: drop the connection),
    a thread per connection; `ready(port)` is called once listening.  Runs until interrupted."""
    listener = socket.create_server(("127.0.0.1", port), backlog=128)
    server = listener.getsockname()[:2]
    ready(server[1])
    try:
        while True:
            sock, client = listener.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=_connection, args=(handle, sock, client[:2], server), daemon=True).start()
    finally:
        listener.close()
