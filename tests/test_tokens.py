"""Identity where MACs mean nothing: client tokens, the ip mode behind proxies, the operator rule.

- ``MULTIMSG_IDENTITY=token``: ``python -m multimsg token add NAME`` prints a
  token once and stores only its hash; a missing or unknown bearer token gets
  401 on /data, /msg and /cons while /key, /health and /openapi.json stay
  open; a client is its token's name, wherever it connects from.
- ``MULTIMSG_IDENTITY=ip``: the peer address; ``X-Forwarded-For`` counts only
  with ``MULTIMSG_TRUST_PROXY``, and then only the entry the proxy added.
- ``/drain`` and ``/metrics`` take ``MULTIMSG_DRAIN_TOKEN`` (never a client
  token), or loopback callers that no proxy forwarded when it is unset.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys

import pytest

from multimsg.errors import InvalidInput
from multimsg.identity import peer_address
from multimsg.tokens import TokenFile, add_token, remove_token
from tests.gatewayproc import ROOT, session_from


def token_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "multimsg", "token", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def token_gateway(make_gateway):
    runner = make_gateway("tokens", env={"MULTIMSG_IDENTITY": "token", "MULTIMSG_RATE_LIMIT": "0"})
    runner.tokens = {name: add_token(name, runner.home / "tokens") for name in ("alice", "bob")}
    return runner


# -- the token file and its command ------------------------------------------------------------
def test_token_add_prints_the_token_once_and_stores_only_its_hash(tmp_path):
    home = tmp_path / "home"
    made = token_cli("add", "alice", MULTIMSG_HOME=str(home))
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert len(token) >= 40 and "\n" not in token
    line = (home / "tokens").read_text()
    assert line == f"alice:{hashlib.sha256(token.encode()).hexdigest()}\n"
    assert token not in line
    assert stat.S_IMODE((home / "tokens").stat().st_mode) == 0o600

    again = token_cli("add", "alice", MULTIMSG_HOME=str(home))
    assert again.returncode != 0 and "exists already" in again.stderr
    assert token_cli("add", "../evil", MULTIMSG_HOME=str(home)).returncode != 0
    assert token_cli("add", "bob", MULTIMSG_HOME=str(home)).returncode == 0
    assert token_cli("list", MULTIMSG_HOME=str(home)).stdout.split() == ["alice", "bob"]
    assert token_cli("remove", "alice", MULTIMSG_HOME=str(home)).returncode == 0
    assert token_cli("list", MULTIMSG_HOME=str(home)).stdout.split() == ["bob"]

    elsewhere = tmp_path / "etc" / "multimsg-tokens"
    assert token_cli("add", "carol", MULTIMSG_HOME=str(home), MULTIMSG_TOKENS_FILE=str(elsewhere)).returncode == 0
    assert elsewhere.read_text().startswith("carol:")
    assert "carol" not in (home / "tokens").read_text()


def test_the_token_file_ignores_comments_and_malformed_lines(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# clients of the shop\n\nnot a line\nx:1234\n")
    token = add_token("shop-1", path)
    checker = TokenFile(path)
    assert checker.names() == ["shop-1"]
    assert checker.name_for(token) == "shop-1"
    assert checker.name_for(token + "x") is None
    assert checker.name_for("") is None
    assert checker.name_for("ü" * 10_000) is None
    assert remove_token("shop-1", path) and checker.name_for(token) is None
    assert path.read_text().startswith("# clients of the shop\n")


# -- token mode over HTTP --------------------------------------------------------------------------
def test_token_mode_answers_401_without_a_known_token_and_keeps_public_endpoints_open(token_gateway):
    r = token_gateway
    data_id = r.http.post(r.url + "/data", files={"data": ("a", b"x")}, headers=bearer(r.tokens["alice"])).text
    attempts = {
        "no token": {},
        "unknown token": bearer("not-a-token-anyone-has-0123456789abcdef"),
        "empty bearer": {"Authorization": "Bearer "},
        "basic auth": {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
        "token without scheme": {"Authorization": r.tokens["alice"]},
        "hash as token": bearer(hashlib.sha256(r.tokens["alice"].encode()).hexdigest()),
    }
    for what, headers in attempts.items():
        for response in (
            r.http.post(r.url + "/data", files={"data": ("a", b"x")}, headers=headers),
            r.http.post(r.url + "/msg", data={"id": data_id, "serv": "telegram", "dest": "1", "type": "text"}, headers=headers),
            r.http.post(r.url + "/cons", data={"id": "A" * 16}, headers=headers),
        ):
            assert response.status_code == 401, (what, response.url, response.text)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert response.text.strip() and "\n" not in response.text.strip()
    assert len(list((r.home / "spool").glob("*/*.json"))) == 1  # only alice's upload
    assert r.http.get(r.url + "/key").status_code == 200
    assert r.http.get(r.url + "/openapi.json").status_code == 200
    assert r.http.get(r.url + "/health").status_code == 200
    # The scheme is case-insensitive (RFC 9110).
    assert r.http.post(r.url + "/cons", data={"id": "A" * 16}, headers={"Authorization": "bearer " + r.tokens["bob"]}).status_code == 404


def test_a_token_client_is_its_token_name_wherever_it_connects_from(token_gateway, telegram):
    r = token_gateway
    alice, bob = bearer(r.tokens["alice"]), bearer(r.tokens["bob"])
    data_id = r.http.post(r.url + "/data", files={"data": ("a", b"hola from alice")}, headers=alice).text
    queued = r.http.post(r.url + "/msg", data={"id": data_id, "serv": "telegram", "dest": "55", "type": "text"}, headers=alice)
    assert queued.status_code == 200, queued.text
    message_id = queued.text
    assert r.stored(r.home / "spool" / "token_alice" / data_id) == b"hola from alice"

    # Another address, same token: the same client.
    elsewhere = session_from("127.0.0.2")
    assert elsewhere.post(r.url + "/cons", data={"id": message_id}, headers=alice).text == "queued"
    # The same address, another token: another client, told "unknown" like for any id.
    unknown = r.http.post(r.url + "/cons", data={"id": "Z" * 16}, headers=bob)
    assert unknown.status_code == 404
    assert r.http.post(r.url + "/cons", data={"id": message_id}, headers=bob).text == unknown.text
    foreign = r.http.post(r.url + "/msg", data={"id": data_id, "serv": "telegram", "dest": "55", "type": "text"}, headers=bob)
    assert foreign.status_code == 404

    r.drain()
    telegram.wait_for(lambda record: record["dest"] == 55)
    final = r.http.post(r.url + "/cons", data={"id": message_id}, headers={**alice, "Accept": "application/json"})
    assert final.json()["state"] == "delivered"


def test_tokens_added_or_removed_while_the_server_runs_take_effect(token_gateway):
    r = token_gateway
    assert r.http.post(r.url + "/cons", data={"id": "A" * 16}, headers=bearer(r.tokens["bob"])).status_code == 404
    carol = add_token("carol", r.home / "tokens")
    assert r.http.post(r.url + "/data", files={"data": ("c", b"c")}, headers=bearer(carol)).status_code == 200
    assert remove_token("bob", r.home / "tokens")
    assert r.http.post(r.url + "/cons", data={"id": "A" * 16}, headers=bearer(r.tokens["bob"])).status_code == 401


# -- the operator rule ------------------------------------------------------------------------------
def test_operator_endpoints_take_the_drain_token_and_never_a_client_token(make_gateway):
    runner = make_gateway("operator", env={"MULTIMSG_IDENTITY": "token", "MULTIMSG_DRAIN_TOKEN": "operator-secret-123"})
    client_token = add_token("alice", runner.home / "tokens")
    for path, method in (("/drain", "POST"), ("/metrics", "GET")):
        url = runner.url + path
        assert runner.http.request(method, url).status_code == 401  # loopback is not enough once a token is set
        assert runner.http.request(method, url, headers=bearer(client_token)).status_code == 401
        assert runner.http.request(method, url, headers=bearer("operator-secret-12")).status_code == 401
        assert runner.http.request(method, url, headers={"Authorization": "operator-secret-123"}).status_code == 401
        assert runner.http.request(method, url, headers=bearer("operator-secret-123")).status_code == 200
    # The drain token is not a client token either.
    assert runner.http.post(runner.url + "/cons", data={"id": "A" * 16}, headers=bearer("operator-secret-123")).status_code == 401


def test_without_a_drain_token_operator_endpoints_take_loopback_callers_no_proxy_forwarded(make_gateway):
    runner = make_gateway("loopback-operator")
    assert runner.http.post(runner.url + "/drain").status_code == 200
    assert session_from("127.0.0.2").get(runner.url + "/metrics").status_code == 200  # all of 127/8 is this host
    for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
        refused = runner.http.post(runner.url + "/drain", headers={header: "for=203.0.113.7" if header == "Forwarded" else "203.0.113.7"})
        assert refused.status_code == 401, header


# -- ip mode and proxies ---------------------------------------------------------------------------
def test_ip_mode_tells_clients_apart_by_address_and_ignores_x_forwarded_for_unless_trusted(make_gateway):
    runner = make_gateway("ip", env={"MULTIMSG_IDENTITY": "ip", "MULTIMSG_RATE_LIMIT": "0"})
    data_id = runner.upload_id(b"from .1")
    runner.upload_id(b"from .2", source="127.0.0.2")
    assert {p.name for p in (runner.home / "spool").iterdir()} == {"ip_127.0.0.1", "ip_127.0.0.2"}  # not the loopback MAC
    assert runner.msg(source="127.0.0.2", id=data_id, serv="telegram", dest="1", type="text").status_code == 404
    # A client cannot become another by claiming an address.
    spoofed = runner.http.post(runner.url + "/msg", data={"id": data_id, "serv": "telegram", "dest": "1", "type": "text"},
                               headers={"X-Forwarded-For": "127.0.0.2"})
    assert spoofed.status_code == 200, spoofed.text


def test_behind_a_trusted_proxy_the_client_is_the_address_the_proxy_saw(make_gateway):
    runner = make_gateway("proxied", env={"MULTIMSG_IDENTITY": "ip", "MULTIMSG_TRUST_PROXY": "1", "MULTIMSG_RATE_LIMIT": "0"})
    via = lambda chain: {"X-Forwarded-For": chain}  # noqa: E731
    data_id = runner.http.post(runner.url + "/data", files={"data": ("a", b"x")}, headers=via("203.0.113.5")).text
    assert (runner.home / "spool" / "ip_203.0.113.5" / data_id).exists()
    message = {"id": data_id, "serv": "telegram", "dest": "1", "type": "text"}
    # What the client itself put in front of the chain does not count; the proxy's entry does.
    assert runner.http.post(runner.url + "/msg", data=message, headers=via("198.51.100.1, 203.0.113.5")).status_code == 200
    assert runner.http.post(runner.url + "/msg", data=message, headers=via("203.0.113.5, 198.51.100.1")).status_code == 404
    assert runner.http.post(runner.url + "/msg", data=message).status_code == 404  # no header: the proxy's own address
    garbage = runner.http.post(runner.url + "/msg", data=message, headers=via("../../etc"))
    assert garbage.status_code == 400 and "X-Forwarded-For" in garbage.text
    # The operator rule looks at the forwarded address too.
    assert runner.http.post(runner.url + "/drain", headers=via("203.0.113.5")).status_code == 401
    assert runner.http.post(runner.url + "/drain", headers=via("127.0.0.1")).status_code == 200


def test_behind_a_trusted_proxy_a_request_with_too_few_hops_is_not_loopback_nor_the_proxys_client(make_gateway):
    runner = make_gateway("short-chain", env={"MULTIMSG_TRUST_PROXY": "1", "MULTIMSG_RATE_LIMIT": "0"})  # mac identity
    loopback_client = runner.home / "spool" / "mac_00_00_00_00_00_00"
    for headers in ({"X-Real-IP": "203.0.113.5"}, {"Forwarded": "for=203.0.113.5"}, {"X-Forwarded-For": ""},
                    {"X-Real-IP": "127.0.0.1", "Forwarded": "for=127.0.0.1"}):
        assert runner.http.post(runner.url + "/drain", headers=headers).status_code == 401, headers
        assert runner.http.get(runner.url + "/metrics", headers=headers).status_code == 401, headers
        upload = runner.http.post(runner.url + "/data", files={"data": ("a", b"x")}, headers=headers)
        assert upload.status_code == 400 and "X-Forwarded-For" in upload.text, (headers, upload.text)
        assert "\n" not in upload.text.strip()
        assert runner.http.post(runner.url + "/cons", data={"id": "A" * 16}, headers=headers).status_code == 400
    assert not loopback_client.exists()
    # A direct call on the host (no forwarding header) is still loopback, and a full chain works.
    assert runner.http.post(runner.url + "/drain").status_code == 200
    data_id = runner.http.post(runner.url + "/data", files={"data": ("a", b"x")}, headers={"X-Forwarded-For": "127.0.0.1"}).text
    assert (loopback_client / data_id).exists()


def test_the_trusted_entry_is_counted_from_the_right():
    chain = ["198.51.100.1, 203.0.113.5", "10.0.0.2"]  # two headers, three hops
    assert str(peer_address("10.0.0.9", chain, 0)) == "10.0.0.9"
    assert str(peer_address("10.0.0.9", chain, 1)) == "10.0.0.2"
    assert str(peer_address("10.0.0.9", chain, 2)) == "203.0.113.5"
    with pytest.raises(InvalidInput, match="trusts 5 proxies"):  # fewer hops than proxies: refused, not the socket peer
        peer_address("10.0.0.9", chain, 5)
    assert str(peer_address("10.0.0.9", [], 5)) == "10.0.0.9"  # no forwarding header at all: a direct call
    with pytest.raises(InvalidInput):
        peer_address("127.0.0.1", [], 1, forwarded=True)  # X-Real-IP or Forwarded only
    assert str(peer_address("::ffff:192.0.2.4", [], 0)) == "192.0.2.4"
