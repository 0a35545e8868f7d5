"""The gateway's core operations, one per endpoint: what the handlers call.

``Gateway`` ties the store, the spool, the server keys and the services
together; handlers parse HTTP, call one method here, and format the answer.
``gateway()`` is the process's instance, built from the settings on first use.
"""

from __future__ import annotations

import io
import logging
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from . import convert
from .callbacks import CallbackKeys, Dispatcher, check_url, parse_backoff
from .config import Settings, settings
from .content import Content
from .crypto import ServerKeys
from .errors import Conflict, InvalidInput, NotConfigured, NotFound
from .fsutil import copy_stream
from .idempotency import Answer, FileKeyRecords, KeyRecords, record_name
from .idempotency import once as run_once
from .ids import check_id, new_id
from .layout import Layout
from .model import Message, State
from .names import clean_filename
from .queue.backends.files import FileSpool
from .queue.backends.tiny import TinyStore
from .queue.clock import SteadyClock
from .queue.drain import Drain, Tuning
from .queue.receipts import Receipt
from .queue.retry import RetryPolicy
from .queue.sealed import seal_name
from .queue.shares import UNLIMITED_WEIGHT, Share, deal
from .queue.spool import Spool
from .queue.store import MessageStore
from .quota import check_quota
from .replay import ReplayRecord
from .schedule import AT_FIELD, parse_at
from .services import ServiceBase, get_service, instances

log = logging.getLogger("multimsg.drain")

__all__ = ["Gateway", "gateway", "sealed", "server_keys", "replay_record", "key_records", "redis_client", "MSG_FIELDS", "MSG_OPTIONS", "SEND_FIELDS"]

MSG_FIELDS = ("id", "serv", "dest", "type")
SEND_FIELDS = MSG_FIELDS[1:]  # /send: the file comes with the message, so no data id
MSG_OPTIONS = ("caption", "filename")  # optional; checked by the service
MSG_CALLBACK = "callback"  # optional: where status events go (multimsg/callbacks.py)
MSG_AT = AT_FIELD  # optional: not sent before this time (multimsg/schedule.py)
MSG_CONVERT = "convert"  # optional: 1 converts audio the platform refuses, 0 never (multimsg/convert.py)
PLAIN_IN_MEMORY = 1 << 20  # /send: a decrypted upload up to this size is checked in memory, larger ones in a private temporary file


@dataclass(frozen=True)
class _Planned:
    """A message's checked fields, before its content is known."""

    service: ServiceBase
    type: str
    dest: str
    callback: str | None
    due: float  # /msg's ``at`` (Unix seconds), or when it was asked: now


def _require(fields: dict, names: tuple[str, ...]) -> None:
    missing = [name for name in names if not fields.get(name)]
    if missing:
        raise InvalidInput(f"missing field{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")


def _options(fields: dict) -> dict:
    return {k: fields[k] for k in MSG_OPTIONS if k in fields}


class _StreamContent(Content):
    """An upload still in the request (or decrypted into a temporary file), seen as content by the checks.

    The checks only read what they open; ``open`` hands out the one stream,
    rewound, and closing it leaves the stream open for storing afterwards.
    """

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.size = stream.seek(0, io.SEEK_END)

    def open(self) -> BinaryIO:
        self.stream.seek(0)
        return _Unclosed(self.stream)  # type: ignore[return-value]


class _Unclosed:
    def __init__(self, stream: BinaryIO):
        self.read = stream.read

    def close(self) -> None:
        pass

    def __enter__(self) -> "_Unclosed":
        return self

    def __exit__(self, *exc) -> None:
        pass


@contextmanager
def _plaintext(keys: ServerKeys, data: BinaryIO, wrapped_key: bytes | None, replay) -> Iterator[BinaryIO]:
    """The upload's plaintext as a seekable file: ``data`` itself, or its decryption (authenticated, replay-checked)."""
    if wrapped_key is None:
        yield data
        return
    with tempfile.SpooledTemporaryFile(max_size=PLAIN_IN_MEMORY, prefix="multimsg-send-") as plain:
        for chunk in keys.decrypt_stream(data, wrapped_key, replay=replay):
            plain.write(chunk)
        yield plain


@dataclass
class Gateway:
    keys: ServerKeys
    store: MessageStore
    spool: Spool
    drain_engine: Drain
    service_for: Callable[[str], ServiceBase]  # InvalidInput listing the configured instances for an unknown one (get_service)
    report_grace: float = 3600.0
    clock: SteadyClock = field(default_factory=SteadyClock)
    quota: int = 0  # MULTIMSG_CLIENT_QUOTA: bytes a client's uploads may hold in the spool (0: no quota)
    replay: Any = None  # wrapped keys already accepted (multimsg/replay.py)
    callbacks: Dispatcher | None = None  # status events out (multimsg/callbacks.py)
    default_callback: str | None = None  # MULTIMSG_CALLBACK_URL
    schedule_horizon: float = 24 * 3600.0  # how far ahead /msg's ``at`` may be: min(MULTIMSG_SCHEDULE_HORIZON, MULTIMSG_VALIDITY)
    idempotency: KeyRecords | None = None  # Idempotency-Key records (multimsg/idempotency.py)
    idempotency_ttl: float = 24 * 3600.0  # MULTIMSG_IDEMPOTENCY_TTL

    @classmethod
    def from_settings(cls, s: Settings) -> "Gateway":
        layout = Layout(s.home)
        store, spool, archive_folder = _backend(s, layout)
        store.history_window = s.history_days * 24 * 3600.0  # GET /messages
        clock = SteadyClock()
        shared = redis_client(s)
        pacers = holds = None
        if shared is not None:
            from .queue.backends.redis_pacing import RedisHolds, RedisPacers

            pacers = RedisPacers(shared, s.redis_tag, s.pace_margin, s.expected_latency)
            holds = RedisHolds(shared, s.redis_tag)
        share = drain_share(s)
        locks = [layout.lock(Share.lock_name(i)) for i in ([share.index] if share else range(drain_processes(s)))]
        drain = Drain(store, spool, get_service, RetryPolicy.from_settings(s), locks if s.drain_lock else None,
                      clock=clock, tuning=Tuning.from_settings(s), archive_folder=archive_folder, pacers=pacers, holds=holds,
                      share=share)
        callbacks = Dispatcher(store, CallbackKeys(layout, store), parse_backoff(s.callback_backoff), s.callback_allow_private)
        convert.detect()  # ffmpeg found (or not) at start, in the background, and logged
        drain.after_pass = callbacks.run  # the events themselves are written by the store with each change
        records = key_records(s)
        drain.sweepers.append(records.sweep)
        return cls(server_keys(s), store, spool, drain, get_service, s.report_grace, clock, quota=s.client_quota,
                   replay=replay_record(s), callbacks=callbacks, default_callback=s.callback_url,
                   schedule_horizon=min(s.schedule_horizon, s.validity), idempotency=records, idempotency_ttl=s.idempotency_ttl)

    # -- GET /key ----------------------------------------------------------
    def public_key(self) -> str:
        return self.keys.public_pem

    # -- POST /data --------------------------------------------------------
    def upload(self, client: str, data: BinaryIO, filename: str, wrapped_key: bytes | None) -> str:
        """Store an upload (decrypting it first if a key came with it); returns its data id."""
        check_quota(self.spool, client, data, self.quota)
        if wrapped_key is None:
            chunks = copy_stream(data)
        else:
            chunks = self.keys.decrypt_stream(data, wrapped_key, replay=self.replay)
        return self.spool.put(client, chunks, clean_filename(filename)).data_id

    # -- POST /msg ---------------------------------------------------------
    def enqueue(self, client: str, fields: dict, message_id: str | None = None) -> str:
        """Validate a message and queue it durably (under ``message_id``, one an idempotency hold reserved); returns its id."""
        _require(fields, MSG_FIELDS)
        data_id = check_id(fields["id"], "data id")
        planned = self._plan(client, fields)
        info, content = self.spool.lookup(client, data_id)
        options = self._check_content(planned, content, fields)
        return self._queue(client, data_id, info.filename, planned, options, content, message_id)

    def queued(self, client: str, message_id: str) -> str | None:
        """``message_id`` if the client's message of that id is stored (queued, sent or archived), else None."""
        message = self.store.get(message_id)
        if message is not None:
            return message_id if message.client == client else None
        return message_id if self.store.history_load(client, [message_id]).get(message_id) is not None else None

    # -- POST /send --------------------------------------------------------
    def send(self, client: str, data: BinaryIO, filename: str, wrapped_key: bytes | None, fields: dict,
             message_id: str | None = None) -> str:
        """``upload`` and ``enqueue`` in one: the message's fields come with the file; returns its message id.

        Every check of ``enqueue`` runs before anything is stored: the fields
        first, then the content (decrypted into a private temporary file when
        a key came with it), so a refused send leaves no upload behind to
        count against the client's quota. An encrypted send refused for its
        content has used its wrapped key (as ``/data`` followed by a refused
        ``/msg`` has): encrypt every send with a fresh key, as the client does.
        """
        if "id" in fields:
            raise InvalidInput("'id' goes with POST /msg; POST /send takes the file itself in field 'data'")
        _require(fields, SEND_FIELDS)
        planned = self._plan(client, fields)
        check_quota(self.spool, client, data, self.quota)
        message_id = message_id or new_id()
        with _plaintext(self.keys, data, wrapped_key, self.replay) as plain:
            options = self._check_content(planned, _StreamContent(plain), fields)
            plain.seek(0)
            info = self.spool.put_message(client, copy_stream(plain), clean_filename(filename), message_id)
        content = self.spool.message_content(client, message_id)
        return self._queue(client, info.data_id, info.filename, planned, options, content, message_id, attached=True)

    # -- what /msg and /send share ----------------------------------------
    def _plan(self, client: str, fields: dict) -> "_Planned":
        """The checks of a message's fields that need no content: service, type, destination, callback."""
        service = self.service_for(fields["serv"])  # an unknown instance: 400 listing the configured ones (get_service)
        datatype = fields["type"]
        if not service.validate(datatype):
            raise InvalidInput(f"{service.name} does not send type {datatype!r}; it sends: {', '.join(sorted(service.datatypes))}")
        dest = service.check_dest(fields["dest"])
        if not service.configured():
            raise NotConfigured(f"service {service.name} is not configured on this server (missing {', '.join(service.missing_credentials())})")
        callback = fields.get(MSG_CALLBACK) or self._token_callback(client) or self.default_callback or None
        if callback is not None and self.callbacks is not None:
            check_url(callback, self.callbacks.allow_private)
        now = time.time()
        due = parse_at(fields[MSG_AT], now, self.schedule_horizon) if fields.get(MSG_AT) else now
        return _Planned(service, datatype, dest, callback, due)

    @staticmethod
    def _check_content(planned: "_Planned", content: Content, fields: dict) -> dict:
        """The service's check of the content and options (or, with ``convert``, of what it will become)."""
        return convert.check(planned.service, planned.type, content, _options(fields), fields.get(MSG_CONVERT))

    def _queue(self, client: str, data_id: str, upload_filename: str, planned: "_Planned", options: dict, content: Content,
               message_id: str | None = None, attached: bool = False) -> str:
        """Queue the checked message durably for the client's upload ``data_id`` (its ``content``); returns its id.

        ``attached``: the content is already the message's own (``Spool.put_message``).
        """
        now = time.time()
        message = Message(
            id=message_id or new_id(), client=client, data_id=data_id, serv=planned.service.name, dest=planned.dest, type=planned.type,
            filename=seal_name(content, options.pop("filename", None) or upload_filename), options=options,  # sealed at rest
            state=State.QUEUED, created_at=now, updated_at=now, next_attempt_at=max(planned.due, now), callback=planned.callback,
            scheduled_for=planned.due if planned.due > now else None,
        )
        if not attached:
            self.spool.attach(client, data_id, message.id)
        try:
            self.store.add(message)
        except BaseException:
            self.spool.release(client, message.id)
            raise
        return message.id

    # -- POST /cons --------------------------------------------------------
    def consult(self, client: str, message_id: str | None) -> Message:
        """The message; a reported final state stays readable for ``report_grace`` seconds, then is archived.

        The first report of a final state is recorded before the answer goes
        out; a client whose answer was lost on the way asks again and gets the
        same state until the grace period ends (``MULTIMSG_REPORT_GRACE``).
        """
        message_id = check_id(message_id, "message id")
        gone = "unknown message id (or already reported in a final state and archived)"
        message = self.store.get(message_id)
        if message is None or message.client != client:
            raise NotFound(gone)
        if not message.final:
            return message
        now = self.clock.now()
        if message.reported_at is not None and self.clock.trusted() - message.reported_at > self.report_grace:
            if self.store.archive(message_id, now, if_=lambda m: m.reported_at is not None) is not None:
                self.spool.release(client, message_id)
            raise NotFound(gone)
        if self.report_grace <= 0:  # no grace: reported once, archived at once (the original API's rule)
            archived = self.store.archive(message_id, now)
            if archived is None:
                raise NotFound(gone)
            self.spool.release(client, message_id)
            return archived
        reported = self.store.report(message_id, now)
        if reported is None:
            raise NotFound(gone)
        return reported

    # -- Idempotency-Key on POST /data and /msg -----------------------------
    def once(self, client: str, scope: str, key: str, run: Callable[..., Answer], fingerprint: Callable[[], str],
             find: Callable[[str], Answer | None] | None = None) -> tuple[Answer, bool]:
        """``run()`` once per (client, endpoint, key) within MULTIMSG_IDEMPOTENCY_TTL; (answer, replayed)."""
        if self.idempotency is None:
            return run(), False
        return run_once(self.idempotency, record_name(client, scope, key), run, fingerprint, self.idempotency_ttl, find=find)

    # -- POST /cancel ------------------------------------------------------
    def cancel(self, client: str, message_id: str | None) -> Message:
        """Cancel a queued or scheduled message (atomically against the drain's leases); returns it, now ``cancelled``.

        NotFound for an unknown or another client's id; Conflict naming its
        state for a message a drain pass is sending now or one already final.
        """
        message_id = check_id(message_id, "message id")
        cancelled, found = self.store.cancel(message_id, client, self.clock.now())
        if found is None or found.client != client:
            raise NotFound("unknown message id (or already reported in a final state and archived)")
        if cancelled is None:
            state = "in flight (a drain pass is sending it now)" if not found.final else str(found.state)
            raise Conflict(f"message {message_id} cannot be cancelled: it is {state}")
        self.spool.release(client, message_id)  # it is never sent: its content goes now, as an archived one's does
        return cancelled

    @staticmethod
    def _token_callback(client: str) -> str | None:
        """The per-token default (``multimsg token add NAME --callback URL``), in token identity mode."""
        if not client.startswith("token:"):
            return None
        from .tokens import token_callback

        return token_callback(client)

    # -- GET /messages -----------------------------------------------------
    def history(self, client: str, args: dict[str, str]):
        """One page of the client's own messages (``multimsg.history``); reading changes nothing."""
        from .history import page, parse_query

        return page(self.store, client, parse_query(args), self.clock.now())

    # -- GET /callback-key --------------------------------------------------
    def callback_key(self) -> tuple[str, str]:
        """The public key that signs callbacks: PEM, and Standard Webhooks' ``whpk_`` form."""
        if self.callbacks is None:
            raise NotConfigured("callbacks are not set up on this server")
        return self.callbacks.keys.public_pem(), self.callbacks.keys.public_whpk()

    # -- POST /webhook/<serv> ---------------------------------------------
    def receive(self, receipts: list[tuple[str, Receipt]]) -> int:
        """Apply platform receipts (each atomically with its status event, fenced against the drain); how many changed a message."""
        from .metrics import count_receipt

        changed = 0
        for message_id, receipt in receipts:
            count_receipt(receipt.status)
            try:
                message_id = check_id(message_id, "message id")
            except InvalidInput:
                continue  # not one of ours
            after, _ = self.store.apply_receipt(message_id, receipt, self.clock.now())
            changed += after is not None
        return changed

    # -- POST /drain -------------------------------------------------------
    def drain(self) -> dict:
        started = time.monotonic()
        summary = self.drain_engine.run_pass()
        if not summary.get("busy"):
            self.store.counters.drain_pass(time.monotonic() - started, summary)
        return summary


def _backend(s: Settings, layout: Layout) -> tuple[MessageStore, Spool, "Path | None"]:
    """The store and spool ``MULTIMSG_BACKEND`` and ``MULTIMSG_BLOBS`` name (and the archive folder, for the embedded one)."""
    blobs = (s.blobs or "").strip()
    client = redis_client(s)
    if client is None:
        if blobs.startswith("s3://"):
            raise SystemExit("MULTIMSG_BLOBS=s3://... needs a Redis MULTIMSG_BACKEND (it keeps the references to the objects)")
        spool_layout = Layout(Path(blobs).expanduser()) if blobs else layout
        # The message's link (or /send content) and its record are made durable by one group commit: the journal's.
        files = FileSpool(spool_layout, ttl=s.data_ttl, fsync=s.fsync, links_synced_by_store=True)
        return TinyStore(layout, fsync=s.fsync, link_folder=files.link_folder), sealed(files, s), layout.archive
    from .queue.backends.redis import RedisSpool, RedisStore

    store = RedisStore(client, s.redis_tag, archive_months=s.archive_months)
    spool: Spool
    if blobs.startswith("s3://"):
        try:
            from .queue.backends.s3_spool import S3Spool, parse_s3_url, s3_client
        except ImportError:
            raise SystemExit("MULTIMSG_BLOBS names a bucket, but boto3 is not installed (pip install 'multimsg[s3]')") from None
        bucket, prefix = parse_s3_url(blobs)
        s3 = s3_client(s.s3_endpoint_url, s.connect_timeout, s.read_timeout)
        spool = S3Spool(client, s3, bucket, prefix, s.redis_tag, ttl=s.data_ttl)
    elif blobs and blobs.lower() != "redis":
        spool = FileSpool(Layout(Path(blobs).expanduser()), ttl=s.data_ttl, fsync=s.fsync)  # a folder every gateway mounts
    else:
        spool = RedisSpool(client, s.redis_tag, ttl=s.data_ttl, blob_max=s.redis_blob_max)
    return store, sealed(spool, s), None


def sealed(spool: Spool, s: Settings) -> Spool:
    """``spool`` with everything it stores encrypted at rest under the storage key (``queue/sealed.py``)."""
    from .queue.sealed import SealedSpool
    from .storage_keys import storage_keys

    keys = storage_keys(s.storage_key, s.storage_key_file, s.home)
    keys.load()  # on first run the key file is made now, at start, with its warning
    return SealedSpool(spool, keys)


def redis_client(s: Settings):
    """The process's Redis client when ``MULTIMSG_BACKEND`` names Redis, else None (the embedded backend).

    With Redis, ``MULTIMSG_KEY_SEAL`` must be set (the server keys are kept there, sealed): SystemExit otherwise.
    """
    url = (s.backend or "").strip()
    if not url:
        return None
    if not url.startswith(("redis://", "rediss://", "redis+cluster://", "rediss+cluster://")):
        raise SystemExit("MULTIMSG_BACKEND must be empty (the embedded store), a redis:// or rediss:// URL, or redis+cluster://HOST:PORT[,HOST:PORT...]")
    try:
        from .queue.backends.redis import shared_client  # imported only when chosen
    except ImportError:
        raise SystemExit("MULTIMSG_BACKEND names Redis, but the redis package is not installed (pip install 'multimsg[redis]')") from None
    from .queue.backends.redis_engine import parse_seal

    parse_seal(s.key_seal)  # a clear error at startup, not at the first upload
    return shared_client(url, s.connect_timeout)


def server_keys(s: Settings) -> ServerKeys:
    """The server's key pairs: in ``keys/`` of the data folder, or in Redis (sealed) with the Redis backend."""
    client = redis_client(s)
    if client is None:
        return ServerKeys(Layout(s.home))
    from .queue.backends.redis_engine import RedisKeyStore, parse_seal

    return ServerKeys(Layout(s.home), store=RedisKeyStore(client, s.redis_tag, parse_seal(s.key_seal)))


def replay_record(s: Settings):
    """The record of wrapped keys already accepted: in the data folder, or in Redis."""
    client = redis_client(s)
    if client is None:
        return ReplayRecord(s.home / "replay", fsync=s.fsync)
    from .queue.backends.redis_engine import RedisReplay

    return RedisReplay(client, s.redis_tag)


def key_records(s: Settings) -> KeyRecords:
    """The Idempotency-Key records: in the data folder, or in Redis."""
    client = redis_client(s)
    if client is None:
        return FileKeyRecords(s.home / "idempotency", fsync=s.fsync)
    from .queue.backends.redis_idempotency import RedisKeyRecords

    return RedisKeyRecords(client, s.redis_tag)


def drain_processes(s: Settings) -> int:
    """How many drain processes share the instances: ``MULTIMSG_DRAIN_WORKERS``, at most one per configured instance."""
    return max(1, min(s.drain_workers, len(instances())))


def drain_share(s: Settings) -> Share | None:
    """The share of the instances ``MULTIMSG_DRAIN_SHARE`` gives this process (None: it drains for every instance)."""
    if s.drain_share is None:
        return None
    index, count = s.drain_share
    weights = {}
    for name in instances():
        try:
            service = get_service(name)
        except Exception:  # an instance that cannot even be built: its pass reports it; it weighs nothing here
            log.exception("service instance %s could not be built to deal the drain shares", name)
            weights[name] = 0.0
            continue
        rate = service.declared_rate
        weight = service.share_weight if service.share_weight is not None else rate if rate > 0 else UNLIMITED_WEIGHT
        weights[name] = weight if service.configured() else 0.0
    share = Share(index, count, deal(weights, count))
    log.info("this drain sends for share %d/%d of the service instances: %s", index + 1, count,
             ", ".join(name for name in sorted(weights) if share.serves(name)) or "none")
    return share


@lru_cache(maxsize=1)
def gateway() -> Gateway:
    return Gateway.from_settings(settings())
