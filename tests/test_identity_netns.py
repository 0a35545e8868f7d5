"""MAC identity on real interfaces: two network namespaces, two MACs, two clients.

A bridge in the root namespace gets an address in an unused 10.213.X.0/24; two
namespaces are joined to it by veth pairs whose namespace ends have distinct,
locally administered MACs. The runner listens on the bridge address only, and
the clients run inside the namespaces (``ip netns exec NS python ...``), so the
server learns their MACs from its own neighbour table, as on a real LAN.
Traffic stays between these namespaces and the root namespace's bridge (plus
the runner's loopback calls to the platform emulator).

Everything created gets a per-run unique name and is deleted in the fixture's
teardown, whatever happens. The test skips only where ``ip netns add`` is not
permitted (not root, or no CAP_SYS_ADMIN); CI runs as root and must run it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from tests.conftest import require, require_tool
from tests.gatewayproc import Gateway, free_port

# The client side: one HTTP call from inside a namespace, with http.client
# (fast to start, and it never goes through a proxy from the environment).
CLIENT = r"""
import http.client, json, sys, urllib.parse
method, url, body = sys.argv[1], urllib.parse.urlsplit(sys.argv[2]), json.loads(sys.argv[3])
if "upload" in body:
    payload = (b'--mmb\r\nContent-Disposition: form-data; name="data"; filename="data.txt"\r\n\r\n'
               + body["upload"].encode() + b"\r\n--mmb--\r\n")
    headers = {"Content-Type": "multipart/form-data; boundary=mmb"}
else:
    payload = urllib.parse.urlencode(body.get("form", {})).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
connection = http.client.HTTPConnection(url.hostname, url.port, timeout=20)
connection.request(method, url.path, body=payload, headers=headers)
response = connection.getresponse()
print(json.dumps({"status": response.status, "text": response.read().decode()}))
"""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


def _free_subnet() -> int:
    used = ip("-o", "-4", "addr", "show").stdout + ip("-4", "route", "show", "table", "all").stdout
    for third in random.sample(range(1, 255), 254):
        if f"10.213.{third}." not in used:
            return third
    require(False, "no free 10.213.X.0/24 subnet on this machine")


@dataclass
class Host:
    netns: str
    host_if: str
    ns_if: str
    address: str
    mac: str

    def call(self, method: str, url: str, **body) -> tuple[int, str]:
        """One request from inside the namespace; (status, body)."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.netns, sys.executable, "-c", CLIENT, method, url, json.dumps(body)],
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        return answer["status"], answer["text"]

    def set_mac(self, mac: str, bridge: str) -> None:
        ip("-n", self.netns, "link", "set", "dev", self.ns_if, "address", mac)
        self.mac = mac
        # The server's neighbour entry still holds the old MAC until it goes
        # stale; forget it so the next connection resolves the new one.
        ip("neigh", "del", self.address, "dev", bridge, check=False)


@dataclass
class Lan:
    suffix: str = field(default_factory=lambda: f"{os.getpid() % 0x10000:04x}{random.randrange(0x100):02x}")
    hosts: list[Host] = field(default_factory=list)
    made_netns: list[str] = field(default_factory=list)
    made_links: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"mmb{self.suffix}"

    def up(self) -> None:
        require_tool("ip", "iproute2: namespaces, veth pairs, a bridge")
        self.third = _free_subnet()
        self.server_address = f"10.213.{self.third}.1"
        probe = ip("netns", "add", f"mmn{self.suffix}a", check=False)
        require(probe.returncode == 0, f"this machine does not allow network namespaces ('ip netns add' failed: {probe.stderr.strip()})")
        self.made_netns.append(f"mmn{self.suffix}a")
        ip("link", "add", self.bridge, "type", "bridge")
        self.made_links.append(self.bridge)
        ip("addr", "add", f"{self.server_address}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for index, letter in enumerate("ab"):
            netns, host_if, ns_if = f"mmn{self.suffix}{letter}", f"mmh{self.suffix}{letter}", f"mmc{self.suffix}{letter}"
            if netns not in self.made_netns:
                ip("netns", "add", netns)
                self.made_netns.append(netns)
            ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
            self.made_links.append(host_if)
            mac = "02:13:%02x:%02x:%02x:%02x" % (random.randrange(256), random.randrange(256), random.randrange(256), 0x0A + index)
            ip("link", "set", ns_if, "netns", netns)
            ip("link", "set", host_if, "master", self.bridge)
            ip("link", "set", host_if, "up")
            ip("-n", netns, "link", "set", "dev", ns_if, "address", mac)
            ip("-n", netns, "addr", "add", f"10.213.{self.third}.{11 + index}/24", "dev", ns_if)
            ip("-n", netns, "link", "set", ns_if, "up")
            ip("-n", netns, "link", "set", "lo", "up")
            self.hosts.append(Host(netns, host_if, ns_if, f"10.213.{self.third}.{11 + index}", mac))

    def down(self) -> list[str]:
        """Delete everything made; returns what could not be deleted."""
        for netns in self.made_netns:  # takes the namespace ends of the veth pairs with it
            ip("netns", "del", netns, check=False)
        for link in reversed(self.made_links):
            ip("link", "del", link, check=False)
        left = [name for name in self.made_netns if name in ip("netns", "list").stdout.split()]
        links = ip("-o", "link", "show").stdout
        left += [name for name in self.made_links if f" {name}:" in links or f" {name}@" in links]
        return left


@pytest.fixture
def lan():
    net = Lan()
    try:
        net.up()
        yield net
    finally:
        left = net.down()
        assert not left, f"namespaces/links left behind: {left}"


@pytest.fixture
def lan_gateway(lan, tmp_path, gateway_env, server_keys):
    """A runner listening on the bridge address only."""
    home = tmp_path / "home"
    shutil.copytree(server_keys, home / "keys")
    runner = Gateway(home, {**gateway_env, "HOST": lan.server_address, "MULTIMSG_IDENTITY": "mac"})
    runner.port = free_port()
    runner.url = f"http://{lan.server_address}:{runner.port}"
    runner.http.trust_env = False
    try:
        runner.start()
        yield runner
    finally:
        runner.stop()


def _spool_clients(runner: Gateway) -> set[str]:
    return {path.name for path in (runner.home / "spool").iterdir() if path.is_dir()}


def test_two_hosts_on_a_lan_are_two_clients_told_apart_by_mac(lan, lan_gateway):
    a, b = lan.hosts
    url = lan_gateway.url
    status, data_a = a.call("POST", url + "/data", upload="hola from A")
    assert status == 200, data_a
    status, data_b = b.call("POST", url + "/data", upload="hola from B")
    assert status == 200, data_b

    # The server knew each host by its interface's MAC, not by its address.
    assert _spool_clients(lan_gateway) == {"mac_" + a.mac.replace(":", "_"), "mac_" + b.mac.replace(":", "_")}
    assert lan_gateway.stored(lan_gateway.home / "spool" / ("mac_" + a.mac.replace(":", "_")) / data_a) == b"hola from A"

    message = {"serv": "telegram", "dest": "12345", "type": "text"}
    status, msg_a = a.call("POST", url + "/msg", form={"id": data_a, **message})
    assert status == 200, msg_a
    status, msg_b = b.call("POST", url + "/msg", form={"id": data_b, **message})
    assert status == 200, msg_b

    # Each sees its own, and gets the unknown-id answer for the other's.
    assert a.call("POST", url + "/cons", form={"id": msg_a}) == (200, "queued")
    assert b.call("POST", url + "/cons", form={"id": msg_b}) == (200, "queued")
    unknown_message = b.call("POST", url + "/cons", form={"id": "Z" * 16})
    assert unknown_message[0] == 404
    assert b.call("POST", url + "/cons", form={"id": msg_a}) == unknown_message
    assert a.call("POST", url + "/cons", form={"id": msg_b}) == unknown_message
    unknown_data = b.call("POST", url + "/msg", form={"id": "Z" * 16, **message})
    assert unknown_data[0] == 404
    assert b.call("POST", url + "/msg", form={"id": data_a, **message}) == unknown_data
    assert a.call("POST", url + "/msg", form={"id": data_b, **message}) == unknown_data


def test_a_host_that_changes_its_mac_becomes_another_client(lan, lan_gateway):
    a, _ = lan.hosts
    url = lan_gateway.url
    original = a.mac
    status, data_id = a.call("POST", url + "/data", upload="before the change")
    assert status == 200, data_id
    status, message_id = a.call("POST", url + "/msg", form={"id": data_id, "serv": "telegram", "dest": "12345", "type": "text"})
    assert status == 200, message_id
    assert a.call("POST", url + "/cons", form={"id": message_id}) == (200, "queued")

    a.set_mac("02:13:de:ad:be:ef", lan.bridge)
    # Same address, new MAC: a stranger to its own earlier ids.
    assert a.call("POST", url + "/cons", form={"id": message_id})[0] == 404
    assert a.call("POST", url + "/msg", form={"id": data_id, "serv": "telegram", "dest": "12345", "type": "text"})[0] == 404
    status, other_data = a.call("POST", url + "/data", upload="after the change")
    assert status == 200, other_data
    assert "mac_02_13_de_ad_be_ef" in _spool_clients(lan_gateway)

    # Taking the old MAC back is enough to be the old client again: a MAC is a
    # hint anyone on the segment can claim, not a credential.
    a.set_mac(original, lan.bridge)
    assert a.call("POST", url + "/cons", form={"id": message_id}) == (200, "queued")


def test_a_peer_whose_address_ends_another_neighbours_address_keeps_its_own_mac(lan, lan_gateway):
    a, b = lan.hosts
    url = lan_gateway.url
    # Neighbour rows whose addresses end with a's and b's (110.213.X.11 ends with
    # 10.213.X.11): an unanchored search of the table finds them for a and b.
    fake = {}
    for index, host in enumerate((a, b)):
        for prefix in ("1", "2", "11", "12", "21", "22"):
            address = prefix + host.address
            if int(address.split(".")[0]) > 223:
                continue
            mac = "02:13:ee:ee:%02x:%02x" % (index, len(fake))
            ip("neigh", "replace", address, "lladdr", mac, "dev", lan.bridge, "nud", "permanent")
            fake[address] = mac
    try:
        for host in (a, b):
            status, data_id = host.call("POST", url + "/data", upload=f"from {host.address}")
            assert status == 200, data_id
        assert _spool_clients(lan_gateway) == {"mac_" + a.mac.replace(":", "_"), "mac_" + b.mac.replace(":", "_")}
    finally:
        for address in fake:
            ip("neigh", "del", address, "dev", lan.bridge, check=False)
