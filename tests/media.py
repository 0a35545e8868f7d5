"""Tiny media files for the datatype tests, built in code (nothing is downloaded).

Each builder returns a few hundred bytes to a few KB that real decoders and
content sniffers accept as that format:

- ``jpeg()``: a baseline JPEG, 8x8 grey (one DC and one AC Huffman code);
- ``png()``: an 8-bit RGB PNG;
- ``pdf()``: a one-page PDF with a correct cross-reference table;
- ``mp3()``: an ID3v2 tag and MPEG-1 Layer III frames of silence;
- ``mp4(brand)``: an ISO BMFF file (``ftyp``, ``moov``/``mvhd``, ``mdat``); the
  brand makes it video (``isom``), M4A audio (``M4A ``) or 3GPP (``3gp4``). It
  has no decodable track: the sniffers and the emulators only read the
  container, which is what these tests exercise;
- ``ogg_opus()`` / ``ogg_vorbis()``: Ogg streams (pages with correct CRCs)
  whose first packet is an ``OpusHead`` / a Vorbis identification header;
- ``docx()``: an Office Open XML ZIP with ``word/document.xml``.

``pad(content, size)`` grows a file to an exact size without changing its kind
(zero bytes appended), for the size-limit tests.

Decodable audio, for the conversion tests, is made by the real ffmpeg (the
tests that use it ``require_tool`` it): ``tone(fmt, seconds, channels)`` is a
440 Hz sine in any container ffmpeg writes (``wav``, ``mp3``, ``flac``, ...),
and ``probe(data)`` reads codec, channels and duration back with ffprobe.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import tempfile
import zipfile
import zlib
from pathlib import Path

__all__ = ["jpeg", "png", "pdf", "mp3", "mp4", "ogg_opus", "ogg_vorbis", "docx", "pad", "tone", "probe"]


def jpeg() -> bytes:
    def segment(marker: int, payload: bytes) -> bytes:
        return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload

    app0 = segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    dqt = segment(0xDB, b"\x00" + b"\x01" * 64)
    sof0 = segment(0xC0, b"\x08\x00\x08\x00\x08\x01\x01\x11\x00")  # 8-bit, 8x8, one component
    # One code of length 1 in each table: DC category 0, AC end-of-block.
    dht = segment(0xC4, b"\x00" + b"\x01" + b"\x00" * 15 + b"\x00") + segment(0xC4, b"\x10" + b"\x01" + b"\x00" * 15 + b"\x00")
    sos = segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
    scan = bytes([0b00111111])  # DC diff 0, EOB, padded with ones
    return b"\xff\xd8" + app0 + dqt + sof0 + dht + sos + scan + b"\xff\xd9"


def png(width: int = 4, height: int = 4) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    rows = b"".join(b"\x00" + bytes([200, 30, 30]) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def pdf(text: str = "multimsg") -> bytes:
    stream = f"BT /F1 24 Tf 20 40 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 100] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def mp3(frames: int = 4) -> bytes:
    id3 = b"ID3\x04\x00\x00\x00\x00\x00\x00"  # ID3v2.4 tag, no frames
    # MPEG-1 Layer III, 128 kbit/s, 44.1 kHz, joint stereo: 417-byte frames; zero side info = silence.
    frame = b"\xff\xfb\x90\x64" + b"\x00" * (144 * 128000 // 44100 - 4)
    return id3 + frame * frames


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload) + 8) + kind + payload


def mp4(brand: bytes = b"isom") -> bytes:
    compatible = {b"isom": b"isomiso2avc1mp41", b"M4A ": b"M4A mp42isom", b"3gp4": b"3gp4isom"}[brand]
    ftyp = _box(b"ftyp", brand + struct.pack(">I", 0x200) + compatible)
    matrix = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    mvhd = _box(b"mvhd", b"\x00\x00\x00\x00" + struct.pack(">IIII", 0, 0, 1000, 0) + struct.pack(">IH", 0x10000, 0x100)
                + b"\x00" * 10 + matrix + b"\x00" * 24 + struct.pack(">I", 2))
    return ftyp + _box(b"moov", mvhd) + _box(b"mdat", b"\x00" * 64)


def _ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def _ogg_page(packet: bytes, sequence: int, flags: int, granule: int, serial: int = 0x6D6D7367) -> bytes:
    lacing = bytes([255] * (len(packet) // 255) + [len(packet) % 255])
    header = b"OggS\x00" + bytes([flags]) + struct.pack("<qIII", granule, serial, sequence, 0) + bytes([len(lacing)]) + lacing
    page = header + packet
    crc = _ogg_crc(page)
    return page[:22] + struct.pack("<I", crc) + page[26:]


def ogg_opus(packets: int = 5) -> bytes:
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, 1, 312, 48000, 0, 0)  # version 1, mono
    vendor = b"multimsg tests"
    tags = b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", 0)
    out = _ogg_page(head, 0, 0x02, 0) + _ogg_page(tags, 1, 0x00, 0)
    silence = b"\xf8\xff\xfe"  # one 20 ms CELT frame of silence
    for n in range(packets):
        out += _ogg_page(silence, 2 + n, 0x04 if n == packets - 1 else 0x00, 312 + 960 * (n + 1))
    return out


def ogg_vorbis() -> bytes:
    ident = b"\x01vorbis" + struct.pack("<IBIiiiBB", 0, 1, 44100, 0, 128000, 0, 0xB8, 1)
    return _ogg_page(ident, 0, 0x02, 0) + _ogg_page(b"\x03vorbis" + b"\x00" * 8, 1, 0x04, 0)


def docx() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
                         '<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>')
        archive.writestr("_rels/.rels", '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"/>')
        archive.writestr("word/document.xml", '<?xml version="1.0"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"/>')
    return buffer.getvalue()


def pad(content: bytes, size: int) -> bytes:
    """``content`` followed by zero bytes up to exactly ``size`` bytes."""
    assert size >= len(content)
    return content + b"\x00" * (size - len(content))


def tone(fmt: str = "wav", seconds: float = 3.0, channels: int = 2) -> bytes:
    """A 440 Hz sine of ``seconds`` in container ``fmt`` (ffmpeg's muxer name), made by ffmpeg."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"tone.{fmt}"
        subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                        f"sine=frequency=440:duration={seconds}", "-ac", str(channels), "-f", fmt, str(path)],
                       check=True, timeout=60)
        return path.read_bytes()


def probe(data: bytes) -> dict:
    """ffprobe's reading of ``data``: ``codec``, ``channels`` of its first audio stream, ``duration`` in seconds."""
    with tempfile.NamedTemporaryFile() as file:
        file.write(data)
        file.flush()
        result = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
                                 "stream=codec_name,channels:format=duration", "-of", "json", file.name],
                                check=True, capture_output=True, text=True, timeout=60)
    found = json.loads(result.stdout)
    stream = found["streams"][0]
    return {"codec": stream["codec_name"], "channels": stream["channels"], "duration": float(found["format"]["duration"])}
