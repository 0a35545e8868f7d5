"""Who is asking: the identity rule that tells clients apart (``MULTIMSG_IDENTITY``).

Three modes, one client key each:

- ``mac`` (default, the seed's rule): the MAC address of the requesting host,
  looked up in the server's neighbour table from the peer address
  (``mac:02:fc:00:00:00:05``), never sending a packet. ``127.0.0.1`` resolves
  to ``00:00:00:00:00:00`` (the loopback identity, as getmac gives it). Where
  no MAC can be found (a peer on another subnet, an IPv6 peer with no
  neighbour entry, 127.0.0.2, an incomplete or failed entry) the peer's IP
  address is the identity instead (``ip:127.0.0.2``). Only hosts on the
  server's own LAN segment have a MAC in its table, and any host can set its
  own MAC: a MAC is a hint that keeps honest neighbours apart, not a credential.

  On Linux the lookup reads the tables itself (``arp_lookup``: the row of
  ``/proc/net/arp`` whose first column *is* the address, with the complete
  flag; ``neigh6_lookup``: the ``ip -6 neigh`` entry equal to the address, in
  a usable state). getmac, the declared dependency, is used elsewhere (other
  platforms) with ``network_request=False``; it is bypassed on Linux because
  it searches those tables with an unanchored pattern (``2.0.2.1`` matches
  ``192.0.2.1``'s row, so two peers would share one MAC identity) and reads
  incomplete entries as ``00:00:00:00:00:00``, the loopback identity. An
  all-zero MAC for any peer but 127.0.0.1 counts as no MAC, whatever found it.
- ``token``: ``Authorization: Bearer <token>``, checked against the token file
  (``multimsg.tokens``); the client is the token's name (``token:alice``). A
  missing or unknown token is ``Unauthorized``.
- ``ip``: the peer address (``ip:203.0.113.7``).

``MULTIMSG_TRUST_PROXY`` (off by default; ``on`` = one proxy, or a number of
proxies) makes the peer address the one the nearest trusted proxy appended to
``X-Forwarded-For``: the N-th entry from the right, which a client cannot forge.
Without it, ``X-Forwarded-For`` is ignored. With it, a request that carries a
forwarding header (``X-Forwarded-For``, ``Forwarded``, ``X-Real-IP``) but fewer
``X-Forwarded-For`` entries than trusted proxies is refused (``InvalidInput``,
400): it did not come the way the operator said, and its socket peer (the
proxy, often loopback) must not become its identity. A request with no
forwarding header at all keeps its socket peer (a direct call on the host).
"""

from __future__ import annotations

import hashlib
import ipaddress
import locale
import logging
import re
import shutil
import socket
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import getmac

from .errors import InvalidInput, Unauthorized
from .fsutil import read_file

__all__ = [
    "MAC", "TOKEN", "IP", "MODES", "peer_address", "client_for_address", "client_for_token", "identify",
    "arp_lookup", "neigh6_lookup", "parse_neigh", "ARP_TABLE", "ZERO_MAC",
]

MAC, TOKEN, IP = "mac", "token", "ip"
MODES = (MAC, TOKEN, IP)

# getmac logs an ERROR for every failed lookup; a miss is normal here.
logging.getLogger("getmac").setLevel(logging.CRITICAL)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


_ZONE_RE = re.compile(r"[A-Za-z0-9.\-]{1,32}")


def _zone(zone: str) -> str:
    """An IPv6 zone id as it goes into a client key: the interface name, or its index
    when the name has characters a client key does not take."""
    if _ZONE_RE.fullmatch(zone):
        return zone
    try:
        return str(socket.if_nametoindex(zone))
    except OSError:
        return "x" + hashlib.sha256(zone.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def _parse(value: str | None) -> Address | None:
    """The address in ``value``; an IPv6 zone id (``fe80::1%eth0``) is kept: the same
    link-local address on two interfaces is two hosts."""
    base, _, zone = (value or "").strip().partition("%")
    address = _parse_bare(base)
    if address is not None and address.version == 6 and zone:
        return ipaddress.IPv6Address(f"{address.compressed}%{_zone(zone)}")
    return address


@lru_cache(maxsize=1024)
def _parse_bare(base: str) -> Address | None:
    # Asked on every request with the same few peers: parsed once per address (the answer depends on the text alone).
    try:
        address = ipaddress.ip_address(base)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def peer_address(remote_addr: str | None, forwarded_for: Iterable[str] = (), trust_proxy: int = 0,
                 forwarded: bool = False) -> Address:
    """The client's address: the socket peer, or what the ``trust_proxy``-th proxy saw.

    ``forwarded_for`` holds the X-Forwarded-For header values; ``forwarded``
    says the request carries another forwarding header (``Forwarded``,
    ``X-Real-IP``). Trusting proxies, a forwarded request with fewer hops than
    configured is refused (InvalidInput); one with no forwarding header keeps
    its socket peer address.
    """
    if trust_proxy > 0:
        headers = list(forwarded_for)
        hops = [hop.strip() for header in headers for hop in header.split(",") if hop.strip()]
        if len(hops) >= trust_proxy:
            address = _parse(hops[-trust_proxy])
            if address is None:
                raise InvalidInput("X-Forwarded-For does not hold an IP address where the trusted proxy puts it")
            return address
        if headers or forwarded:
            raise InvalidInput(
                f"this server trusts {trust_proxy} prox{'y' if trust_proxy == 1 else 'ies'} (MULTIMSG_TRUST_PROXY) but the request "
                f"came with forwarding headers and {len(hops)} X-Forwarded-For entr{'y' if len(hops) == 1 else 'ies'}; "
                "the proxy must append the client's address to X-Forwarded-For"
            )
    address = _parse(remote_addr)
    if address is None:
        raise InvalidInput("cannot tell the client's address from this connection")
    return address


ARP_TABLE = Path("/proc/net/arp")  # Linux's IPv4 neighbour table
ATF_COM = 0x2  # the "complete" flag of an ARP entry (linux/if_arp.h)
ZERO_MAC = "00:00:00:00:00:00"
LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
NEIGH_USABLE = frozenset({"REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT"})  # entries that hold a MAC we saw
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def _usable_mac(value: str | None) -> str | None:
    mac = (value or "").strip().lower()
    return mac if _MAC_RE.fullmatch(mac) and mac != ZERO_MAC else None


def arp_lookup(address: str, table: Path | str | None = None) -> str | None:
    """The MAC of IPv4 ``address`` in the ARP table: the row whose first column is
    exactly the address and whose entry is complete; None otherwise (also for
    an all-zero MAC)."""
    try:
        # One open, read and close, decoded as read_text decodes (its text layer costs four times as much): every
        # request from the LAN reads it.
        lines = read_file(table or ARP_TABLE).decode(locale.getpreferredencoding(False)).splitlines()[1:]  # the first line is the header
    except OSError:
        return None
    for line in lines:
        columns = line.split()
        if len(columns) < 4 or columns[0] != address:
            continue
        try:
            complete = int(columns[2], 16) & ATF_COM
        except ValueError:
            continue
        if complete:
            return _usable_mac(columns[3])
    return None


def parse_neigh(output: str, address: ipaddress.IPv6Address) -> str | None:
    """The MAC of ``address`` in ``ip -6 neigh show`` output: an entry equal to it
    (and on its zone's interface, if it has one) in a usable state."""
    zone = address.scope_id
    bare = ipaddress.IPv6Address(address.compressed.split("%", 1)[0])
    for line in output.splitlines():
        words = line.split()
        if not words:
            continue
        try:
            if ipaddress.IPv6Address(words[0]) != bare:
                continue
        except ValueError:
            continue
        fields = dict(zip(words[1:], words[2:]))  # each word and the one after it (dev X, lladdr Y)
        if zone and fields.get("dev") != zone:
            continue
        if not NEIGH_USABLE.intersection(words):
            continue
        mac = _usable_mac(fields.get("lladdr"))
        if mac:
            return mac
    return None


def neigh6_lookup(address: ipaddress.IPv6Address) -> str | None:
    """The MAC of IPv6 ``address`` from the kernel's neighbour table (``ip -6 neigh show``)."""
    command = shutil.which("ip")
    if command is None:
        return None
    try:
        output = subprocess.run([command, "-6", "neigh", "show"], capture_output=True, text=True, timeout=2).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_neigh(output, address)


def _mac_of(address: Address, arp_table: Path | str | None = None) -> str | None:
    if address == LOOPBACK:
        return ZERO_MAC  # the loopback identity (getmac's rule): every local program is one client
    if arp_table is not None or ARP_TABLE.exists():
        # Linux: exact lookups of our own (see the module docstring for why getmac is bypassed).
        if address.version == 4:
            return arp_lookup(str(address), arp_table)
        return neigh6_lookup(address)
    if address.version == 4:
        mac = getmac.get_mac_address(ip=str(address), network_request=False)
    else:
        mac = getmac.get_mac_address(ip6=str(address), network_request=False)
    return _usable_mac(mac)


def client_for_address(address: Address | str | None, *, arp_table: Path | str | None = None) -> str:
    """The client key in ``mac`` mode: the peer's MAC, else its IP address.

    ``arp_table`` replaces ``/proc/net/arp`` (for tests with a crafted table).
    """
    if not isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        parsed = _parse(address)
        if parsed is None:
            raise InvalidInput("cannot tell the client's address from this connection")
        address = parsed
    try:
        mac = _mac_of(address, arp_table)
    except Exception:  # the lookup probes the OS; a failure is a miss, not an error
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
             *, trust_proxy: int = 0, tokens=None, forwarded: bool = False) -> str:
    """The client key of a request under ``mode`` (``mac``, ``token`` or ``ip``).

    ``forwarded``: the request carries a Forwarded or X-Real-IP header (see ``peer_address``).
    """
    if mode == TOKEN:
        return client_for_token(authorization, tokens)
    address = peer_address(remote_addr, forwarded_for, trust_proxy, forwarded)
    if mode == IP:
        return "ip:" + address.compressed
    return client_for_address(address)
