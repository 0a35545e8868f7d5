"""The local outbox (kind ``outbox``): each delivered message becomes a file in a folder.

No account, no network: ``MULTIMSG_HOME/outbox/<dest>/`` (or the instance's
``folder``) receives the message's content as a file, plus a JSON sidecar
beside it (``<file>.json``: id, serv, datatype, caption, filename, time). Both
are written atomically (temporary file, fsync, rename), content first, so a
sidecar always describes a whole file. It takes every datatype but templates,
in any format, paced and retried like any other service. ``dest`` is a folder
name: letters, digits, ``.``, ``_``, ``@``, ``+`` and ``-``, starting with a
letter or digit, at most 64 characters.

Files are named after the message id (``<id>.txt`` for a text, ``<id>-<filename>``
for a file), so a retry writes the same file again rather than a second one.

=========================================  ===========================================
answer                                     outcome
=========================================  ===========================================
both files written                         delivered, with ``<dest>/<file>``
a full disk, a permission or I/O error     retry (the error's text)
the content is gone from the spool         failed
=========================================  ===========================================
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from ..config import settings
from ..fsutil import copy_stream, ensure_private_dir, write_atomic, write_stream_atomic
from .base import Outcome, ServiceBase, file_name
from .datatypes import Datatypes
from .sniff import sniff

__all__ = ["Outbox"]


class Outbox(ServiceBase):
    kind = "outbox"
    folder: str  # the setting, set from the ServiceConfig
    datatypes = frozenset({Datatypes.TEXT, *Datatypes.FILES})
    dest_format = "a folder name: letters, digits, '.', '_', '@', '+' or '-', starting with a letter or digit (at most 64)"
    dest_pattern = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
    rate = 100.0  # a local disk: the pacing is there to behave like any other service
    share_weight = 0.0  # for trying multimsg out with no account: dealt to the drain process the accounts leave least busy
    options = {"folder": ("folder", "")}  # default: MULTIMSG_HOME/outbox
    formats = {datatype: None for datatype in Datatypes.FILES}
    text_limit = 512 * 1024  # one file, however long: a text is never split
    max_text_parts = 1
    caption_types = frozenset(Datatypes.FILES)

    def dest_limit(self, dest: str) -> tuple[int, float]:
        return (10, 1.0)

    @property
    def root(self) -> Path:
        return Path(self.folder).expanduser() if self.folder else settings().home / "outbox"

    def send(self, data: dict) -> Outcome:
        return self.send_parts(data, [lambda pace: self._write(data, pace)])

    def _write(self, data: dict, pace) -> Outcome:
        pace()
        datatype, message_id = data["type"], data["id"]
        filename = "message.txt" if datatype == Datatypes.TEXT else file_name(data, sniff(data["content"]))
        stored = f"{message_id}.txt" if datatype == Datatypes.TEXT else f"{message_id}-{filename[-150:]}"
        fsync = settings().fsync
        try:
            folder = ensure_private_dir(self.root / data["dest"])
            with data["content"].open() as source:
                write_stream_atomic(folder / stored, copy_stream(source), fsync=fsync)
            sidecar = {
                "id": message_id, "serv": self.name, "dest": data["dest"], "datatype": datatype,
                "caption": (data.get("options") or {}).get("caption"), "filename": filename,
                "size": data["content"].size, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            write_atomic(folder / f"{stored}.json", json.dumps(sidecar, ensure_ascii=False, indent=1).encode(), fsync=fsync)
        except FileNotFoundError:
            return Outcome.failed(f"{self.name}: the message's content is gone")
        except OSError as exc:
            return Outcome.retry(f"{self.name}: could not write to the outbox ({exc.strerror or type(exc).__name__})")
        return Outcome.delivered([f"{data['dest']}/{stored}"])
