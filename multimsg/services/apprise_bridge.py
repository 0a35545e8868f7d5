"""The Apprise bridge: any of Apprise's notification plugins as a multimsg service.

An instance declares (settings ``url`` and ``dest_pattern``, ``MULTIMSG_<NAME>_URL``
and ``MULTIMSG_<NAME>_DEST_PATTERN``):

- an Apprise URL template with exactly one ``${dest}`` slot, e.g.
  ``ntfys://ntfy.example.org/${dest}`` or ``json://hooks.example.org/in/${dest}``;
- a strict regular expression for ``dest``. /msg refuses a dest it does not
  fully match, and, whatever the pattern, one holding ``..``, a slash, a
  backslash, ``?``, ``#``, ``%``, ``@``, whitespace or a control character: the dest is
  substituted into a URL and Apprise does not stop ``../`` or a second host.
  The check runs again before every send (the pattern may have changed since /msg).

Datatypes: text (parts of the plugin's ``body_maxlen`` less 64; Apprise strips the end
of every body, so a part's trailing whitespace is moved to the next part and the
whitespace at the very end of a text is not sent) and, when the plugin
takes attachments (``attachment_support``), image, document, audio, video and
voice as one attachment each (``apprise.attachment.AttachFile`` on a local copy
of the content, with the message's file name and sniffed MIME type), with the
caption as the body. Nothing is checked of the content but its kind.

Pacing: the plugin's own spacing between requests (Apprise's
``request_rate_per_sec`` is in fact seconds per request) as ``1 / that``
messages a second, else 1 a second.

Outcomes. Apprise answers a send with True or False, with no platform id and no
retry time; the reason is in its log, which is read (per thread) for the HTTP
status its plugins write as ``error=<status>``:

=========================================  ===========================================
answer                                     outcome
=========================================  ===========================================
True                                       delivered (the platform id is empty: Apprise gives none)
False, HTTP 429 logged                     retry; the whole service slows down (no retry_after)
False, HTTP 5xx or a connection error      retry
False, no status logged                    retry (the attempt cap ends it as failed)
False, any other HTTP 4xx logged           failed, with Apprise's log line
a URL Apprise cannot load                  misconfigured: the message stays queued
a dest the pattern no longer matches       failed
=========================================  ===========================================

"delivered" means the plugin's request succeeded (for ``json://``/``form://``:
the receiver answered 2xx); what that means depends on the platform behind it.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Sequence

from ..errors import InvalidInput
from .base import CONTENT_REFUSED, THROTTLE_SERVICE, Outcome, ServiceBase, file_name
from .datatypes import Datatypes
from .sniff import OCTET_STREAM, sniff

__all__ = ["AppriseBridge", "SLOT"]

SLOT = "${dest}"
DEFAULT_RATE = 1.0  # a conservative pace for plugins that state none
HEADROOM = 64
UNSAFE = re.compile(r"\.\.|[/\\?#%@\s\x00-\x1f\x7f]")
_SCHEMA = re.compile(r"\s*([A-Za-z0-9+._-]{1,32})://")
_STATUS = re.compile(r"error=(\d{3})\b")
_CONNECTION = re.compile(r"connection error|timed out|timeout", re.I)
FILES = frozenset({Datatypes.IMAGE, Datatypes.DOCUMENT, Datatypes.AUDIO, Datatypes.VIDEO, Datatypes.VOICE})


class _Capture(logging.Handler):
    """Apprise's log lines, kept per thread while a send runs there."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        lines = getattr(self.local, "lines", None)
        if lines is not None and record.levelno >= logging.WARNING:
            lines.append(record.getMessage())


_capture: _Capture | None = None
_capture_lock = threading.Lock()


def _capturer() -> _Capture:
    global _capture
    with _capture_lock:
        if _capture is None:
            _capture = _Capture()
            logger = logging.getLogger("apprise")
            logger.addHandler(_capture)
            if logger.getEffectiveLevel() > logging.WARNING:
                logger.setLevel(logging.WARNING)
        return _capture


def plugin_class(template: str):
    """The Apprise plugin class a URL template's schema names, or None."""
    from apprise.apprise import N_MGR

    match = _SCHEMA.match(template or "")
    if match is None:
        return None
    try:
        return N_MGR[match.group(1).lower()]
    except KeyError:
        return None


class AppriseBridge(ServiceBase):
    kind = "apprise"
    datatypes = frozenset({Datatypes.TEXT, *FILES})  # narrowed per instance to what its plugin takes
    dest_format = "what this instance's dest_pattern setting matches"
    dest_pattern = re.compile(r"(?!)")  # replaced per instance by the configured pattern
    rate = DEFAULT_RATE
    credentials = {"url_template": "url", "dest_regex": "dest_pattern"}
    secrets = frozenset({"url_template"})
    options = {"title": ("title", "")}
    url_template: str  # set from the ServiceConfig (base.ServiceBase.__init__)
    dest_regex: str
    title = ""
    text_limit = 32768
    caption_limit = 32768
    caption_types = FILES
    formats = {datatype: None for datatype in FILES}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.problem = self._configure()

    def _configure(self) -> str | None:
        """What this instance lacks to send (None: nothing); sets the per-instance pattern, datatypes, pace, limits.

        Said as what to set, like ``missing_credentials`` (the drain reports "not configured (set ...)",
        /msg "(missing ...)"), naming the instance's own variables.
        """
        template, regex = self.url_template or "", self.dest_regex or ""
        if not template or not regex:
            return None  # missing_credentials says so
        url, pattern = self._variable("url_template", "url"), self._variable("dest_regex", "dest_pattern")
        if template.count(SLOT) != 1:
            return f"an Apprise URL holding {SLOT} exactly once in {url}"
        try:
            self._override(dest_pattern=re.compile(regex))
        except re.error as exc:
            return f"a regular expression in {pattern} ({exc})"
        self._override(dest_format=f"a destination matching {regex}")
        plugin = plugin_class(template)
        if plugin is None:
            return f"an Apprise URL in {url} whose schema names a plugin this server has (is the plugin's library installed?)"
        self._override(datatypes=frozenset({Datatypes.TEXT, *(FILES if getattr(plugin, "attachment_support", False) else ())}))
        spacing = getattr(plugin, "request_rate_per_sec", 0)
        spacing = float(spacing) if isinstance(spacing, (int, float)) else 0.0
        self._override(rate=1.0 / spacing if spacing > 0 else DEFAULT_RATE)
        maxlen = getattr(plugin, "body_maxlen", 0)  # a property on some plugins: known only per URL
        if isinstance(maxlen, int) and maxlen > 0:  # room for the whitespace text_parts moves onto the next part
            limit = max(1, min(maxlen, 32768) - HEADROOM)
            self._override(text_limit=limit, caption_limit=limit)
        return None

    def _variable(self, attribute: str, key: str) -> str:
        """The variable that sets ``attribute`` for this instance (``MULTIMSG_<NAME>_URL``), or the setting's name."""
        return self.config.variables.get(attribute) or f"the {key} setting"

    def _override(self, **values) -> None:
        """Per-instance values of what ServiceBase declares as class data (they depend on the configured plugin)."""
        for attribute, value in values.items():
            setattr(self, attribute, value)

    def text_parts(self, content) -> list[str]:
        """The parts, with each part's trailing whitespace moved to the start of the next one.

        Apprise strips the end of every body it sends, so a part ending at a space
        or a line break would lose it; the whitespace at the end of the whole text is lost.
        """
        parts, carry = [], ""
        for part in super().text_parts(content):
            part = carry + part
            kept = part.rstrip()
            carry = part[len(kept):]
            if kept:
                parts.append(kept)
        return parts

    def missing_credentials(self) -> list[str]:
        missing = super().missing_credentials()
        return missing or ([self.problem] if self.problem else [])

    def check_dest(self, dest: str) -> str:
        dest = dest.strip()
        if UNSAFE.search(dest):
            raise InvalidInput("'dest' for apprise may not hold '..', '/', '\\', '?', '#', '%', '@', spaces or control characters")
        if not self.configured():  # no pattern to match yet: /msg then says what the instance lacks, not that the dest is wrong
            return dest
        return super().check_dest(dest)

    # -- sending ---------------------------------------------------------------
    def send(self, data: dict) -> Outcome:
        if self.problem:
            return Outcome.misconfigured(f"apprise: {self.name} needs {self.problem}")
        try:
            dest = self.check_dest(data["dest"])
        except InvalidInput as exc:
            return Outcome.failed(f"apprise: {exc.reason}")
        import apprise

        url = self.url_template.replace(SLOT, dest)
        plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
        if plugin is None:
            return Outcome.misconfigured("apprise: the URL template with this dest is not a URL Apprise can load")
        for attribute, value in (("socket_connect_timeout", self.config.connect_timeout), ("socket_read_timeout", self.config.read_timeout)):
            if hasattr(plugin, attribute):  # this service's timeouts, not Apprise's 4 s defaults
                setattr(plugin, attribute, value)
        secrets = _secret_pieces(url, dest)
        if data["type"] == Datatypes.TEXT:
            try:
                texts = self.text_parts(data["content"])
            except CONTENT_REFUSED as exc:
                return Outcome.failed(f"apprise: {exc.reason}")
            return self.send_parts(data, [self._text_part(plugin, text, secrets) for text in texts])
        if data["type"] not in self.datatypes:
            return Outcome.failed(f"apprise: this plugin takes no attachments ({data['type']})")
        return self.send_parts(data, [lambda pace: self._send_file(plugin, data, pace, secrets)])

    def _text_part(self, plugin, text: str, secrets: list[str]):
        return lambda pace: self._notify(plugin, pace, secrets, body=text)

    def _send_file(self, plugin, data: dict, pace, secrets: list[str]) -> Outcome:
        from apprise.attachment.file import AttachFile

        content = data["content"]
        mime = (sniff(content) or OCTET_STREAM).split(";")[0]
        name = file_name(data, mime)
        caption = (data.get("options") or {}).get("caption") or ""
        with content.local_path() as path:
            attachment = AttachFile(str(path), name=name, mimetype=mime)
            return self._notify(plugin, pace, secrets, body=caption, attach=[attachment])

    def _notify(self, plugin, pace, secrets: list[str], **kwargs) -> Outcome:
        capture = _capturer()
        if pace is not None:
            pace()
        capture.local.lines = []
        try:
            ok = plugin.notify(title=self.title or "", **kwargs)
        except Exception as exc:  # a plugin's bug is not the message's fault; the attempt cap ends it
            return Outcome.retry(f"apprise: the plugin raised {type(exc).__name__}")
        finally:
            lines, capture.local.lines = capture.local.lines, None
        if ok:
            return Outcome.delivered([""])
        return classify(lines, secrets)


def _secret_pieces(url: str, dest: str) -> list[str]:
    """The runs of 8 or more URL characters of ``url`` but the dest: the places a credential can be."""
    pieces = {piece for piece in re.findall(r"[A-Za-z0-9_~.+=:-]{8,}", url.split("://", 1)[-1]) if piece != dest}
    return sorted(pieces, key=len, reverse=True)


def classify(lines: list[str], secrets: Sequence[str] = ()) -> Outcome:
    """The outcome of a failed Apprise send, from the log lines it wrote (with the URL's credentials hidden)."""
    said = "; ".join(lines)
    for piece in secrets:  # a plugin may name its URL, or a part of it, in a log line; the reason reaches /cons
        said = said.replace(piece, "***")
    said = said[-500:] or "the plugin reported a failure without a reason"
    statuses = [int(match) for line in lines for match in _STATUS.findall(line)]
    if statuses:
        status = statuses[-1]
        if status == 429:
            return Outcome.retry(f"apprise: {said}", throttle=THROTTLE_SERVICE)
        if status >= 500:
            return Outcome.retry(f"apprise: {said}")
        if 400 <= status < 500:
            return Outcome.failed(f"apprise: {said}")
    return Outcome.retry(f"apprise: {said}")
