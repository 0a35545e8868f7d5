"""A streamed ``multipart/form-data`` body with a known length: text fields, then file parts.

``requests`` builds a ``files=`` body in memory; with dozens of sends in flight
(the drain) or a 100 MB upload (the client) that is gigabytes. ``MultipartBody``
is a plain readable object with ``__len__`` (no ``__iter__``, no ``tell``), so
``requests`` sends it with a ``Content-Length`` and urllib3 reads it block by
block; a file part given as a ``Path`` is read from disk as the socket takes it.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Callable, Iterable

from .content import Content

__all__ = ["MultipartBody", "FilePart"]

FilePart = tuple[str, str, str | None, "bytes | Path | Content"]  # (field, filename, content type or None, content)
Progress = Callable[[int, int], None]  # (bytes sent, total)

CHUNK = 256 * 1024


def _quote(value: str) -> str:
    # RFC 7578 §4.2: percent-encode the quote, CR and LF in a quoted name; non-ASCII goes as UTF-8.
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class MultipartBody:
    """``fields`` (name -> text), then each of ``files``; ``progress(sent, total)`` after each block.

    Files given as paths are opened when the body is read, one at a time, and
    their size is taken when the body is built (so a missing file raises
    ``FileNotFoundError`` before any request goes out). Use a body once, then
    ``close()`` it (or use it as a context manager).
    """

    def __init__(self, fields: dict[str, str] | None = None, files: Iterable[FilePart] = (), progress: Progress | None = None):
        self.boundary = "multimsg-" + secrets.token_hex(12)
        self.parts: list[bytes | Path | Content] = [
            self._header(name) + str(value).encode("utf-8") + b"\r\n" for name, value in (fields or {}).items()
        ]
        for name, filename, content_type, content in files:
            self.parts += [self._header(name, filename, content_type), content, b"\r\n"]
        self.parts.append(f"--{self.boundary}--\r\n".encode())
        self.total = sum(self._size(part) for part in self.parts)
        self.sent = 0
        self.progress = progress
        self._index = 0
        self._offset = 0
        self._handle = None

    @staticmethod
    def _size(part: "bytes | Path | Content") -> int:
        if isinstance(part, Path):
            return part.stat().st_size
        if isinstance(part, Content):
            return part.size
        return len(part)

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def _header(self, name: str, filename: str | None = None, content_type: str | None = None) -> bytes:
        disposition = f'form-data; name="{_quote(name)}"'
        if filename is not None:
            disposition += f'; filename="{_quote(filename)}"'
        lines = [f"--{self.boundary}", f"Content-Disposition: {disposition}"]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")

    def __len__(self) -> int:
        return self.total

    def read(self, size: int = -1) -> bytes:
        size = CHUNK if size is None or size < 0 else size
        while self._index < len(self.parts):
            part = self.parts[self._index]
            if isinstance(part, (Path, Content)):
                if self._handle is None:
                    self._handle = open(part, "rb") if isinstance(part, Path) else part.open()
                chunk = self._handle.read(size)
                if not chunk:
                    self._handle.close()
                    self._handle = None
                    self._index += 1
                    continue
            else:
                chunk = part[self._offset:self._offset + size]
                if not chunk:
                    self._index, self._offset = self._index + 1, 0
                    continue
                self._offset += len(chunk)
            self.sent += len(chunk)
            if self.progress:
                self.progress(self.sent, self.total)
            return chunk
        return b""

    def close(self) -> None:
        if self._handle:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "MultipartBody":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
