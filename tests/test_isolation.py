"""Clients are told apart by the peer's MAC (or its IP where no MAC is known).

On loopback, 127.0.0.1 resolves to the MAC 00:00:00:00:00:00 and 127.0.0.2 has
no MAC, so it is the client ``ip:127.0.0.2``: two different clients.
"""

from __future__ import annotations


def test_a_client_cannot_use_or_see_another_clients_ids(gateway):
    data_a = gateway.upload_id(b"from A")
    message_a = gateway.send(b"A's message", "telegram", "1")
    data_b = gateway.upload_id(b"from B", source="127.0.0.2")

    foreign_data = gateway.msg(source="127.0.0.2", id=data_a, serv="telegram", dest="1", type="text")
    assert foreign_data.status_code == 404
    assert foreign_data.text == gateway.msg(source="127.0.0.2", id="Z" * 16, serv="telegram", dest="1", type="text").text

    foreign_message = gateway.cons(message_a, source="127.0.0.2")
    assert foreign_message.status_code == 404
    assert foreign_message.text == gateway.cons("Z" * 16, source="127.0.0.2").text

    assert gateway.msg(id=data_b, serv="telegram", dest="1", type="text").status_code == 404
    # Each still uses its own ids.
    assert gateway.msg(source="127.0.0.2", id=data_b, serv="telegram", dest="1", type="text").status_code == 200
    assert gateway.cons(message_a).text == "queued"


def test_uploads_live_in_a_folder_per_client(gateway):
    data_a = gateway.upload_id(b"a")
    data_b = gateway.upload_id(b"b", source="127.0.0.2")
    spool = gateway.home / "spool"
    assert gateway.stored(spool / "mac_00_00_00_00_00_00" / data_a) == b"a"  # sealed at rest: opened with the runner's key
    assert gateway.stored(spool / "ip_127.0.0.2" / data_b) == b"b"
