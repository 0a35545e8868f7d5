"""Benchmark 11: parsing one small upload with a fresh random boundary (as every real client sends one).

werkzeug's decoder compiles two regular expressions per boundary; multimsg's
(``multimsg/functions/formparser.py``) finds the boundary with ``bytes.find``.
Each parses the same ``--count`` bodies (a 1 KB file and three text fields,
the shape of a ``POST /send``), each with its own boundary, through
``werkzeug.formparser.parse_form_data``; CPU per body is printed and merged
into bench/results.json under ``multipart_parse``.

Run: ``python -m bench.multipart_parse [--count 2000]``.
"""

from __future__ import annotations

import argparse
import io
import json
import secrets
import time

import werkzeug.formparser
from werkzeug.sansio.multipart import MultipartDecoder

from multimsg.functions.formparser import Decoder

from .common import RESULTS, machine


def body(boundary: str) -> bytes:
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in (("serv", "telegram"), ("dest", "4242"), ("type", "text"))]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="data"; filename="b.txt"\r\n'
                 f"Content-Type: text/plain\r\n\r\n".encode() + b"x" * 1024 + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def cpu_per_body(decoder: type, bodies: list[tuple[str, bytes]]) -> float:
    werkzeug.formparser.MultipartDecoder = decoder  # type: ignore[misc]
    started = time.process_time()
    for boundary, data in bodies:
        environ = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": f"multipart/form-data; boundary={boundary}",
                   "CONTENT_LENGTH": str(len(data)), "wsgi.input": io.BytesIO(data)}
        _, form, files = werkzeug.formparser.parse_form_data(environ)
        assert form["serv"] == "telegram" and files["data"].read() == b"x" * 1024
    return 1000 * (time.process_time() - started) / len(bodies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    bodies = [(b, body(b)) for b in ("----multimsgbench" + secrets.token_hex(12) for _ in range(args.count))]
    rounds = {"werkzeug": [], "multimsg": []}
    for _ in range(3):  # alternating
        rounds["werkzeug"].append(cpu_per_body(MultipartDecoder, bodies))
        rounds["multimsg"].append(cpu_per_body(Decoder, bodies))
    result = {"machine": machine(), "count": args.count, "cpu_ms_per_body": {k: round(min(v), 3) for k, v in rounds.items()},
              "rounds": {k: [round(x, 3) for x in v] for k, v in rounds.items()}}
    print(json.dumps(result, indent=2))
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["multipart_parse"] = result
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
