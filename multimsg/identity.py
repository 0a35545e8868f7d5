"""Who is asking: the identity rule that tells clients apart (``MULTIMSG_IDENTITY``).

Three modes, one client key each:

- ``mac`` (default, the seed's rule): the MAC address of the requesting host,
  looked up with getmac from the peer address (``mac:02:fc:00:00:00:05``).
  getmac is always called with ``network_request=False`` (its default sends a
  UDP packet to the peer). Loopback IPv4 resolves to ``00:00:00:00:00:00``.
  Where no MAC can be found (a peer on another subnet, an IPv6 peer with no
  neighbour entry, 127.0.0.2) the peer's IP address is the identity instead
  (``ip:127.0.0.2``). Only hosts on the server's own LAN segment have a MAC in
  its neighbour table, and any host can set its own MAC: a MAC is a hint that
  keeps honest neighbours apart, not a credential.
- ``token``: ``Authorization: Bearer <token>``, checked against the token file
  (``multimsg.tokens``); the client is the token's name (``token:alice``). A
  missing or unknown token is ``Unauthorized``.
- ``ip``: the peer address (``ip:203.0.113.7``).

``MULTIMSG_TRUST_PROXY`` (off by default; ``on`` = one proxy, or a number of
proxies) makes the peer address the one the nearest trusted proxy appended to
``X-Forwarded-For``: the N-th entry from the right, which a client cannot forge.
Without it, ``X-Forwarded-For`` is ignored.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Iterable

import getmac

from .errors import InvalidInput, Unauthorized

__all__ = ["MAC", "TOKEN", "IP", "MODES", "peer_address", "client_for_address", "client_for_token", "identify"]

MAC, TOKEN, IP = "mac", "token", "ip"
MODES = (MAC, TOKEN, IP)

# getmac logs an ERROR for every failed lookup; a miss is normal here.
logging.getLogger("getmac").setLevel(logging.CRITICAL)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse(value: str | None) -> Address | None:
    try:
        address = ipaddress.ip_address((value or "").strip().split("%", 1)[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def peer_address(remote_addr: str | None, forwarded_for: Iterable[str] = (), trust_proxy: int = 0) -> Address:
    """The client's address: the socket peer, or what the ``trust_proxy``-th proxy saw.

    A request that reached us through fewer proxies than configured keeps its
    socket peer address (as werkzeug's ProxyFix does).
    """
    if trust_proxy > 0:
        hops = [hop.strip() for header in forwarded_for for hop in header.split(",") if hop.strip()]
        if len(hops) >= trust_proxy:
            address = _parse(hops[-trust_proxy])
            if address is None:
                raise InvalidInput("X-Forwarded-For does not hold an IP address where the trusted proxy puts it")
            return address
    address = _parse(remote_addr)
    if address is None:
        raise InvalidInput("cannot tell the client's address from this connection")
    return address


def _mac_of(address: Address) -> str | None:
    if address.version == 4:
        return getmac.get_mac_address(ip=str(address), network_request=False)
    return getmac.get_mac_address(ip6=str(address), network_request=False)


def client_for_address(address: Address | str | None) -> str:
    """The client key in ``mac`` mode: the peer's MAC, else its IP address."""
    if not isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        parsed = _parse(address)
        if parsed is None:
            raise InvalidInput("cannot tell the client's address from this connection")
        address = parsed
    try:
        mac = _mac_of(address)
    except Exception:  # getmac probes the OS; a failure is a miss, not an error
        mac = None
    if mac:
        return "mac:" + mac.lower()
    return "ip:" + address.compressed


def client_for_token(authorization: str | None, tokens) -> str:
    """The client key in ``token`` mode; ``tokens`` is a ``multimsg.tokens.TokenFile``."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send 'Authorization: Bearer <token>'; the operator creates tokens with 'multimsg token add NAME'")
    name = tokens.name_for(token.strip())
    if name is None:
        raise Unauthorized("the bearer token is not known to this server")
    return "token:" + name


def identify(mode: str, remote_addr: str | None, forwarded_for: Iterable[str], authorization: str | None,
             *, trust_proxy: int = 0, tokens=None) -> str:
    """The client key of a request under ``mode`` (``mac``, ``token`` or ``ip``)."""
    if mode == TOKEN:
        return client_for_token(authorization, tokens)
    address = peer_address(remote_addr, forwarded_for, trust_proxy)
    if mode == IP:
        return "ip:" + address.compressed
    return client_for_address(address)
