"""Who is asking: the identity rule that tells clients apart.

The seed's rule: a client is the MAC address of the requesting host, looked up
with getmac from the peer address. getmac is always called with
``network_request=False`` (its default sends a UDP packet to the peer). Loopback
IPv4 resolves to ``00:00:00:00:00:00``. Where no MAC can be found (a peer on
another subnet, an IPv6 peer with no neighbour entry, 127.0.0.2) the peer's IP
address is the identity instead. A MAC is a hint, not a credential.

Client keys look like ``mac:02:fc:00:00:00:05`` or ``ip:127.0.0.2``.
"""

from __future__ import annotations

import ipaddress
import logging

import getmac

__all__ = ["client_for_address"]

# getmac logs an ERROR for every failed lookup; a miss is normal here.
logging.getLogger("getmac").setLevel(logging.CRITICAL)


def _mac_of(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if address.version == 4:
        return getmac.get_mac_address(ip=str(address), network_request=False)
    return getmac.get_mac_address(ip6=str(address), network_request=False)


def client_for_address(remote_addr: str | None) -> str:
    """The client key for a peer address."""
    try:
        address = ipaddress.ip_address((remote_addr or "").split("%", 1)[0])
    except ValueError:
        return "ip:unknown"
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    try:
        mac = _mac_of(address)
    except Exception:  # getmac probes the OS; a failure is a miss, not an error
        mac = None
    if mac:
        return "mac:" + mac.lower()
    return "ip:" + address.compressed
