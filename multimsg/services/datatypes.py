"""Datatypes: the kinds of content a message can carry (the seed's ``Datatypes``).

Adding a datatype is one line here, plus the services that support it naming
it in their ``datatypes``.
"""

from __future__ import annotations

__all__ = ["Datatypes"]


class Datatypes:
    TEXT = "text"

    ALL = frozenset({TEXT})

    @classmethod
    def validate(cls, datatype: str) -> bool:
        """Whether ``datatype`` is a datatype multimsg knows."""
        return datatype in cls.ALL
