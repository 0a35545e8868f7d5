"""Content sniffing: what a stored file is, judged by its bytes, never by its name.

``sniff(path)`` returns the file's MIME type, or None when nothing matches.
The magic numbers come from the ``filetype`` library (pure Python, no
dependencies, one best match with its MIME type; it also tells Word, Excel
and PowerPoint files apart and M4A audio from MP4 video). Two refinements
are ours:

- Ogg: ``filetype`` says ``audio/ogg`` for every Ogg stream. A voice note must
  be Opus, so the first Ogg page is checked for the ``OpusHead`` packet
  (RFC 7845 §5.1) and such files are reported as ``audio/ogg; codecs=opus``;
  Vorbis and other Ogg streams stay plain ``audio/ogg``.
- Plain text: no magic number. A file that ``filetype`` does not recognise
  and whose head is UTF-8 without control characters is ``text/plain``.
"""

from __future__ import annotations

import filetype

from ..content import HEAD, Content

__all__ = ["sniff", "sniff_bytes", "describe", "extension", "opus_channels", "OGG_OPUS", "OCTET_STREAM"]

OGG_OPUS = "audio/ogg; codecs=opus"
OCTET_STREAM = "application/octet-stream"

_LABELS = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/webp": "WebP",
    "image/gif": "GIF",
    "audio/mpeg": "MP3",
    "audio/mp4": "M4A",
    "audio/aac": "AAC",
    "audio/amr": "AMR",
    "audio/ogg": "Ogg (not Opus)",
    OGG_OPUS: "OGG/Opus",
    "video/mp4": "MP4",
    "video/3gpp": "3GPP",
    "application/pdf": "PDF",
    "text/plain": "plain text",
    "application/msword": "Word (.doc)",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "Word (.docx)",
    "application/vnd.ms-excel": "Excel (.xls)",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "Excel (.xlsx)",
    "application/vnd.ms-powerpoint": "PowerPoint (.ppt)",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": "PowerPoint (.pptx)",
}

# Control characters that do not occur in text files (tab, LF, FF, CR do).
_BINARY_CONTROLS = bytes(set(range(32)) - {9, 10, 12, 13}) + b"\x7f"


def sniff(content: Content) -> str | None:
    """The MIME type of ``content`` by its first bytes; None if unknown."""
    return sniff_bytes(content.head(HEAD))


def sniff_bytes(head: bytes) -> str | None:
    """Like ``sniff``, for the first bytes of a file (``HEAD`` of them suffice)."""
    kind = filetype.guess(head)
    if kind is not None:
        if kind.mime == "audio/ogg" and _is_ogg_opus(head):
            return OGG_OPUS
        return kind.mime
    if head and _is_text(head):
        return "text/plain"
    return None


def describe(mime: str | None) -> str:
    """A short human name for a MIME type, for error messages."""
    if mime is None:
        return "of an unknown kind"
    return _LABELS.get(mime, mime)


def extension(mime: str | None) -> str:
    """The usual file extension for a MIME type ("bin" if unknown)."""
    if mime == OGG_OPUS:
        return "ogg"
    kind = filetype.get_type(mime=mime) if mime else None
    return kind.extension if kind is not None else ("txt" if mime == "text/plain" else "bin")


def opus_channels(head: bytes) -> int | None:
    """The channel count an OGG/Opus file's ``OpusHead`` declares (RFC 7845 §5.1); None if it is not OGG/Opus."""
    start = _opus_head(head)
    return None if start is None or len(head) <= start + 9 else head[start + 9]


def _is_ogg_opus(head: bytes) -> bool:
    return _opus_head(head) is not None


def _opus_head(head: bytes) -> int | None:
    # First page: "OggS", version 0, beginning-of-stream flag; the first packet
    # starts right after the segment table (RFC 3533 §6) and is "OpusHead".
    if len(head) < 27 or head[:4] != b"OggS" or head[4] != 0 or not head[5] & 0x02:
        return None
    segments = head[26]
    start = 27 + segments
    return start if head[start:start + 8] == b"OpusHead" else None


def _is_text(head: bytes) -> bool:
    if len(head.translate(None, _BINARY_CONTROLS)) != len(head):
        return False
    # The head may end inside a multi-byte character: allow up to 3 dangling bytes.
    for trim in range(4):
        try:
            head[: len(head) - trim].decode("utf-8")
            return True
        except UnicodeDecodeError as exc:
            if exc.end < len(head) - trim:  # a bad byte before the end: not a cut-off character
                return False
    return False
