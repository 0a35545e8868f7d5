"""Services: one module per platform, all with the shape of ``base.ServiceBase``.

``KINDS`` maps a kind (what ``kind = "..."`` names in the configuration) to
the class that sends. ``serv`` in the HTTP contract names a configured
*instance* of a kind: ``wpp1`` (whatsapp), ``telegram`` and ``outbox`` always
exist, more come from ``[services.NAME]`` in the configuration file or
``MULTIMSG_<NAME>_KIND`` in the environment (see ``multimsg.config``). Each
instance is built with its own ``ServiceConfig``: credentials, options,
pacing, holds and metrics are per instance.

Adding a platform: write its module, add its class to ``KINDS``.
"""

from __future__ import annotations

import logging
import threading

from .. import config
from ..errors import InvalidInput
from .apprise_bridge import AppriseBridge
from .base import Outcome, ServiceBase
from .datatypes import Datatypes
from .discord import Discord
from .email import Email
from .matrix import Matrix
from .outbox import Outbox
from .signal import Signal
from .slack import Slack
from .teams import Teams
from .telegram import Telegram
from .twilio import Twilio
from .webhook import Webhook
from .wpp1 import WhatsApp

__all__ = ["KINDS", "instances", "get_service", "service_class", "Outcome", "ServiceBase", "Datatypes"]

log = logging.getLogger("multimsg.services")

KINDS: dict[str, type[ServiceBase]] = {cls.kind: cls for cls in (
    WhatsApp, Telegram, Outbox, Email, Webhook, Discord, Slack, Teams, Signal, Matrix, Twilio, AppriseBridge)}

_instances: dict[tuple[str, str], ServiceBase] = {}
_lock = threading.Lock()
_warned: set[tuple[str, str]] = set()


def instances() -> dict[str, str]:
    """The configured service instances: name -> kind (an instance of an unknown kind is left out, with an ERROR)."""
    found = {}
    for name, kind in config.instances().items():
        if kind in KINDS:
            found[name] = kind
        elif (name, kind) not in _warned:
            _warned.add((name, kind))
            log.error("service instance %r has kind %r, which is not a kind multimsg has (kinds: %s); it is left out",
                      name, kind, ", ".join(sorted(KINDS)))
    return found


def service_class(serv: str) -> type[ServiceBase]:
    """The class that sends for instance ``serv``; InvalidInput (listing the configured ones) if there is none."""
    known = instances()
    try:
        return KINDS[known[serv]]
    except KeyError:
        raise InvalidInput(f"unknown service {serv!r}; known services: {', '.join(sorted(known))}") from None


def get_service(serv: str) -> ServiceBase:
    """The process's instance ``serv`` (built on first use, with its own configuration)."""
    cls = service_class(serv)
    key = (serv, cls.kind)
    with _lock:
        if key not in _instances:
            _instances[key] = cls(cls.read_config(serv))
        return _instances[key]
