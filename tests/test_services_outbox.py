"""The local outbox: every datatype lands as a file plus a JSON sidecar, through the HTTP API and the CLI."""

from __future__ import annotations

import json

import pytest

from tests.native_support import FILES, cli_send, start_gateway, wait_attempted


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


@pytest.mark.parametrize("datatype, build, upload_name, mime", FILES)
def test_every_file_datatype_is_written_byte_identical_with_caption_and_filename(outbox_gateway, datatype, build, upload_name, mime):
    content = build()
    message_id = outbox_gateway.send(content, "outbox", "bob", datatype, filename=upload_name, caption=f"{datatype} ✓")
    report = outbox_gateway.wait_state(message_id)
    assert report["state"] == "delivered", report
    stored, sidecar = delivered_file(outbox_gateway, report)
    assert stored == content
    assert sidecar["datatype"] == datatype and sidecar["caption"] == f"{datatype} ✓" and sidecar["filename"] == upload_name
    assert report["platform_ids"] == [f"bob/{message_id}-{upload_name}"]


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


def test_the_cli_sends_to_the_outbox(outbox_gateway, tmp_path):
    result = cli_send(outbox_gateway, tmp_path, b"%PDF-1.4 from the command line", "outbox", "dave", name="notes.pdf")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["state"] == "delivered"
    content, sidecar = delivered_file(outbox_gateway, report)
    assert content == b"%PDF-1.4 from the command line" and sidecar["filename"] == "notes.pdf"
