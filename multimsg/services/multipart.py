"""A streamed ``multipart/form-data`` body: form fields plus one file read from disk.

``requests`` builds a ``files=`` body in memory; with dozens of sends in flight
and files of up to 100 MB that is gigabytes. ``MultipartFile`` is a readable
object with a known length, so ``requests`` sends it with a
``Content-Length`` and reads the file in blocks as the socket takes them.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

__all__ = ["MultipartFile"]


def _quote(value: str) -> str:
    # RFC 7578 §4.2: percent-encode the quote, CR and LF in a quoted name; non-ASCII goes as UTF-8.
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class MultipartFile:
    """``fields`` (name -> text) then the file at ``path`` as part ``file_field``.

    The file is opened when the object is built, so a missing file raises
    ``FileNotFoundError`` before any request goes out. Use it once, then
    ``close()`` it (or use it as a context manager).
    """

    def __init__(self, fields: dict[str, str], file_field: str, path: Path, filename: str, content_type: str):
        self.boundary = uuid.uuid4().hex
        head = b"".join(
            self._part_header(name) + str(value).encode("utf-8") + b"\r\n" for name, value in fields.items()
        )
        head += self._part_header(file_field, filename, content_type)
        self._handle = open(path, "rb")
        size = os.fstat(self._handle.fileno()).st_size
        self._chunks = [head, None, f"\r\n--{self.boundary}--\r\n".encode()]
        self._length = len(head) + size + len(self._chunks[2])
        self._index = 0

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def _part_header(self, name: str, filename: str | None = None, content_type: str | None = None) -> bytes:
        disposition = f'form-data; name="{_quote(name)}"'
        if filename is not None:
            disposition += f'; filename="{_quote(filename)}"'
        lines = [f"--{self.boundary}", f"Content-Disposition: {disposition}"]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        while self._index < 3:
            if self._index == 1:
                block = self._handle.read(size if size and size > 0 else -1)
                if block:
                    return block
                self._index += 1
                continue
            chunk = self._chunks[self._index]
            if not chunk:
                self._index += 1
                continue
            if size is None or size < 0 or size >= len(chunk):
                self._chunks[self._index] = b""
                self._index += 1
                return chunk
            self._chunks[self._index] = chunk[size:]
            return chunk[:size]
        return b""

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "MultipartFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
