"""The gateway's core operations, one per endpoint: what the handlers call.

``Gateway`` ties the store, the spool, the server keys and the services
together; handlers parse HTTP, call one method here, and format the answer.
``gateway()`` is the process's instance, built from the settings on first use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, Callable

from .callbacks import CallbackKeys, Dispatcher, check_url, parse_backoff
from .config import Settings, settings
from .crypto import ServerKeys
from .errors import InvalidInput, NotConfigured, NotFound
from .fsutil import copy_stream
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
from .queue.spool import Spool
from .queue.store import MessageStore
from .quota import check_quota
from .replay import ReplayRecord
from .services import ServiceBase, get_service, service_class

__all__ = ["Gateway", "gateway", "sealed", "server_keys", "replay_record", "redis_client", "MSG_FIELDS", "MSG_OPTIONS"]

MSG_FIELDS = ("id", "serv", "dest", "type")
MSG_OPTIONS = ("caption", "filename")  # optional; checked by the service
MSG_CALLBACK = "callback"  # optional: where status events go (multimsg/callbacks.py)
FINAL_EVENTS = {State.DELIVERED: "message.delivered", State.FAILED: "message.failed"}


@dataclass
class Gateway:
    keys: ServerKeys
    store: MessageStore
    spool: Spool
    drain_engine: Drain
    service_for: Callable[[str], ServiceBase]
    report_grace: float = 3600.0
    clock: SteadyClock = field(default_factory=SteadyClock)
    quota: int = 0  # MULTIMSG_CLIENT_QUOTA: bytes a client's uploads may hold in the spool (0: no quota)
    replay: Any = None  # wrapped keys already accepted (multimsg/replay.py)
    callbacks: Dispatcher | None = None  # status events out (multimsg/callbacks.py)
    default_callback: str | None = None  # MULTIMSG_CALLBACK_URL

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
        drain = Drain(store, spool, get_service, RetryPolicy.from_settings(s), layout.lock("drain") if s.drain_lock else None,
                      clock=clock, tuning=Tuning.from_settings(s), archive_folder=archive_folder, pacers=pacers, holds=holds)
        callbacks = Dispatcher(store, CallbackKeys(layout, store), parse_backoff(s.callback_backoff), s.callback_allow_private)
        drain.on_final = lambda m: callbacks.enqueue(m, FINAL_EVENTS.get(m.state))
        drain.after_pass = callbacks.run
        return cls(server_keys(s), store, spool, drain, get_service, s.report_grace, clock, quota=s.client_quota,
                   replay=replay_record(s), callbacks=callbacks, default_callback=s.callback_url)

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
    def enqueue(self, client: str, fields: dict) -> str:
        """Validate a message and queue it durably; returns its message id."""
        missing = [name for name in MSG_FIELDS if not fields.get(name)]
        if missing:
            raise InvalidInput(f"missing field{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
        data_id = check_id(fields["id"], "data id")
        service_class(fields["serv"])  # an unknown instance: 400 listing the configured ones
        service = self.service_for(fields["serv"])
        datatype = fields["type"]
        if not service.validate(datatype):
            raise InvalidInput(f"{service.name} does not send type {datatype!r}; it sends: {', '.join(sorted(service.datatypes))}")
        dest = service.check_dest(fields["dest"])
        if not service.configured():
            raise NotConfigured(f"service {service.name} is not configured on this server (missing {', '.join(service.missing_credentials())})")
        callback = fields.get(MSG_CALLBACK) or self._token_callback(client) or self.default_callback or None
        if callback is not None and self.callbacks is not None:
            check_url(callback, self.callbacks.allow_private)
        info, content = self.spool.get(client, data_id), self.spool.content(client, data_id)
        options = service.check_content(datatype, content, {k: fields[k] for k in MSG_OPTIONS if k in fields})

        now = time.time()
        message = Message(
            id=new_id(), client=client, data_id=data_id, serv=service.name, dest=dest, type=datatype,
            filename=seal_name(content, options.pop("filename", None) or info.filename), options=options,  # sealed at rest
            state=State.QUEUED, created_at=now, updated_at=now, next_attempt_at=now, callback=callback,
        )
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

    @staticmethod
    def _token_callback(client: str) -> str | None:
        """The per-token default (``multimsg token add NAME --callback URL``), in token identity mode."""
        from .tokens import token_callback

        return token_callback(client) if client.startswith("token:") else None

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
        """Apply platform receipts (each atomically, fenced against the drain); how many changed a message."""
        from .metrics import count_receipt

        changed = 0
        for message_id, receipt in receipts:
            count_receipt(receipt.status)
            try:
                message_id = check_id(message_id, "message id")
            except InvalidInput:
                continue  # not one of ours
            after, kind = self.store.apply_receipt(message_id, receipt, self.clock.now())
            if after is None:
                continue
            changed += 1
            if self.callbacks is not None and kind is not None:
                self.callbacks.enqueue(after, kind)
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
        return TinyStore(layout, fsync=s.fsync), sealed(FileSpool(spool_layout, ttl=s.data_ttl, fsync=s.fsync), s), layout.archive
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


@lru_cache(maxsize=1)
def gateway() -> Gateway:
    return Gateway.from_settings(settings())
