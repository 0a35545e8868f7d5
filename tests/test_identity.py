"""The MAC identity's neighbour lookups, on crafted tables (pure functions; the real
tables are exercised by tests/test_identity_netns.py)."""

from __future__ import annotations

import ipaddress

import pytest

from multimsg import identity
from multimsg.identity import client_for_address, parse_neigh

ARP = """IP address       HW type     Flags       HW address            Mask     Device
192.0.2.1        0x1         0x2         02:fc:00:00:00:05     *        eth0
10.0.0.10        0x1         0x6         02:fc:00:00:00:0a     *        eth0
192.0.2.77       0x1         0x0         00:00:00:00:00:00     *        eth0
192.0.2.78       0x1         0x2         00:00:00:00:00:00     *        eth0
192.0.2.79       0x1         0x0         02:fc:00:00:00:79     *        eth0
"""


@pytest.fixture
def arp_table(tmp_path):
    path = tmp_path / "arp"
    path.write_text(ARP)
    return path


def test_an_ipv4_peer_gets_the_mac_of_its_own_complete_arp_row_only(arp_table):
    assert client_for_address("192.0.2.1", arp_table=arp_table) == "mac:02:fc:00:00:00:05"
    assert client_for_address("10.0.0.10", arp_table=arp_table) == "mac:02:fc:00:00:00:0a"  # permanent + complete
    # Suffixes and prefixes of a listed address are other peers, not that one.
    for other in ("2.0.2.1", "92.0.2.1", "0.0.0.10", "192.0.2.10"):
        assert client_for_address(other, arp_table=arp_table) == f"ip:{other}"
    # Incomplete and failed entries, and all-zero MACs, are no MAC: never the loopback identity.
    for unresolved in ("192.0.2.77", "192.0.2.78", "192.0.2.79"):
        assert client_for_address(unresolved, arp_table=arp_table) == f"ip:{unresolved}"
    assert client_for_address("127.0.0.1", arp_table=arp_table) == "mac:00:00:00:00:00:00"
    assert client_for_address("127.0.0.2", arp_table=arp_table) == "ip:127.0.0.2"
    assert client_for_address("192.0.2.1", arp_table=arp_table.parent / "missing") == "ip:192.0.2.1"


def test_an_ipv6_peer_gets_the_mac_of_an_equal_usable_neighbour_entry():
    table = "\n".join([
        "fd00::1 dev eth0 FAILED",
        "fd00::2 dev eth0 lladdr 02:fc:00:00:00:02 REACHABLE",
        "fd00::22 dev eth0 lladdr 02:fc:00:00:00:22 STALE",
        "fd00::3 dev eth0 lladdr 02:fc:00:00:00:03 INCOMPLETE",
        "fd00::4 dev eth0 lladdr 00:00:00:00:00:00 PERMANENT",
        "fe80::1 dev eth1 lladdr 02:fc:00:00:00:e1 router DELAY",
        "fe80::1 dev eth0 lladdr 02:fc:00:00:00:e0 router PROBE",
    ])
    v6 = ipaddress.IPv6Address
    assert parse_neigh(table, v6("fd00::2")) == "02:fc:00:00:00:02"
    assert parse_neigh(table, v6("fd00:0::22")) == "02:fc:00:00:00:22"  # equal, however it is written
    assert parse_neigh(table, v6("fd00::1")) is None  # FAILED: no MAC (getmac read such rows as zeros)
    assert parse_neigh(table, v6("fd00::3")) is None
    assert parse_neigh(table, v6("fd00::4")) is None
    assert parse_neigh(table, v6("d00::2")) is None
    assert parse_neigh(table, v6("fe80::1%eth0")) == "02:fc:00:00:00:e0"
    assert parse_neigh(table, v6("fe80::1%eth1")) == "02:fc:00:00:00:e1"


def test_an_all_zero_mac_from_getmac_is_no_mac_for_a_remote_peer(monkeypatch, tmp_path):
    monkeypatch.setattr(identity, "ARP_TABLE", tmp_path / "no-proc-net-arp")  # not Linux: getmac decides
    monkeypatch.setattr(identity.getmac, "get_mac_address", lambda **kwargs: "00:00:00:00:00:00")
    assert client_for_address("192.0.2.50") == "ip:192.0.2.50"
    assert client_for_address("127.0.0.1") == "mac:00:00:00:00:00:00"
    monkeypatch.setattr(identity.getmac, "get_mac_address", lambda **kwargs: "02:FC:00:00:00:33")
    assert client_for_address("192.0.2.50") == "mac:02:fc:00:00:00:33"


def test_ipv6_zone_ids_keep_link_local_peers_on_two_interfaces_apart():
    from multimsg.identity import identify
    from multimsg.layout import client_dir_name

    eth0, eth1 = identify("ip", "fe80::1%eth0", [], None), identify("ip", "fe80::1%eth1", [], None)
    assert eth0 == "ip:fe80::1%eth0" and eth1 == "ip:fe80::1%eth1"
    assert identify("ip", "fe80::1", [], None) == "ip:fe80::1"
    assert client_dir_name(eth0) == "ip_fe80__1+eth0" != client_dir_name(eth1)
    odd = identify("ip", "fe80::1%we/ird zone", [], None)  # a zone a folder name cannot hold: still one key of its own
    assert odd.startswith("ip:fe80::1%") and client_dir_name(odd) != client_dir_name(eth0)
    assert identify("ip", "fe80::1%we/ird zone", [], None) == odd
