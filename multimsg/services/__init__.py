"""Services: one module per platform, all with the shape of ``base.ServiceBase``.

The registry maps the ``serv`` names of the HTTP contract to service classes
(the seed's ``serviceFactory``). Adding a platform: write its module, add its
class to ``SERVICES``.
"""

from __future__ import annotations

from ..errors import InvalidInput
from .apprise_bridge import AppriseBridge
from .base import Outcome, ServiceBase
from .datatypes import Datatypes
from .matrix import Matrix
from .signal import Signal
from .telegram import Telegram
from .twilio import Twilio
from .wpp1 import WhatsApp

__all__ = ["SERVICES", "KINDS", "get_service", "service_class", "Outcome", "ServiceBase", "Datatypes"]

SERVICES: dict[str, type[ServiceBase]] = {cls.name: cls for cls in (WhatsApp, Telegram)}

# Service modules by kind (an instance's ``kind`` picks its class).
KINDS: dict[str, type[ServiceBase]] = {
    "telegram": Telegram,
    "whatsapp": WhatsApp,
    "signal": Signal,
    "matrix": Matrix,
    "twilio": Twilio,
    "apprise": AppriseBridge,
}

_instances: dict[str, ServiceBase] = {}


def service_class(serv: str) -> type[ServiceBase]:
    try:
        return SERVICES[serv]
    except KeyError:
        raise InvalidInput(f"unknown service {serv!r}; known services: {', '.join(sorted(SERVICES))}") from None


def get_service(serv: str) -> ServiceBase:
    """The process's instance of a service (built on first use, with its configuration)."""
    if serv not in _instances:
        _instances[serv] = service_class(serv)()
    return _instances[serv]
