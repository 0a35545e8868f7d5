"""What the processes of one deployment share through Redis besides the queue: keys, tokens, replay record, rate limit.

With ``MULTIMSG_BACKEND=redis://...`` a process's data folder may be empty
and private; everything that must agree between processes lives under the
deployment's hash tag (``mm:{T}:``)::

    mm:{T}:keys:current      the current private key: "<fingerprint>:<sealed PKCS#8 PEM>"
    mm:{T}:keys:retired      ZSET of retired private keys (same form) -> the end of their grace
    mm:{T}:keys:ver          counter bumped by every creation and rotation (the processes' cache stamp)
    mm:{T}:tokens            hash: token name -> SHA-256 hex of the token (never the token)
    mm:{T}:replay:<fp>       SET of wrapped-key digests accepted while key <fp> was current
    mm:{T}:rate:<client>     the client's GCRA "theoretical arrival time" (ms, Redis clock), with expiry

Private keys are sealed with AES-256-GCM under ``MULTIMSG_KEY_SEAL`` (32
random bytes, base64; the same on every process), the deployment's tag as
associated data: Redis never holds a private key in clear, and a key copied
to another deployment does not open. The first process to need a key makes
one and stores it with ``SET NX``: of two starting at once, one key pair wins
and both use it. A rotation is one script: the old key joins the retired set
until ``now + grace`` (older ones are capped at that too), and the replay
record of a retired key expires with it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import time

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ...crypto import KeyStore, fingerprint, load_private, new_private_pem
from ...errors import InvalidInput, Replayed
from ...ratelimit import Limiter
from ...tokens import TokenLookup, check_name, hash_token
from .redis import guarded
from .redis_scripts import Keys

__all__ = ["parse_seal", "RedisKeyStore", "RedisTokens", "RedisReplay", "RedisRateLimiter", "GCRA_CLIENT"]

NONCE = 12


def parse_seal(text: str | None) -> bytes:
    """The 32-byte key sealing the private keys in Redis (``MULTIMSG_KEY_SEAL``); SystemExit with the fix otherwise."""
    if not text:
        raise SystemExit(
            "MULTIMSG_KEY_SEAL is not set: with the Redis backend the server's private keys are kept in Redis, "
            "sealed with it; set the same 32 random bytes, base64, on every process "
            "(python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())')"
        )
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (ValueError, binascii.Error):
        key = b""
    if len(key) != 32:
        raise SystemExit("MULTIMSG_KEY_SEAL must be 32 random bytes in base64 (44 characters)")
    return key


# KEYS: current, retired, ver. ARGV: the new sealed key, now, expires_at, "1" to retire the old key, replay set prefix.
ROTATE = """
local old = redis.call('GET', KEYS[1])
local expires_ms = math.floor(tonumber(ARGV[3]) * 1000)
local later = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[3], '+inf')
for _, m in ipairs(later) do
  redis.call('ZADD', KEYS[2], ARGV[3], m)
  local fp = string.match(m, '^([0-9a-f]+):')
  if fp then redis.call('PEXPIREAT', ARGV[5] .. fp, expires_ms) end
end
local retired = 0
if old then
  local fp = string.match(old, '^([0-9a-f]+):')
  if ARGV[4] == '1' then
    redis.call('ZADD', KEYS[2], ARGV[3], old)
    if fp then redis.call('PEXPIREAT', ARGV[5] .. fp, expires_ms) end
    retired = 1
  elseif fp then
    redis.call('DEL', ARGV[5] .. fp)
  end
end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])) do
  local fp = string.match(m, '^([0-9a-f]+):')
  if fp then redis.call('DEL', ARGV[5] .. fp) end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('INCR', KEYS[3])
return retired
"""


class RedisKeyStore(KeyStore):
    """The key pairs in Redis, private keys sealed (AES-256-GCM) with ``MULTIMSG_KEY_SEAL``."""

    def __init__(self, client, tag: str, seal: bytes):
        self.r = client
        keys = Keys(tag)
        self.current_key, self.retired_key, self.ver_key = keys.base + "keys:current", keys.base + "keys:retired", keys.base + "keys:ver"
        self.replay_prefix = keys.base + "replay:"
        self.aad = b"multimsg server key|" + tag.encode()
        self.aead = AESGCM(seal)
        self._rotate = client.register_script(ROTATE)

    def seal(self, pem: bytes) -> str:
        nonce = os.urandom(NONCE)
        return fingerprint(_public_of(pem)) + ":" + base64.b64encode(nonce + self.aead.encrypt(nonce, pem, self.aad)).decode()

    def unseal(self, value: bytes | str) -> bytes:
        text = value.decode() if isinstance(value, bytes) else value
        blob = base64.b64decode(text.split(":", 1)[1])
        try:
            return self.aead.decrypt(blob[:NONCE], blob[NONCE:], self.aad)
        except InvalidTag:
            raise SystemExit("the server keys in Redis do not open with this MULTIMSG_KEY_SEAL: "
                             "every process of a deployment needs the same seal") from None

    @guarded
    def stamp(self) -> object:
        return self.r.get(self.ver_key) or b"0"

    @guarded
    def load(self) -> tuple[bytes, list[tuple[float, bytes]]]:
        current = self.r.get(self.current_key)
        if current is None:
            if self.r.set(self.current_key, self.seal(new_private_pem()), nx=True):  # the first process wins
                self.r.incr(self.ver_key)
            current = self.r.get(self.current_key)
        now = time.time()
        retired = [(score, self.unseal(member)) for member, score in self.r.zrangebyscore(self.retired_key, repr(now), "+inf", withscores=True)]
        return self.unseal(current), retired

    @guarded
    def rotate(self, grace: float) -> float | None:
        now = time.time()
        expires_at = now + grace
        keys = [self.current_key, self.retired_key, self.ver_key]
        retired = self._rotate(keys=keys, args=[self.seal(new_private_pem()), repr(now), repr(expires_at), "1" if grace > 0 else "0",
                                                self.replay_prefix])
        return expires_at if retired else None


def _public_of(private_pem: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    key = load_private(private_pem)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class RedisTokens(TokenLookup):
    """Client tokens in Redis (hashes only): the same interface as ``tokens.TokenFile``."""

    def __init__(self, client, tag: str):
        self.r = client
        self.key = Keys(tag).base + "tokens"
        self.callbacks_key = Keys(tag).base + "token-callbacks"  # name -> default callback URL
        self.path = f"the shared store (Redis, {self.key})"  # where, for messages

    @guarded
    def entries(self) -> list[tuple[str, bytes]]:
        return sorted((name.decode(), bytes.fromhex(digest.decode())) for name, digest in self.r.hgetall(self.key).items())

    @guarded
    def add(self, name: str) -> str:
        check_name(name)
        token = secrets.token_urlsafe(32)
        if not self.r.hsetnx(self.key, name, hash_token(token)):
            raise InvalidInput(f"a token named {name!r} exists already; remove it first to replace it")
        return token

    @guarded
    def remove(self, name: str) -> bool:
        return bool(self.r.hdel(self.key, name))

    @guarded
    def callback(self, name: str) -> str | None:
        found = self.r.hget(self.callbacks_key, name)
        return found.decode() if found else None

    @guarded
    def set_callback(self, name: str, url: str | None) -> None:
        if url:
            self.r.hset(self.callbacks_key, check_name(name), url)
        else:
            self.r.hdel(self.callbacks_key, name)


# KEYS: the replay sets of the accepted key pairs, the current one first. ARGV[1]: the digest.
CLAIM = """
for _, key in ipairs(KEYS) do
  if redis.call('SISMEMBER', key, ARGV[1]) == 1 then return 0 end
end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"""


class RedisReplay:
    """The replay record in Redis: one set of digests per key pair, expiring with the key pair (see ``multimsg.replay``)."""

    def __init__(self, client, tag: str):
        self.r = client
        self.prefix = Keys(tag).base + "replay:"
        self._claim = client.register_script(CLAIM)

    @guarded
    def claim(self, wrapped_key: bytes, accepted: list[str]) -> tuple[str, str]:
        digest = hashlib.sha256(wrapped_key).hexdigest()
        if not self._claim(keys=[self.prefix + fp for fp in accepted], args=[digest]):
            raise Replayed(
                "this encrypted upload was received before (its wrapped key was already used); "
                "encrypt every upload with a fresh AES key"
            )
        return accepted[0], digest

    @guarded
    def release(self, claim: tuple[str, str]) -> None:
        key, digest = claim
        self.r.srem(self.prefix + key, digest)


# A GCRA with burst: KEYS[1] the client's TAT (ms, Redis's clock). ARGV: emission interval (ms), burst tolerance (ms).
# Returns 0 if the request passes (and charges it), else the ms to wait.
GCRA_CLIENT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait > 0 then return tostring(wait) end
local new = tat + interval
redis.call('SET', KEYS[1], string.format('%.3f', new), 'PX', math.ceil(new - now) + 1000)
return 0
"""


class RedisRateLimiter(Limiter):
    """``rate`` requests per second per client, ``burst`` at once, across every process sharing the Redis."""

    def __init__(self, client, tag: str, rate: float, burst: int):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, float(burst))
        self.prefix = Keys(tag).base + "rate:"
        self._gcra = client.register_script(GCRA_CLIENT)

    @guarded
    def acquire(self, client: str) -> float:
        interval = 1000.0 / self.rate
        wait = self._gcra(keys=[self.prefix + client], args=[repr(interval), repr(interval * (self.burst - 1))])
        return float(wait) / 1000.0

