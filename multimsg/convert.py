"""Audio conversion: voice and audio a platform will not take, transcoded by ffmpeg in the drain.

Owns the whole concept: whether a message is converted and to what (``check``,
at ``/msg``: the ``convert`` field, else the instance's ``MULTIMSG_<SERV>_CONVERT``),
the transcoding (``for_send``, in the drain, before each attempt), how ffmpeg
is found (``detect()`` at start, in the background; ``ffmpeg()``: once per
process, reported by ``/health``) and the bounds of the child process.

- ``voice`` becomes OGG/Opus mono (what WhatsApp and Telegram show as a voice
  note) unless it already is;
- ``audio`` becomes MP3, else AAC (ADTS), when the service refuses its format.

The decision is taken at ``/msg`` (the content is sniffed there) and kept in
the message's options (``convert``: the target's name); the drain converts
the stored upload again at every attempt, so nothing converted is stored.

The child: ``/bin/sh`` sets its limits (core 0, CPU ``MULTIMSG_CONVERT_CPU``
seconds soft and 5 more hard, address space ``MULTIMSG_CONVERT_MEMORY``, file
size 0, or the input's size when ffmpeg must cache an MP4 to seek in it) and
execs ffmpeg with the input on stdin and the output on stdout, no file
argument, ``-nostdin``, the protocols limited to ``pipe`` (and ``cache``,
for MP4) and the demuxers to audio containers, in an empty temporary working
directory, with an empty environment. The output is bounded by the
platform's size limit for the datatype, the run by a wall-clock deadline.
It is not a sandbox: ffmpeg runs as the gateway's user, without namespaces
or seccomp (see the README).
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import PurePath
from typing import BinaryIO

from .config import settings
from .content import Content
from .errors import InvalidInput
from .model import Message
from .services.base import Outcome, ServiceBase
from .services.datatypes import Datatypes
from .services.sniff import OGG_OPUS, describe, opus_channels, sniff, sniff_bytes

__all__ = ["CONVERT", "Target", "TARGETS", "Ffmpeg", "ffmpeg", "detect", "status", "check", "for_send", "release",
           "transcode", "ConversionError"]

log = logging.getLogger("multimsg.convert")

CONVERT = "convert"  # the /msg field, and the message option holding the target's name


@dataclass(frozen=True)
class Target:
    """What a conversion produces: its MIME type (as ``sniff`` names it), extension, encoder, ffmpeg output options."""

    name: str
    mime: str
    extension: str
    encoder: str
    options: tuple[str, ...]


TARGETS = {target.name: target for target in (
    Target("opus", OGG_OPUS, "ogg", "libopus",
           ("-ac", "1", "-ar", "48000", "-c:a", "libopus", "-b:a", "32k", "-application", "voip", "-f", "ogg")),
    Target("mp3", "audio/mpeg", "mp3", "libmp3lame", ("-c:a", "libmp3lame", "-b:a", "128k", "-write_xing", "0", "-f", "mp3")),
    Target("aac", "audio/aac", "aac", "aac", ("-c:a", "aac", "-b:a", "128k", "-f", "adts")),
)}
# datatype -> the targets it may become, preferred first: the first one the service takes is used
CHOICES = {Datatypes.VOICE: ("opus",), Datatypes.AUDIO: ("mp3", "aac")}

# What ffmpeg is given to read: audio, or the audio track of a video container (a browser's WebM recording).
INPUT_VIDEO = frozenset({"video/mp4", "video/webm", "video/x-matroska", "video/3gpp", "video/quicktime"})
SEEKING = frozenset({"audio/mp4", "video/mp4", "video/3gpp", "video/quicktime"})  # MP4: the index may come last
DEMUXERS = "wav,w64,mp3,ogg,flac,mov,matroska,aac,amr,amrnb,amrwb,aiff,caf,au,wv,ape,tta,ac3,eac3,asf"
HARD_CPU_MARGIN = 5  # seconds past the soft limit (SIGXCPU) before SIGKILL
LIMITS = 'ulimit -c 0 && ulimit -S -t "$1" && ulimit -H -t "$2" && ulimit -f "$3" && ulimit -v "$4" && shift 4 && exec "$@"'
CHUNK = 1 << 16
TRUE, FALSE = ("1", "true"), ("0", "false")


class ConversionError(Exception):
    """A conversion in the drain did not produce a file to send; ``outcome`` says what becomes of the message."""

    def __init__(self, reason: str, retry: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.outcome = Outcome.retry(reason) if retry else Outcome.failed(reason)


# -- ffmpeg ------------------------------------------------------------------------
@dataclass(frozen=True)
class Ffmpeg:
    path: str
    version: str
    encoders: frozenset[str]


def ffmpeg() -> Ffmpeg | None:
    """This process's ffmpeg (``MULTIMSG_FFMPEG``): its path, version and encoders; None when there is none."""
    with _probing:
        return _probe()


def detect() -> None:
    """Look for ffmpeg now, in the background: a start-up (a cron's drain, a cold start) does not wait for it."""
    threading.Thread(target=ffmpeg, name="multimsg-ffmpeg-probe", daemon=True).start()


_probing = threading.Lock()  # one probe per process; callers meanwhile wait for its answer


@lru_cache(maxsize=1)
def _probe() -> Ffmpeg | None:
    path = shutil.which(settings().ffmpeg)
    if path is None:
        log.info("ffmpeg not found (%s): /msg convert=1 answers 400", settings().ffmpeg)
        return None
    try:
        version = _run(path, "-version").split("\n", 1)[0]
        listing = _run(path, "-encoders")
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("ffmpeg at %s does not run (%s): /msg convert=1 answers 400", path, exc)
        return None
    match = re.match(r"ffmpeg version (\S+)", version)
    encoders = frozenset(re.findall(r"^ [A-Z.]{6} (\S+)", listing, re.MULTILINE))
    found = Ffmpeg(path, match.group(1) if match else "unknown", encoders)
    log.info("ffmpeg %s at %s: audio conversion available (%s)", found.version, path,
             ", ".join(t.name for t in TARGETS.values() if t.encoder in encoders) or "no usable encoder")
    return found


def _run(path: str, option: str) -> str:
    return subprocess.run([path, "-hide_banner", option], capture_output=True, text=True, timeout=20, check=True,
                          stdin=subprocess.DEVNULL).stdout


def status() -> dict:
    """What ``/health`` says of conversion."""
    tool = ffmpeg()
    return {"available": tool is not None, "version": tool.version if tool else None,
            "targets": sorted(t.name for t in TARGETS.values() if tool and t.encoder in tool.encoders)}


# -- at /msg -------------------------------------------------------------------------
def check(service: ServiceBase, datatype: str, content: Content, options: dict, asked: str | None) -> dict:
    """The service's ``check_content``, unless the message is to be converted: then its options with ``convert``.

    ``asked`` is the ``convert`` field (None: the instance's default). InvalidInput
    when conversion is asked explicitly and cannot be done (no ffmpeg, not audio,
    a datatype other than voice and audio).
    """
    explicit = asked is not None
    wanted = service.config.convert if asked is None else _flag(asked)
    target = _target(service, datatype, content, explicit) if wanted else None
    if target is None:
        return service.check_content(datatype, content, options)
    checked = service.check_options(datatype, options)
    if content.size == 0:
        raise InvalidInput("the upload is empty")
    return {**checked, CONVERT: target.name}


def _flag(value: str) -> bool:
    value = value.strip()
    if value in TRUE or value in FALSE:
        return value in TRUE
    raise InvalidInput("'convert' must be 1 or 0 (or true or false)")


def _target(service: ServiceBase, datatype: str, content: Content, explicit: bool) -> Target | None:
    """The target ``content`` must become for ``service``; None when it goes as it is."""
    if datatype not in CHOICES:
        if explicit:
            raise InvalidInput("'convert' goes with types voice and audio only")
        return None
    tool = ffmpeg()
    if tool is None:
        if explicit:
            raise InvalidInput("convert=1: this server cannot convert audio (ffmpeg is not installed)")
        return None  # the instance's default: the content is checked as it is
    allowed = service.formats.get(datatype)
    head = content.head()
    mime = sniff_bytes(head)
    mono = datatype != Datatypes.VOICE or mime != OGG_OPUS or opus_channels(head) == 1  # a voice note in OGG/Opus is mono
    if allowed is None or (mime in allowed and mono):
        return None
    if mime is None or not (mime.startswith("audio/") or mime in INPUT_VIDEO):
        raise InvalidInput(f"convert: this file is {describe(mime)}, not audio that can be converted")
    for name in CHOICES[datatype]:
        target = TARGETS[name]
        if target.mime in allowed and target.encoder in tool.encoders:
            return target
    raise InvalidInput(f"convert: {service.name} takes no {datatype} format this server can convert to")


# -- in the drain --------------------------------------------------------------------
def for_send(message: Message, content: Content, service: ServiceBase) -> tuple[Content, str | None]:
    """The content and file name to send: converted when the message asks for it, else its own.

    Raises ``ConversionError`` (its ``outcome``: failed, or retry when ffmpeg is gone).
    """
    name = message.options.get(CONVERT)
    if not name:
        return content, message.filename
    target = TARGETS.get(name)
    if target is None:
        raise ConversionError(f"unknown conversion {name!r}")
    converted = transcode(content, target, max_output=service.size_limit(message.type) or 100 * 1000 * 1000,
                          what=f"the {message.type}")
    stem = PurePath(message.filename or message.type).stem or message.type
    return converted, f"{stem}.{target.extension}"


def release(content: Content) -> None:
    """Free what ``for_send`` made (a converted file); nothing for the message's own content."""
    if isinstance(content, Converted):
        content.close()


class Converted(Content):
    """A conversion's output, in an anonymous temporary file (no name on disk; gone when closed)."""

    def __init__(self, file: BinaryIO, size: int):
        self.file = file
        self.size = size

    def open(self) -> BinaryIO:
        return io.BufferedReader(_PositionalReader(self.file.fileno()), CHUNK)

    def close(self) -> None:
        self.file.close()


class _PositionalReader(io.RawIOBase):
    """A stream of its own over a shared file descriptor (``os.pread``): each ``open()`` reads from the start."""

    def __init__(self, fd: int):
        super().__init__()
        self.fd = fd
        self.position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = os.pread(self.fd, len(buffer), self.position)
        buffer[:len(data)] = data
        self.position += len(data)
        return len(data)


def transcode(content: Content, target: Target, *, max_output: int, what: str = "the audio") -> Converted:
    """Run ffmpeg on ``content``: ``target``'s format, at most ``max_output`` bytes, within the CPU and memory bounds."""
    tool = ffmpeg()
    if tool is None:
        raise ConversionError("this server can no longer convert audio (ffmpeg is not installed)", retry=True)
    s = settings()
    mime = sniff(content)
    seeking = mime in SEEKING
    # cache: ffmpeg keeps what it read (an unlinked file in /tmp) and reads on to whatever it seeks to, however far
    source = ("-read_ahead_limit", "-1", "-i", "cache:pipe:0") if seeking else ("-i", "pipe:0")
    protocols = "cache,pipe" if seeking else "pipe"
    blocks = -(-content.size // 512) + 2048 if seeking else 0  # the cache holds the input (512-byte blocks)
    argv = ["/bin/sh", "-c", LIMITS, "sh", str(s.convert_cpu), str(s.convert_cpu + HARD_CPU_MARGIN), str(blocks),
            str(s.convert_memory * 1024), tool.path, "-hide_banner", "-nostdin", "-loglevel", "error", "-threads", "1",
            "-protocol_whitelist", protocols, "-format_whitelist", DEMUXERS, *source,
            "-map", "0:a:0", "-map_metadata", "-1", "-map_chapters", "-1", "-threads", "1", *target.options,
            "-protocol_whitelist", "pipe", "pipe:1"]
    output = tempfile.TemporaryFile(prefix="multimsg-converted-")
    try:
        size = _run_child(argv, content, output, max_output, s.convert_cpu, what)
        output.flush()
    except BaseException:
        output.close()
        raise
    return Converted(output, size)


def _run_child(argv: list[str], content: Content, output: BinaryIO, max_output: int, cpu: int, what: str) -> int:
    with tempfile.TemporaryDirectory(prefix="multimsg-convert-") as folder:
        child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 cwd=folder, env={}, close_fds=True, start_new_session=True)
        stopped: list[str] = []

        def stop(reason: str) -> None:
            stopped.append(reason)
            child.kill()

        errors = bytearray()
        feeder = threading.Thread(target=_feed, args=(content, child.stdin), daemon=True)
        reader = threading.Thread(target=_keep_tail, args=(child.stderr, errors), daemon=True)
        deadline = threading.Timer(cpu * 3 + 30, stop, args=(f"took longer than {cpu * 3 + 30} s",))
        for thread in (feeder, reader, deadline):
            thread.start()
        size = 0
        try:
            assert child.stdout is not None
            for chunk in iter(lambda: child.stdout.read(CHUNK), b""):  # type: ignore[union-attr]
                size += len(chunk)
                if size > max_output:
                    stop(f"the converted file is larger than the platform takes ({max_output} bytes)")
                    break
                output.write(chunk)
            child.stdout.close()
            code = child.wait()
        finally:
            deadline.cancel()
            if child.poll() is None:
                child.kill()
                child.wait()
            feeder.join(5)
            reader.join(5)
    return _judge(code, stopped, bytes(errors), size, cpu, what)


def _judge(code: int, stopped: list[str], errors: bytes, size: int, cpu: int, what: str) -> int:
    prefix = f"could not convert {what}"
    if stopped:
        raise ConversionError(f"{prefix}: {stopped[0]}")
    if code in (255, -signal.SIGXCPU, -signal.SIGKILL):  # ffmpeg exits 255 on SIGXCPU; SIGKILL at the hard limit
        raise ConversionError(f"{prefix}: it needed more than {cpu} s of CPU time (MULTIMSG_CONVERT_CPU)")
    if b"matches no streams" in errors or (code == 0 and size == 0):
        raise ConversionError(f"{prefix}: it has no audio track")
    if code != 0:
        raise ConversionError(f"{prefix} (ffmpeg: {_last_error(errors) or f'exit status {code}'})")
    return size


def _last_error(errors: bytes) -> str:
    """ffmpeg's last error line, without its addresses and the input's name, short and printable."""
    lines = [line.strip() for line in errors.decode("utf-8", "replace").splitlines()
             if line.strip() and not line.startswith("To ignore this")]
    if not lines:
        return ""
    line = re.sub(r" @ 0x[0-9a-f]+|^(cache:)?pipe:[01]: ", "", lines[-1])
    return "".join(c for c in line if c.isprintable())[:200]


def _feed(content: Content, stdin) -> None:
    try:
        with content.open() as source:
            for chunk in iter(lambda: source.read(CHUNK), b""):
                stdin.write(chunk)
    except (BrokenPipeError, ValueError, OSError):
        pass  # ffmpeg stopped reading (done, refused the input, or was stopped): its exit says why
    finally:
        try:
            stdin.close()
        except OSError:
            pass


def _keep_tail(stream, tail: bytearray, keep: int = 4096) -> None:
    for chunk in iter(lambda: stream.read(CHUNK), b""):
        tail.extend(chunk)
        del tail[:-keep]
    stream.close()
