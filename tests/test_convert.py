"""Voice and audio conversion (multimsg/convert.py), end to end through a real runner.

Inputs are made by the real ffmpeg in the test (``media.tone``); what the
WhatsApp and Telegram emulators receive is read back with a real decoder
(``media.probe``: ffprobe): OGG with an ``OpusHead``, mono, duration within
5% of the input. The conversion runs in the runner's drain; the CLI and the
Python client ask for it with ``--convert`` / ``convert=True``.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import wave

import pytest

from multimsg import Client
from multimsg.services.sniff import OGG_OPUS, opus_channels, sniff_bytes
from tests import media
from tests.conftest import require_tool
from tests.gatewayproc import ROOT, Gateway
from tests.redis_support import redis_server, redis_url  # noqa: F401  (fixtures)
from tests.services_support import content_env, module_gateway, new_chat, new_number, queue, sha256

KEEP = 60_000_000  # the emulators keep uploaded files up to this size, to be decoded here
SECONDS = 3.0


@pytest.fixture(scope="module", autouse=True)
def tools():
    require_tool("ffmpeg", "audio conversion and the test inputs")
    require_tool("ffprobe", "reading the converted files back")


@pytest.fixture(scope="module")
def runner(tmp_path_factory, telegram_server, whatsapp_server, server_keys):
    """A runner with ffmpeg, the built-in instances and ``tgauto`` (a Telegram instance converting by default)."""
    yield from module_gateway(tmp_path_factory, server_keys, {
        **content_env(telegram_server, whatsapp_server),
        "MULTIMSG_READ_TIMEOUT": "3",
        "MULTIMSG_TGAUTO_KIND": "telegram",
        "MULTIMSG_TGAUTO_TOKEN": telegram_server.token,
        "MULTIMSG_TGAUTO_API_URL": telegram_server.url,
        "MULTIMSG_TGAUTO_DEST_INTERVAL": "0",
        "MULTIMSG_TGAUTO_CONVERT": "1",
        "MULTIMSG_CONVERT_CPU": "1",  # plenty for a few seconds of audio; the CPU-bound test needs more
    })


@pytest.fixture
def platforms(telegram, whatsapp):
    telegram.configure(keep_files=KEEP)
    whatsapp.configure(keep_files=KEEP)
    return telegram, whatsapp


def delivered(runner: Gateway, message_id: str) -> dict:
    report = runner.wait_state(message_id, timeout=60)
    assert report["state"] == "delivered", report
    return report


def assert_voice_note(data: bytes, seconds: float = SECONDS) -> None:
    """OGG/Opus with an OpusHead, one channel, as long as the input (within 5%), read by ffprobe."""
    assert data[:4] == b"OggS" and b"OpusHead" in data[:512]
    assert sniff_bytes(data[:8192]) == OGG_OPUS and opus_channels(data[:8192]) == 1
    found = media.probe(data)
    assert (found["codec"], found["channels"]) == ("opus", 1), found
    assert abs(found["duration"] - seconds) <= 0.05 * seconds, found


def uploaded(emulator, record: dict) -> tuple[dict, bytes]:
    [upload] = record["files"].values()
    return upload, emulator.file(upload["sha256"])


def test_voice_wav_reaches_whatsapp_as_ogg_opus_mono(runner, platforms):
    _, whatsapp = platforms
    source = media.tone("wav", SECONDS, channels=2)
    message_id = queue(runner, source, "wpp1", new_number(), "voice", upload_name="nota.wav", convert="1")
    delivered(runner, message_id)

    [media_upload] = whatsapp.wait_for(lambda r: r["method"] == "media")
    upload, data = uploaded(whatsapp, media_upload)
    assert media_upload["fields"]["type"] == "audio/ogg"  # the MIME type follows the converted content
    assert upload["filename"] == "nota.ogg"  # and so does the extension
    assert upload["sha256"] != sha256(source)
    assert_voice_note(data)
    [message] = whatsapp.wait_for(lambda r: r["method"] == "messages" and r["status"] == 200)
    assert message["json"]["type"] == "audio" and message["json"]["audio"]["voice"] is True


def test_m4a_with_its_index_last_becomes_a_voice_note(runner, platforms):
    _, whatsapp = platforms
    source = media.tone("ipod", 20.0, channels=2)  # M4A as phones record it: the moov box after 300 KB of audio
    assert source.index(b"moov") > source.index(b"mdat") > 0 and sniff_bytes(source[:8192]) == "audio/mp4"
    delivered(runner, queue(runner, source, "wpp1", new_number(), "voice", upload_name="memo.m4a", convert="1"))
    [media_upload] = whatsapp.wait_for(lambda r: r["method"] == "media")
    upload, data = uploaded(whatsapp, media_upload)
    assert upload["filename"] == "memo.ogg"
    assert_voice_note(data, seconds=20.0)


@pytest.mark.parametrize("backend", ["embedded", "redis"])
def test_conversion_reads_the_upload_from_either_backend(request, make_gateway, platforms, backend):
    telegram, _ = platforms
    env = {"MULTIMSG_BACKEND": request.getfixturevalue("redis_url")} if backend == "redis" else {}
    gateway = make_gateway(backend, env=env)
    delivered(gateway, queue(gateway, media.tone("wav", SECONDS), "telegram", new_chat(), "voice", convert="1"))
    [record] = telegram.wait_for(lambda r: r["method"] == "sendVoice" and r["status"] == 200)
    assert_voice_note(uploaded(telegram, record)[1])


def test_voice_mp3_reaches_telegram_as_ogg_opus_mono_via_json_body(runner, platforms):
    telegram, _ = platforms
    data_id = runner.upload_id(media.tone("mp3", SECONDS, channels=2), filename="memo.mp3")
    response = runner.msg(json_body=True, id=data_id, serv="telegram", dest=new_chat(), type="voice", convert=1)
    assert response.status_code == 200, response.text
    delivered(runner, response.text)

    [record] = telegram.wait_for(lambda r: r["method"] == "sendVoice" and r["status"] == 200)
    upload, data = uploaded(telegram, record)
    assert upload["filename"] == "memo.ogg" and upload["content_type"] == "audio/ogg"
    assert_voice_note(data)


@pytest.mark.parametrize("serv, method", [("telegram", "sendAudio"), ("wpp1", "media")])
def test_audio_in_a_refused_codec_becomes_mp3(runner, platforms, serv, method):
    telegram, whatsapp = platforms
    emulator = telegram if serv == "telegram" else whatsapp
    dest = new_chat() if serv == "telegram" else new_number()
    source = media.tone("flac", SECONDS, channels=2)  # FLAC: neither platform takes it as audio
    refused = runner.msg(id=runner.upload_id(source), serv=serv, dest=dest, type="audio")
    assert refused.status_code == 400 and "must be" in refused.text, refused.text  # without convert
    delivered(runner, queue(runner, source, serv, dest, "audio", upload_name="song.flac", convert="true"))

    [record] = emulator.wait_for(lambda r: r["method"] == method and r["status"] == 200)
    upload, data = uploaded(emulator, record)
    assert upload["filename"] == "song.mp3" and upload["content_type"] == "audio/mpeg"
    found = media.probe(data)
    assert (found["codec"], found["channels"]) == ("mp3", 2), found
    assert abs(found["duration"] - SECONDS) <= 0.05 * SECONDS, found


def test_audio_the_platform_takes_is_sent_as_uploaded(runner, platforms):
    telegram, _ = platforms
    source = media.tone("mp3", SECONDS)
    delivered(runner, queue(runner, source, "telegram", new_chat(), "audio", upload_name="tune.mp3", convert="1"))
    [record] = telegram.wait_for(lambda r: r["method"] == "sendAudio" and r["status"] == 200)
    upload, data = uploaded(telegram, record)
    assert data == source and upload["filename"] == "tune.mp3"


def test_stereo_opus_voice_is_made_mono(runner, platforms):
    telegram, _ = platforms
    with_opus = media.tone("opus", SECONDS, channels=2)  # OGG/Opus already, but stereo
    assert opus_channels(with_opus) == 2
    delivered(runner, queue(runner, with_opus, "telegram", new_chat(), "voice", convert="1"))
    [record] = telegram.wait_for(lambda r: r["method"] == "sendVoice" and r["status"] == 200)
    assert_voice_note(uploaded(telegram, record)[1])


def test_instance_default_converts_and_convert_0_opts_out(runner, platforms):
    telegram, _ = platforms
    source = media.tone("wav", SECONDS, channels=1)
    delivered(runner, queue(runner, source, "tgauto", new_chat(), "voice", upload_name="hola.wav"))
    [record] = telegram.wait_for(lambda r: r["method"] == "sendVoice" and r["status"] == 200)
    assert_voice_note(uploaded(telegram, record)[1])

    refused = runner.msg(id=runner.upload_id(source), serv="tgauto", dest=new_chat(), type="voice", convert="0")
    assert refused.status_code == 400 and "OGG/Opus" in refused.text
    plain = runner.msg(id=runner.upload_id(source), serv="telegram", dest=new_chat(), type="voice")
    assert plain.status_code == 400 and "OGG/Opus" in plain.text  # the built-in instance does not convert by default


@pytest.mark.parametrize("content, fields, reason", [
    (media.pdf(), {"type": "voice", "convert": "1"}, "PDF, not audio that can be converted"),
    (media.png(), {"type": "image", "convert": "1"}, "'convert' goes with types voice and audio only"),
    (media.ogg_opus(), {"type": "voice", "convert": "maybe"}, "'convert' must be 1 or 0"),
])
def test_convert_that_cannot_apply_is_a_400_with_the_reason(runner, content, fields, reason):
    response = runner.msg(id=runner.upload_id(content), serv="telegram", dest=new_chat(), **fields)
    assert response.status_code == 400 and reason in response.text, response.text


@pytest.mark.parametrize("content, reason", [
    (media.mp4(b"M4A "), "it has no audio track"),  # an M4A whose only box is an empty mdat
    (b"fLaC" + bytes(range(256)) * 40, "ffmpeg:"),  # a FLAC signature and no stream behind it
])
def test_corrupt_audio_fails_with_the_reason_and_is_not_retried(runner, platforms, content, reason):
    telegram, _ = platforms
    message_id = queue(runner, content, "telegram", new_chat(), "voice", convert="1")
    report = runner.wait_state(message_id, timeout=60)
    assert report["state"] == "failed" and report["attempts"] == 1, report
    assert report["last_error"].startswith("could not convert the voice") and reason in report["last_error"], report
    assert telegram.received() == []  # nothing reached the platform


def test_a_conversion_over_its_cpu_time_is_stopped_and_fails(runner, platforms, tmp_path):
    telegram, _ = platforms
    path = tmp_path / "noise.wav"
    with wave.open(str(path), "wb") as sound:  # white noise: the costliest to encode; ~2.5 s of CPU for 240 s
        sound.setnchannels(1), sound.setsampwidth(2), sound.setframerate(48000)
        sound.writeframes(os.urandom(48000 * 2 * 240))
    message_id = queue(runner, path.read_bytes(), "telegram", new_chat(), "voice", convert="1")
    report = runner.wait_state(message_id, timeout=120)
    assert report["state"] == "failed", report
    assert "more than 1 s of CPU time" in report["last_error"], report
    assert telegram.received() == []


def test_health_reports_ffmpeg(runner):
    report = runner.http.get(runner.url + "/health", timeout=10).json()
    assert report["ffmpeg"]["available"] is True
    assert report["ffmpeg"]["version"] and {"opus", "mp3"} <= set(report["ffmpeg"]["targets"])


def test_without_ffmpeg_convert_is_a_400_and_health_says_so(make_gateway, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    gateway = make_gateway("no-ffmpeg", env={"PATH": str(empty)})
    report = gateway.http.get(gateway.url + "/health", timeout=10).json()
    assert report["ffmpeg"] == {"available": False, "version": None, "targets": []}

    wav = runner_free_wav()
    response = gateway.msg(id=gateway.upload_id(wav), serv="telegram", dest=new_chat(), type="voice", convert="1")
    assert response.status_code == 400 and "ffmpeg is not installed" in response.text, response.text
    ready = gateway.msg(id=gateway.upload_id(media.ogg_opus()), serv="telegram", dest=new_chat(), type="voice")
    assert ready.status_code == 200, ready.text  # what needs no conversion still goes


def runner_free_wav() -> bytes:
    """A short WAV built without ffmpeg (for the runner that has none)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as sound:
        sound.setnchannels(1), sound.setsampwidth(2), sound.setframerate(8000)
        sound.writeframes(b"\x00\x10" * 8000)
    return buffer.getvalue()


def test_cli_send_convert_delivers_a_voice_note(runner, platforms, tmp_path):
    telegram, _ = platforms
    path = tmp_path / "saludo.wav"
    path.write_bytes(media.tone("wav", SECONDS))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MULTIMSG_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    result = subprocess.run([sys.executable, "-m", "multimsg", "send", str(path), "--serv", "telegram", "--dest", new_chat(),
                             "--type", "voice", "--convert", "--server", runner.url],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    delivered(runner, result.stdout.strip())
    [record] = telegram.wait_for(lambda r: r["method"] == "sendVoice" and r["status"] == 200)
    upload, data = uploaded(telegram, record)
    assert upload["filename"] == "saludo.ogg"
    assert_voice_note(data)


def test_python_client_send_convert(runner, platforms):
    _, whatsapp = platforms
    with Client(runner.url) as client:
        message_id = client.send(media.tone("mp3", SECONDS), "wpp1", new_number(), "voice", filename="aviso.mp3", convert=True)
    delivered(runner, message_id)  # this runner drains when asked
    [media_upload] = whatsapp.wait_for(lambda r: r["method"] == "media")
    assert_voice_note(uploaded(whatsapp, media_upload)[1])


# -- the child's bounds, in-process (multimsg.convert.transcode) ---------------------------
def test_a_playlist_on_stdin_cannot_make_ffmpeg_read_a_local_file(tmp_path):
    from multimsg.content import BytesContent
    from multimsg.convert import TARGETS, ConversionError, transcode

    segment = tmp_path / "secret.ts"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "sine=duration=2", "-c:a", "aac",
                    "-f", "mpegts", str(segment)], check=True, timeout=60)
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:2.0,\nfile:{segment}\n#EXT-X-ENDLIST\n".encode()
    # The control: an ffmpeg that allows the file protocol reads the segment the playlist names.
    control = subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-protocol_whitelist", "pipe,file",
                              "-i", "pipe:0", "-f", "mp3", "pipe:1"], input=playlist, capture_output=True, timeout=60)
    assert control.returncode == 0 and len(control.stdout) > 1000
    with pytest.raises(ConversionError) as refused:
        transcode(BytesContent(playlist), TARGETS["opus"], max_output=10_000_000)
    assert refused.value.outcome.kind == "failed" and "ffmpeg:" in refused.value.reason


def test_output_over_the_platforms_limit_stops_the_conversion():
    from multimsg.content import BytesContent
    from multimsg.convert import TARGETS, ConversionError, transcode

    source = BytesContent(media.tone("wav", SECONDS))
    converted = transcode(source, TARGETS["opus"], max_output=10_000_000)
    assert converted.size > 2000 and converted.open().read() == converted.open().read()  # each open() reads from the start
    converted.close()
    with pytest.raises(ConversionError, match="larger than the platform takes"):
        transcode(source, TARGETS["opus"], max_output=2000)
