"""Logs: one line per message state change, human by default, JSON lines with MULTIMSG_LOG_FORMAT=json, no secrets."""

from __future__ import annotations

import io
import json
import logging

from multimsg import logs
from multimsg.config import env


def test_state_changes_are_one_human_line_each(gateway, telegram):
    telegram.script("chat_not_found", dest=999)
    delivered = gateway.send(b"hola", "telegram", "101")
    failed = gateway.send(b"to nowhere", "telegram", "999")
    gateway.drain()
    lines = gateway.log().splitlines()
    [ok] = [line for line in lines if f"message {delivered} " in line]
    [bad] = [line for line in lines if f"message {failed} " in line]
    assert " INFO multimsg.drain: " in ok and "serv=telegram" in ok and "outcome=delivered" in ok
    assert "outcome=failed" in bad and "chat not found" in bad
    assert telegram.token not in gateway.log()


def test_json_format_gives_one_object_per_line_with_the_fields(make_gateway, telegram):
    gateway = make_gateway(env={"MULTIMSG_LOG_FORMAT": "json"})
    telegram.script("chat_not_found", dest=999)
    delivered = gateway.send(b"hola", "telegram", "101")
    failed = gateway.send(b"to nowhere", "telegram", "999")
    gateway.drain()
    entries = [json.loads(line) for line in gateway.log().splitlines() if line.strip()]  # every line is JSON
    by_id = {e.get("message_id"): e for e in entries if e.get("logger") == "multimsg.drain" and e.get("message_id")}
    assert by_id[delivered]["serv"] == "telegram" and by_id[delivered]["outcome"] == "delivered"
    assert by_id[delivered]["reason"] is None
    assert by_id[failed]["outcome"] == "failed" and "chat not found" in by_id[failed]["reason"]
    assert isinstance(by_id[failed].get("attempts", by_id[failed].get("attempt")), int)
    assert {"time", "level", "logger", "msg"} <= set(by_id[failed])
    assert telegram.token not in gateway.log()


def test_secret_settings_and_token_shapes_never_reach_a_log_line(monkeypatch):
    secret = "7771234:AAF-not-a-real-token-but-shaped-like-one"
    monkeypatch.setenv("MULTIMSG_TELEGRAM_TOKEN", secret)
    monkeypatch.setenv("MULTIMSG_DRAIN_TOKEN", "operator-pass")
    env("MULTIMSG_TELEGRAM_TOKEN"), env("MULTIMSG_DRAIN_TOKEN")  # settings this process has read
    out = io.StringIO()
    handler = logs.setup(stream=out, fmt="json")
    try:
        log = logging.getLogger("multimsg.test")
        log.warning("calling https://api.telegram.org/bot%s/sendMessage", secret)
        log.warning("drain asked with operator-pass", extra={"authorization": "Bearer abcdefgh12345678"})
        log.warning("a token-shaped string 123456789:ABCdefGHIjklMNOpqrSTUvwxYZ0123456789 in a reason")
    finally:
        logging.getLogger().removeHandler(handler)
    text = out.getvalue()
    assert secret not in text and "operator-pass" not in text and "abcdefgh12345678" not in text
    assert "123456789:ABCdef" not in text
    [first, second, third] = [json.loads(line) for line in text.splitlines()]
    assert first["msg"] == "calling https://api.telegram.org/bot***/sendMessage"
    assert second["authorization"] == "Bearer ***"


def test_redaction_covers_bot_urls_stray_spaces_and_percent_encoded_secrets(monkeypatch):
    import re
    import urllib.parse

    bot = "7771234:AAF-not-a-real-token-but-shaped-like-one"
    wpp = "EAAG/sys+user token=="  # a secret with characters a URL encoder changes
    monkeypatch.setenv("MULTIMSG_WPP1_TOKEN", wpp + "  ")  # pasted with trailing spaces
    monkeypatch.setenv("MULTIMSG_DRAIN_TOKEN", "\toperator-pass ")
    assert env("MULTIMSG_WPP1_TOKEN") == wpp and env("MULTIMSG_DRAIN_TOKEN") == "operator-pass"  # read stripped
    redactor = logs.Redactor()
    lower_hex = re.sub(r"%[0-9A-F]{2}", lambda m: m[0].lower(), urllib.parse.quote(wpp, safe=""))
    lines = [
        f"POST https://api.telegram.org/bot{bot}/sendMessage failed",  # no word boundary after 'bot'
        f"url=https://graph.example/v1/media?access_token={urllib.parse.quote(wpp, safe='')}&x=1",
        f"form body token={urllib.parse.quote_plus(wpp)}",
        f"path /{urllib.parse.quote(wpp)}/x and lower-case hex {lower_hex}",
        f"header Authorization: Bearer {wpp}",
        "drain asked with operator-pass and %6Fperator-pass",
        "proxy https://multimsg:hunter2-password@proxy.example:3128/ refused",
        f"telegram said: bot {urllib.parse.quote(bot)} is not known",
    ]
    scrubbed = [redactor.scrub(line) for line in lines]
    text = "\n".join(scrubbed)
    for leaked in (bot, wpp, urllib.parse.quote(wpp, safe=""), urllib.parse.quote_plus(wpp), urllib.parse.quote(wpp),
                   lower_hex, "operator-pass", "hunter2-password", urllib.parse.quote(bot), "AAF-not-a-real"):
        assert leaked not in text, (leaked, text)
    assert scrubbed[0] == "POST https://api.telegram.org/bot***/sendMessage failed"
    assert scrubbed[6] == "proxy https://multimsg:***@proxy.example:3128/ refused"
    # Ordinary text is left alone.
    assert redactor.scrub("monkey=banana serv=telegram dest=12345 state=queued") == "monkey=banana serv=telegram dest=12345 state=queued"
