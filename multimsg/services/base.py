"""The service contract: what a platform module declares and does.

A service is one class per platform, deriving from ``ServiceBase``:

- declared as data: ``kind`` (the module's name in ``KINDS``), ``datatypes``,
  ``dest_format`` (shown to users), ``dest_pattern``, ``credentials`` (keys that
  must be set), ``options`` (keys with defaults), ``secrets`` (the attributes
  holding a credential, beyond those named like one), pacing (``rate``,
  ``dest_limit``), and the content rules: ``size_limits`` and ``formats`` per
  datatype, ``text_limit`` and ``text_measure`` (how the platform counts),
  ``max_text_parts``, ``caption_limit`` and ``caption_types``;
- ``validate(datatype)`` (the seed's contract), ``check_dest(dest)`` and
  ``check_content(datatype, content, options)``, which raise a domain error
  (``InvalidInput``, ``TooLarge``) before anything is queued;
- ``send(data)``, which returns an ``Outcome``: delivered (with the platform's
  message ids), retry later (and when), failed for good (and why), or
  misconfigured (the server's fault, not the message's).

``data`` keeps the seed's keys ``id`` (the message id), ``dest`` and ``type``;
plus ``content`` (a ``multimsg.content.Content``: size, head, stream),
``filename``, ``options`` (``caption``), ``platform_ids`` (one per part
delivered by earlier attempts: those parts are skipped) and ``pace``, which
the service calls right before each request that sends a message part (not
before media uploads); ``pace`` may raise ``Held`` when the platform holds
the service longer than the engine will wait.

A service *instance* is built with a ``ServiceConfig`` (``multimsg.config``):
its name (the ``serv`` value: ``self.name``, never a class constant, since one
kind may have several instances), its declared credentials and options
(``[services.NAME] key`` or ``MULTIMSG_<NAME>_<KEY>``), pacing overrides and
timeouts. It never reads the environment.

``send`` runs concurrently in a thread pool: services keep no per-message
state on ``self`` (caches are locked), and their session (a ``PlatformSession``)
pools 64 connections.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from enum import StrEnum
from typing import Any, Callable, ClassVar, NamedTuple, Sequence, cast
from urllib.parse import urlencode, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.compat import json as complexjson
from requests.cookies import RequestsCookieJar, extract_cookies_to_jar, merge_cookies
from requests.sessions import preferred_clock
from requests.structures import CaseInsensitiveDict
from requests.utils import check_header_validity, get_environ_proxies, get_netrc_auth

from ..config import ServiceConfig, service_config
from ..content import Content
from ..errors import InvalidInput, TooLarge
from ..names import FILENAME_MAX, check_filename  # noqa: F401  (FILENAME_MAX: the one rule lives in names.py)
from .datatypes import Datatypes
from .sniff import describe, extension, sniff
from .text import MEASURES, TooManyParts, split_text

__all__ = [
    "ServiceBase", "Outcome", "OutcomeKind", "Throttle", "Held", "read_text", "json_or_none", "file_name", "megabytes",
    "DELIVERED", "RETRY", "FAILED", "MISCONFIGURED", "THROTTLE_SERVICE", "THROTTLE_DEST", "MB", "POOL_SIZE", "seconds_or_none",
    "PlatformSession", "CONTENT_REFUSED",
]


class OutcomeKind(StrEnum):
    DELIVERED = "delivered"  # the platform accepted every part
    RETRY = "retry"  # try again later
    FAILED = "failed"  # refused for good
    MISCONFIGURED = "misconfigured"  # the server's credentials were refused: the message waits


class Throttle(StrEnum):
    """What a "too fast" answer concerns."""

    SERVICE = "service"  # the whole service must slow down
    DEST = "dest"  # this destination must wait


DELIVERED, RETRY, FAILED, MISCONFIGURED = OutcomeKind
THROTTLE_SERVICE, THROTTLE_DEST = Throttle


class Held(Exception):
    """Raised by ``pace``: the platform holds the service (or the destination) longer than the engine waits."""

    def __init__(self, seconds: float):
        super().__init__(f"held for {seconds:.0f} s")
        self.seconds = seconds

# What a stored content can be refused for at send time (it passed at /msg, a rule or the content changed since):
# a failure of the message. Any other error (the store or the blob store unreachable) is the server's, worth a retry.
CONTENT_REFUSED = (InvalidInput, TooLarge)

MB = 1000 * 1000  # platforms state limits in MB; the decimal reading is the stricter one
POOL_SIZE = 64  # connections kept per host: the drain sends from a thread pool
ORIGINS_KEPT = 64  # hosts whose environment a session remembers (a service talks to one or two)
# A URL that requests' prepare_url (requote_uri) and urllib3's parse_url give back unchanged: a lower-case http(s)
# origin with a plain port, a path, no percent escape, fragment, login, dot segment or character they would quote.
_PLAIN_URL = re.compile(r"https?://[a-z0-9-]+(?:\.[a-z0-9-]+)*(?::[1-9][0-9]{0,4})?(?:/(?!\.)[A-Za-z0-9_.~!$&'()*+,;=:@-]*)+"
                        r"(?:\?[A-Za-z0-9_.~!$&'()*+,;=:@/?-]*)?\Z")


class _Environment(NamedTuple):
    """What requests would read from the environment for one origin."""

    proxies: dict[str, str]  # HTTPS_PROXY / HTTP_PROXY / ALL_PROXY, none when NO_PROXY names the host
    ca_bundle: str | None  # REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE
    netrc: tuple[str, str] | None  # the host's login in ~/.netrc (or $NETRC)


class PlatformSession(requests.Session):
    """A ``requests.Session`` that reads the environment once per origin, not on every request.

    requests looks up the proxies (walking ``os.environ`` and matching
    NO_PROXY), the CA bundle and ~/.netrc on every request, merges the
    session's headers, params, hooks and proxies through generic code, and
    checks a form's fields against typing protocols (slow ``isinstance``
    checks on Python 3.11): together about a third of the CPU of a platform
    request (``python3 -m bench.service_request``). Here the environment is
    read at a session's first request to each scheme://host:port and kept,
    and a ``data=`` dict is encoded by ``form_encoded``. The services' plain
    request (a form, bytes or JSON to a plain URL, nothing from the session's
    cookies, auth or proxies) is prepared directly (``_direct``) and handed to
    requests' adapter, which sends it and builds the response; redirects and
    cookies are requests' own code, and the bytes that go out are the same
    (``tests/test_services_http.py``). Settings the services never make
    (session params, auth or hooks; proxies or cookies given per request)
    take requests' general path.
    """

    def __init__(self) -> None:
        super().__init__()
        self._environments: dict[str, _Environment] = {}

    def _environment(self, url: str) -> _Environment:
        url = url.lstrip()  # as requests prepares it
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}".lower()
        found = self._environments.get(origin)
        if found is None:  # two threads may both read it: the same answer
            if len(self._environments) >= ORIGINS_KEPT:
                self._environments.clear()
            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None
            found = self._environments[origin] = _Environment(get_environ_proxies(url), bundle, get_netrc_auth(url))
        return found

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
        url, given = request.url, request.headers
        if (self.params or self.auth or self.hooks.get("response") or request.cookies
                or not isinstance(url, str) or not isinstance(given, Mapping)):
            return super().prepare_request(request)
        headers: CaseInsensitiveDict = CaseInsensitiveDict(self.headers)  # what requests' merge_setting makes of them
        headers.update(given)
        for key in [key for key, value in headers.items() if value is None]:
            del headers[key]
        data, form_type = request.data, False
        if type(data) is dict and not request.files:
            data = form_encoded(data)
            form_type = bool(data) and "content-type" not in headers
        auth = request.auth or (self._environment(url).netrc if self.trust_env else None)
        prepared = requests.PreparedRequest()
        prepared.prepare(method=cast(str, request.method).upper(), url=url, headers=headers, files=request.files, data=data,
                         json=request.json, params=request.params or None, auth=auth,
                         cookies=merge_cookies(RequestsCookieJar(), self.cookies), hooks=request.hooks)
        if form_type:  # where prepare_body puts it: after the Content-Length
            prepared.headers["Content-Type"] = "application/x-www-form-urlencoded"
        return prepared

    def request(self, method: str, url: str | bytes, params: Any = None, data: Any = None, headers: Any = None,
                cookies: Any = None, files: Any = None, auth: Any = None, timeout: Any = None, allow_redirects: bool = True,
                proxies: Any = None, hooks: Any = None, stream: bool | None = None, verify: bool | str | None = None,
                cert: Any = None, json: Any = None) -> requests.Response:
        """requests' ``Session.request``; the services' plain shape of request is prepared directly (``_direct``)."""
        if (not params and not files and auth is None and cookies is None and hooks is None and not proxies and not stream
                and verify in (None, True) and cert is None and allow_redirects and type(method) is str
                and type(url) is str and _PLAIN_URL.match(url) and (headers is None or type(headers) is dict)):
            environment = self._environment(url)
            prepared = self._direct(method, url, data, headers, json, environment)
            if prepared is not None:
                return self._send_direct(prepared, timeout, environment.ca_bundle or True)
        return super().request(method, url, params=params, data=data, headers=headers, cookies=cookies, files=files,
                               auth=auth, timeout=timeout, allow_redirects=allow_redirects, proxies=proxies, hooks=hooks,
                               stream=stream, verify=verify, cert=cert, json=json)

    def _direct(self, method: str, url: str, data: Any, headers: dict | None, json_: Any,
                environment: _Environment) -> requests.PreparedRequest | None:
        """The request ``PreparedRequest.prepare`` would make of a plain URL with a form, bytes or JSON body and str
        headers, when nothing of the session or the environment takes part (no proxy, netrc login, cookie, session
        auth, params or hooks; the session's own verify and stream); None: requests' general path prepares it.

        What is left of ``prepare`` for such a request: the session's headers merged with the given (None removes
        one), each checked as requests checks it; the body encoded (a form by ``form_encoded``, JSON by requests'
        own ``complexjson.dumps``), its Content-Length and Content-Type set as ``prepare_body`` sets them. The URL is
        one ``prepare_url`` and urllib3 give back unchanged (``_PLAIN_URL``). A test compares the bytes each sends.
        """
        if (self.params or self.auth is not None or self.hooks.get("response") or self.proxies or not self.trust_env
                or self.stream or self.cert is not None or self.verify is not True or len(self.cookies)):
            return None
        if environment.proxies or environment.netrc is not None:
            return None
        merged: CaseInsensitiveDict = CaseInsensitiveDict(self.headers)
        if headers:
            merged.update(headers)
        prepared_headers: CaseInsensitiveDict = CaseInsensitiveDict()
        for name, value in merged.items():
            if value is None:
                continue
            if type(name) is not str:
                return None
            check_header_validity((name, value))
            prepared_headers[name] = value
        method = method.upper()
        content_type = None
        if data:
            if type(data) is dict:
                body: Any = form_encoded(data)
                content_type = "application/x-www-form-urlencoded"
            elif type(data) is bytes:
                body = data
            else:
                return None
            if not body:
                return None
        elif json_ is not None:
            try:
                body = complexjson.dumps(json_, allow_nan=False).encode("utf-8")
            except ValueError:
                return None  # requests raises its InvalidJSONError
            content_type = "application/json"
        else:
            body = None
        if body is not None:
            prepared_headers["Content-Length"] = str(len(body))
        elif method not in ("GET", "HEAD") and prepared_headers.get("Content-Length") is None:
            prepared_headers["Content-Length"] = "0"
        if content_type and "content-type" not in prepared_headers:
            prepared_headers["Content-Type"] = content_type
        prepared = requests.PreparedRequest()
        prepared.method, prepared.url, prepared.headers, prepared.body = method, url, prepared_headers, body
        prepared._cookies = RequestsCookieJar()
        prepared.hooks = {"response": []}
        return prepared

    def _send_direct(self, prepared: requests.PreparedRequest, timeout: Any, verify: bool | str) -> requests.Response:
        """``Session.send`` of a request ``_direct`` prepared: the adapter's send (its errors, its response), the
        elapsed time, cookies kept when the answer sets any, redirects followed by requests' own code, the body read."""
        settings: dict[str, Any] = {"stream": False, "timeout": timeout, "verify": verify, "cert": None, "proxies": {}}
        adapter = self.get_adapter(url=cast(str, prepared.url))
        start = preferred_clock()
        response = adapter.send(prepared, **settings)
        response.elapsed = timedelta(seconds=preferred_clock() - start)
        if "set-cookie" in response.headers or "set-cookie2" in response.headers:
            extract_cookies_to_jar(self.cookies, prepared, response.raw)
        if response.is_redirect:
            history = list(self.resolve_redirects(response, prepared, **settings))
            if history:
                history.insert(0, response)
                response = history.pop()
                response.history = history
        response.content  # noqa: B018  (read now, as requests does when not streaming)
        return response

    def merge_environment_settings(self, url: str, proxies: dict[str, str] | None, stream: bool | None, verify: bool | str | None,
                                   cert: Any) -> dict[str, Any]:
        if not self.trust_env or proxies or self.proxies:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        environment = self._environment(url)
        if verify is True or verify is None:
            verify = environment.ca_bundle or verify
        return {"proxies": dict(environment.proxies), "stream": self.stream if stream is None else stream,
                "verify": self.verify if verify is None else verify, "cert": self.cert if cert is None else cert}


def form_encoded(fields: dict) -> str:
    """A form body as requests encodes a ``data=`` dict (None values left out, a list value repeated), without
    requests' two ``isinstance`` checks against typing protocols, which take ~100 us on Python 3.11."""
    pairs = []
    for key, values in fields.items():
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            values = [values]
        pairs += [(_utf8(key), _utf8(value)) for value in values if value is not None]
    return urlencode(pairs, doseq=True)


def _utf8(value: Any) -> Any:
    return value.encode("utf-8") if isinstance(value, str) else value


@dataclass(frozen=True)
class Outcome:
    """What a send attempt came to."""

    kind: OutcomeKind
    platform_ids: list[str] = field(default_factory=list)  # ids of parts delivered in this attempt
    reason: str = ""
    retry_after: float | None = None  # seconds, when the platform said
    # A retry because we sent too fast: "service" (the whole service must slow
    # down) or "dest" (this destination must wait); None when the platform did
    # not say (the drain then reads a retry_after as "service").
    throttle: Throttle | None = None

    @classmethod
    def delivered(cls, platform_ids: list[str]) -> "Outcome":
        return cls(DELIVERED, list(platform_ids))

    @classmethod
    def retry(cls, reason: str, retry_after: float | None = None, platform_ids=(), throttle: Throttle | None = None) -> "Outcome":
        return cls(RETRY, list(platform_ids), reason, retry_after, throttle)

    @classmethod
    def failed(cls, reason: str, platform_ids=()) -> "Outcome":
        return cls(FAILED, list(platform_ids), reason)

    @classmethod
    def misconfigured(cls, reason: str, platform_ids=()) -> "Outcome":
        return cls(MISCONFIGURED, list(platform_ids), reason)


Part = Callable[[Callable[[], None]], Outcome]  # sends one message part; calls pace() right before sending


def _no_pace() -> None:
    return None


class ServiceBase(ABC):
    kind: ClassVar[str]  # the key in KINDS: what `kind = "..."` names in the configuration
    default_name: ClassVar[str] = ""  # the instance built without a configuration (the kind's name unless set)
    name: str  # this instance's name: the serv value
    datatypes: ClassVar[frozenset[str]]
    dest_format: ClassVar[str]
    dest_pattern: ClassVar[re.Pattern]
    # Pacing, as data (the drain enforces it): sends per second for the whole
    # service, and per destination ``dest_limit(dest) -> (sends, per_seconds)``.
    rate: ClassVar[float] = 1.0
    # How much of a drain process an instance is expected to keep busy, to deal the instances between several
    # (``queue.shares``); None: its declared rate (an unconfigured instance weighs nothing).
    share_weight: ClassVar[float | None] = None
    credentials: ClassVar[dict[str, str]] = {}  # attribute -> key (required): MULTIMSG_<NAME>_<KEY>
    options: ClassVar[dict[str, tuple[str, str]]] = {}  # attribute -> (key, default)
    secrets: ClassVar[frozenset[str]] = frozenset()  # attributes holding a credential whose key does not say so (a URL)

    # Content rules, as data.
    size_limits: ClassVar[dict[str, int]] = {}  # datatype -> most bytes a file of it may have
    formats: ClassVar[dict[str, frozenset[str] | None]] = {}  # datatype -> MIME types sniffed content may have (None: any)
    text_limit: ClassVar[int] = 4096  # per message part, in ``text_measure`` units
    text_measure: ClassVar[str] = "characters"  # or "utf16_units" (see services/text.py)
    max_text_parts: ClassVar[int] = 32  # a longer text is refused at /msg rather than sent as a flood
    caption_limit: ClassVar[int] = 1024
    caption_types: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: ServiceConfig | None = None, session: requests.Session | None = None):
        self.config = config or self.read_config()
        self.name = self.config.name or self.default_name or self.kind
        self.session = session or PlatformSession()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        for attribute, value in self.config.values.items():
            setattr(self, attribute, value)
        self.timeout = (self.config.connect_timeout, self.config.read_timeout)

    @classmethod
    def read_config(cls, name: str | None = None) -> ServiceConfig:
        """Instance ``name``'s settings as the configuration gives them (what ``get_service`` builds it with)."""
        return service_config(name or cls.default_name or cls.kind, cls.credentials, cls.options, kind=cls.kind, secrets=cls.secrets)

    # -- configuration -----------------------------------------------------
    def missing_credentials(self) -> list[str]:
        """The variables of the credentials this instance lacks."""
        return [self.config.variables.get(attribute, attribute) for attribute in self.credentials if not getattr(self, attribute)]

    def configured(self) -> bool:
        return not self.missing_credentials()

    @property
    def declared_rate(self) -> float:
        """Sends per second this instance may make: its ``MULTIMSG_<NAME>_RATE`` override, else its kind's ``rate`` (0: no limit)."""
        return float(self.rate if self.config.rate is None else self.config.rate)

    # -- validation (before queueing) --------------------------------------
    def validate(self, datatype: str) -> bool:
        """The seed's contract: whether this service sends ``datatype``."""
        return Datatypes.validate(datatype) and datatype in self.datatypes

    def check_dest(self, dest: str) -> str:
        dest = dest.strip()
        if not self.dest_pattern.fullmatch(dest):
            raise InvalidInput(f"'dest' for {self.name} must be {self.dest_format}")
        return dest

    def measure(self, text: str) -> int:
        """The length of ``text`` as this platform counts it."""
        return MEASURES[self.text_measure](text)

    def size_limit(self, datatype: str) -> int | None:
        if datatype == Datatypes.TEXT:  # 4 bytes is the longest UTF-8 character
            return self.max_text_parts * self.text_limit * 4
        return self.size_limits.get(datatype)

    def check_content(self, datatype: str, content: Content, options: dict | None = None) -> dict:
        """Check the stored content and the message's options for ``datatype``.

        Returns the options to store (``caption``, ``filename``: only those
        given). Raises ``InvalidInput`` or ``TooLarge`` with the reason.
        """
        options = self.check_options(datatype, options or {})
        size = content.size
        if size == 0:
            raise InvalidInput("the upload is empty")
        limit = self.size_limit(datatype)
        if limit is not None and size > limit:
            raise TooLarge(f"{datatype} is {megabytes(size)}; {self.name} takes at most {megabytes(limit)} for {datatype}")
        if datatype == Datatypes.TEXT:
            self.text_parts(content)
        elif datatype == Datatypes.TEMPLATE:
            self.check_template(content)
        else:
            self.check_format(datatype, content)
        return options

    def check_options(self, datatype: str, options: dict) -> dict:
        checked = {}
        caption = options.get("caption")
        if caption is not None and caption.strip():
            if datatype not in self.caption_types:
                takes = ", ".join(sorted(self.caption_types))
                raise InvalidInput(f"{self.name} takes no caption for {datatype} (captions go with: {takes})")
            length = self.measure(caption)
            if length > self.caption_limit:
                raise InvalidInput(f"caption is {length} {self._unit}; {self.name} takes at most {self.caption_limit}")
            checked["caption"] = caption
        filename = options.get("filename")
        if filename is not None and filename.strip():
            if datatype != Datatypes.DOCUMENT:
                raise InvalidInput("'filename' goes with type document only")
            checked["filename"] = check_filename(filename)
        return checked

    def check_format(self, datatype: str, content: Content) -> str | None:
        """The content's sniffed MIME type; InvalidInput if ``datatype`` does not take it here."""
        mime = sniff(content)
        allowed = self.formats.get(datatype)
        if allowed is not None and mime not in allowed:
            kinds = ", ".join(sorted({describe(kind) for kind in allowed}))
            raise InvalidInput(f"{datatype} for {self.name} must be {kinds} (checked by content); this file is {describe(mime)}")
        return mime

    def check_template(self, content: Content) -> None:
        raise InvalidInput(f"{self.name} does not send templates")

    def text_parts(self, content: Content) -> list[str]:
        """The message parts a text is sent as (InvalidInput/TooLarge if it cannot be)."""
        text = read_text(content)
        try:  # the split stops as soon as the cap is passed
            return split_text(text, self.text_limit, MEASURES[self.text_measure], max_parts=self.max_text_parts)
        except TooManyParts:
            raise TooLarge(
                f"text is {self.measure(text)} {self._unit}, more than {self.max_text_parts} messages on {self.name}; "
                f"at most {self.max_text_parts} messages of {self.text_limit} are sent for one text"
            ) from None

    @property
    def _unit(self) -> str:
        return "UTF-16 code units" if self.text_measure == "utf16_units" else "characters"

    def dest_limit(self, dest: str) -> tuple[int, float]:
        """How many sends ``dest`` may receive per how many seconds."""
        return (1, 1.0)

    # -- delivery ----------------------------------------------------------
    @abstractmethod
    def send(self, data: dict) -> Outcome:
        """Send one message (all its parts not yet delivered) and say how it went."""

    def send_parts(self, data: dict, parts: Sequence[Part]) -> Outcome:
        """Send the parts not delivered by earlier attempts, in order, stopping at the first that is not delivered.

        The outcome carries the ids of every part delivered in this attempt,
        whatever its kind, so that a retry resumes after them.
        """
        done = len(data.get("platform_ids") or ())
        pace = data.get("pace") or _no_pace
        delivered: list[str] = []
        for part in parts[done:]:
            try:
                outcome = part(pace)
            except Held as held:  # nothing of this part went out; the parts before it did
                reason = f"{self.name}: rate-limited by the platform for {held.seconds:.0f} s more"
                return Outcome.retry(reason, retry_after=held.seconds, platform_ids=delivered)
            if outcome.kind != DELIVERED:
                return replace(outcome, platform_ids=delivered + outcome.platform_ids)
            delivered += outcome.platform_ids
        return Outcome.delivered(delivered)

    def post(self, url: str, classify: Callable[[requests.Response], Outcome], pace: Callable[[], None] | None = None, **kwargs) -> Outcome:
        """POST with this service's timeouts; the answer is classified by ``classify``.

        ``pace`` (when given) is called right before the request goes out.
        Timeouts and connection errors are worth a retry. Their text is not
        passed on: requests puts the URL in it, and URLs can hold tokens.
        """
        if pace is not None:
            pace()
        try:
            response = self.session.post(url, timeout=self.timeout, **kwargs)
        except requests.Timeout:
            return Outcome.retry(f"{self.name}: the platform did not answer in time")
        except requests.RequestException as exc:
            return Outcome.retry(f"{self.name}: could not reach the platform ({type(exc).__name__})")
        return classify(response)


def read_text(content: Content) -> str:
    """The content of a text message: UTF-8, not empty."""
    try:
        text = content.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"text must be UTF-8 (invalid byte at offset {exc.start})") from None
    if not text.strip():
        raise InvalidInput("text is empty")
    return text


def file_name(data: dict, mime: str | None) -> str:
    """The file name to send with an upload: the message's, else one made from the datatype and the kind."""
    name = (data.get("options") or {}).get("filename") or data.get("filename") or ""
    name = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name or f"{data['type']}.{extension(mime)}"


def json_or_none(response: requests.Response) -> dict | None:
    """The answer's JSON object, or None when the body is not one (an HTML error page, say)."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def megabytes(size: int) -> str:
    return f"{size / MB:.1f} MB" if size % MB else f"{size // MB} MB"


def seconds_or_none(value: object) -> float | None:
    """A number of seconds (a ``Retry-After`` header, a ``retry_after`` field), or None when it is not one."""
    try:
        return max(0.0, float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
