"""The store's JSON codec (multimsg/jsonbytes.py): what the standard library wrote reads the same, and back."""

import json

import pytest

from multimsg import jsonbytes
from multimsg.model import Message


def test_a_record_is_written_byte_for_byte_as_the_standard_library_wrote_it():
    record = Message(id="a" * 16, client="mac:00:00:00:00:00:00", data_id="d" * 16, serv="wpp1", dest="5491100000001",
                     type="text", created_at=1796154062.6805701, updated_at=1796154062.6805701,
                     next_attempt_at=1796154062.6805701, options={"caption": "hola"}).to_record()
    assert jsonbytes.dumps({"messages": {"1": record}}) == json.dumps({"messages": {"1": record}}, separators=(",", ":")).encode()
    assert jsonbytes.loads(jsonbytes.dumps(record)) == record


def test_text_beyond_ascii_and_what_orjson_refuses_round_trip():
    value = {"caption": "¿qué tal? 你好 🙂", "big": 2**70}  # orjson encodes no integer beyond 64 bits
    assert json.loads(jsonbytes.dumps(value)) == value
    assert jsonbytes.loads(json.dumps(value).encode())["caption"] == value["caption"]


def test_a_torn_file_is_a_value_error():
    with pytest.raises(ValueError):
        jsonbytes.loads(b'{"messages":{"1":{"id":"ab')
