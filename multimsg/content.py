"""Content objects: the bytes of an upload or a message, wherever they live.

Content is an object, never a path into the spool (as Apprise's attachments
are): its ``size``, its first bytes for sniffing (``head``), a stream to read
(``open``), and a local file on demand (``local_path``) for the rare library
that insists on a file name. Sniffing, templates, texts and the services all
go through it, so content in a blob store is a peer of content in a folder.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

__all__ = ["Content", "BytesContent", "HEAD"]

HEAD = 8192  # the first bytes sniffing looks at

class Content(ABC):
    """The bytes of one upload or one message, wherever they live."""

    size: int

    @abstractmethod
    def open(self) -> BinaryIO:
        """A fresh binary stream of the whole content (close it when done). FileNotFoundError if it is gone."""

    def head(self, n: int = HEAD) -> bytes:
        with self.open() as stream:
            return stream.read(n)

    def read(self, limit: int | None = None) -> bytes:
        """The whole content (at most ``limit`` bytes): for texts and templates, which are small."""
        with self.open() as stream:
            return stream.read() if limit is None else stream.read(limit)

    @contextmanager
    def local_path(self) -> Iterator[Path]:
        """A local file with the content, for as long as the block runs (a private copy by default)."""
        with tempfile.TemporaryDirectory(prefix="multimsg-") as folder:
            path = Path(folder) / "content"
            with self.open() as source, open(path, "wb") as target:
                shutil.copyfileobj(source, target)
            yield path


class BytesContent(Content):
    """Content held in memory (the memory spool; small uploads in tests)."""

    def __init__(self, data: bytes):
        self.data = bytes(data)
        self.size = len(self.data)

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data)
