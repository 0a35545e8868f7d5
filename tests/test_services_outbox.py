"""The local outbox: every datatype lands as a file plus a JSON sidecar, through the HTTP API and the CLI."""

from __future__ import annotations

import json

import pytest

from tests.native_support import SAMPLES, VIA, send_every, start_gateway, wait_attempted


@pytest.fixture(scope="module")
def outbox_gateway(tmp_path_factory, server_keys):
    runner = start_gateway(tmp_path_factory, server_keys, {}, "outbox")
    yield runner
    runner.stop()


def delivered_file(gateway, report: dict) -> tuple[bytes, dict]:
    [platform_id] = report["platform_ids"]
    path = gateway.home / "outbox" / platform_id
    return path.read_bytes(), json.loads(path.with_name(path.name + ".json").read_text())


def test_a_text_is_written_whole_with_its_sidecar(outbox_gateway):
    text = "Hola desde multimsg ✓\n" * 500
    message_id = outbox_gateway.send(text.encode(), "outbox", "alice")
    report = outbox_gateway.wait_state(message_id)
    assert report["state"] == "delivered", report
    content, sidecar = delivered_file(outbox_gateway, report)
    assert content == text.encode()
    assert report["platform_ids"] == [f"alice/{message_id}.txt"]
    assert sidecar["datatype"] == "text" and sidecar["id"] == message_id and sidecar["serv"] == "outbox"
    assert sidecar["caption"] is None and sidecar["time"].endswith("Z")


@pytest.mark.parametrize("via", VIA)
def test_every_datatype_is_written_byte_identical_with_caption_and_filename(outbox_gateway, tmp_path, via):
    sent = send_every(outbox_gateway, tmp_path, via, "outbox", {datatype: f"{via}-{datatype}" for datatype, *_ in SAMPLES})
    for item in sent.values():
        report, message_id = item.report, item.report["id"]
        assert report["state"] == "delivered", (item.datatype, report)
        stored, sidecar = delivered_file(outbox_gateway, report)
        assert stored == item.content and sidecar["datatype"] == item.datatype and sidecar["caption"] == item.caption
        if item.datatype == "text":
            assert report["platform_ids"] == [f"{item.dest}/{message_id}.txt"]
        else:
            assert sidecar["filename"] == item.upload_name and report["platform_ids"] == [f"{item.dest}/{message_id}-{item.upload_name}"]


def test_dest_must_be_a_safe_folder_name(outbox_gateway):
    data_id = outbox_gateway.upload_id(b"hola")
    for dest in ("../escape", ".hidden", "a/b", "x" * 65, "a\\b"):
        response = outbox_gateway.msg(id=data_id, serv="outbox", dest=dest, type="text")
        assert response.status_code == 400, (dest, response.text)
        assert "folder name" in response.text
    assert not (outbox_gateway.home.parent / "escape").exists()


def test_an_unwritable_outbox_is_retried_and_then_delivered(outbox_gateway):
    blocker = outbox_gateway.home / "outbox" / "carol"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the folder should be")
    message_id = outbox_gateway.send(b"after the disk is fixed", "outbox", "carol")
    report, _ = wait_attempted(outbox_gateway, message_id)
    assert report["state"] == "queued" and report["attempts"] >= 1 and "could not write" in report["last_error"], report
    blocker.unlink()
    report = outbox_gateway.wait_state(message_id)
    assert report["state"] == "delivered"
    assert delivered_file(outbox_gateway, report)[0] == b"after the disk is fixed"
