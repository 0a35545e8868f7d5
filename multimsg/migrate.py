"""``multimsg migrate --to redis://...``: move an embedded deployment's messages into the shared store.

Copies every stored message of the data folder's embedded store (queued and final; the archive
stays where it is) with its content from the spool folder into the Redis backend (and the blob
store ``MULTIMSG_BLOBS`` names, if any). Each message keeps its id, so clients go on asking /cons
with the ids they have. A message the target already holds is skipped: a second run (or a run
after an interrupted one) copies nothing twice. A message leased by a drain pass of the old
deployment arrives unleased (due at once).

Uploads not yet used by any message are not copied: a data id is an id in one spool; clients
upload again. Stop the old gateway (intake and drain) first; then run this; then start the
gateways with ``MULTIMSG_BACKEND`` set.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from .config import Settings
from .fsutil import copy_stream
from .layout import Layout
from .queue.backends.files import FileSpool
from .queue.backends.tiny import TinyStore
from .queue.sealed import open_name, seal_name

__all__ = ["migrate", "Report"]

log = logging.getLogger("multimsg.migrate")


@dataclass
class Report:
    copied: int = 0  # messages written to the target, with their content
    present: int = 0  # already in the target (an earlier run): left as they are
    without_content: int = 0  # copied, but their content was gone from the spool (they will fail on sending)

    def line(self) -> str:
        return f"migrate: copied {self.copied}, already there {self.present}, without content {self.without_content}"


def migrate(s: Settings, to: str) -> Report:
    from .gateway import _backend, sealed

    layout = Layout(s.home)
    source, source_spool = TinyStore(layout, fsync=s.fsync), sealed(FileSpool(layout, ttl=s.data_ttl, fsync=s.fsync), s)
    target, target_spool, _ = _backend(dataclasses.replace(s, backend=to), layout)
    report = Report()
    for message in source.messages():
        if target.get(message.id) is not None:
            report.present += 1
            continue
        target_spool.release(message.client, message.id)  # a reference left by an interrupted run: dropped, not leaked
        try:
            content = source_spool.message_content(message.client, message.id)
            name = open_name(content, message.filename)
            with content.open() as stream:
                info = target_spool.put(message.client, copy_stream(stream), name or "data")
            target_spool.attach(message.client, info.data_id, message.id)
            message = message.with_changes(filename=seal_name(target_spool.content(message.client, info.data_id), name))
        except FileNotFoundError:
            report.without_content += 1
            log.warning("message %s: its content is gone from the spool; copied without it", message.id)
        target.add(message.with_changes(claim=None, claim_until=None) if message.claim is not None else message)
        report.copied += 1
    return report
