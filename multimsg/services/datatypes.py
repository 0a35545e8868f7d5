"""Datatypes: the kinds of content a message can carry (the seed's ``Datatypes``).

Adding a datatype is one line here, plus the services that support it naming
it in their ``datatypes`` (and, for files, their ``formats`` and
``size_limits``).
"""

from __future__ import annotations

__all__ = ["Datatypes"]


class Datatypes:
    TEXT = "text"  # UTF-8 text; split into parts when over the platform's limit
    IMAGE = "image"  # a photo
    DOCUMENT = "document"  # any file, shown with its file name
    AUDIO = "audio"  # music or a recording, shown in a player
    VIDEO = "video"
    VOICE = "voice"  # a voice note: OGG/Opus
    TEMPLATE = "template"  # a JSON document naming a pre-approved template (WhatsApp)

    ALL = frozenset({TEXT, IMAGE, DOCUMENT, AUDIO, VIDEO, VOICE, TEMPLATE})
    FILES = frozenset({IMAGE, DOCUMENT, AUDIO, VIDEO, VOICE})  # sent as an uploaded file

    @classmethod
    def validate(cls, datatype: str) -> bool:
        """Whether ``datatype`` is a datatype multimsg knows."""
        return datatype in cls.ALL
