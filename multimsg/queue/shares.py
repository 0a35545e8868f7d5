"""Several drain processes for one data folder: which service instances each one sends for.

One drain process is bound by one core (Python's GIL): with several accounts
busy at once, their sends together can need more CPU than one process has. A
``Share`` splits the configured service instances between ``count`` drain
processes so that each instance is sent for by exactly one of them: its pacing
(the embedded backend keeps it in the process) and its holds then stay whole,
and every process leases only its own instances' messages (the leases keep it
safe either way). The split is worked out from the configuration alone, so
every process that reads the same configuration agrees on it: instances are
dealt out by weight, largest first, each to the share with the least weight so
far (ties: by name, to the lowest share). An instance's weight is its declared
rate (``UNLIMITED_WEIGHT`` when it declares none), nothing when its credentials
are missing, and the outbox's (which needs no account) is nothing too. An
instance the configuration does not name (a message queued before it was
removed) goes to the share its name's CRC-32 picks, where the pass fails or
holds it as for one process.

Each share has its own drain lock (``drain`` for share 0, ``drain-N`` for the
others); a pass over every instance (``POST /drain``, ``multimsg drain``)
takes all of them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Mapping

__all__ = ["Share", "deal", "parse_share", "UNLIMITED_WEIGHT"]

UNLIMITED_WEIGHT = 1000.0  # the weight of an instance that declares no limit: this many messages per second


@dataclass(frozen=True)
class Share:
    """Share ``index`` (from 0) of ``count``; ``owners``: configured instance -> the share that sends for it."""

    index: int = 0
    count: int = 1
    owners: Mapping[str, int] = field(default_factory=dict)

    def serves(self, serv: str) -> bool:
        if self.count <= 1:
            return True
        owner = self.owners.get(serv)
        if owner is None:
            owner = zlib.crc32(serv.encode()) % self.count
        return owner == self.index

    @property
    def housekeeper(self) -> bool:
        """Whether this share also sweeps and delivers callbacks (share 0: they are done once, not per share)."""
        return self.index == 0

    @staticmethod
    def lock_name(index: int) -> str:
        return "drain" if index == 0 else f"drain-{index}"


def deal(weights: Mapping[str, float], count: int) -> dict[str, int]:
    """Instance -> share, for ``count`` shares: by weight, largest first, each to the lightest share so far."""
    loads = [0.0] * max(1, count)
    owners = {}
    for name in sorted(weights, key=lambda n: (-weights[n], n)):
        index = min(range(len(loads)), key=lambda i: (loads[i], i))
        owners[name] = index
        loads[index] += weights[name]
    return owners


def parse_share(value: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N), I counted from 0; ValueError when it is not one."""
    index, sep, count = value.partition("/")
    i, n = int(index), int(count)
    if not sep or n < 1 or not 0 <= i < n:
        raise ValueError(f"a drain share is I/N with 0 <= I < N, not {value!r}")
    return i, n
