"""E-mail over SMTP (kind ``email``), with Python's ``smtplib``.

Settings: ``host`` and ``from`` (required), ``port`` (587, or 465 with
``ssl``), ``username`` and ``password`` (AUTH, when a username is set),
``starttls`` (on: upgrade a plain connection, and refuse to go on without it),
``ssl`` (off: implicit TLS from the first byte, as on port 465), ``cafile``
(a CA bundle to verify the server with, beside the system's), ``subject``.
``dest`` is one address (``name@example.com``).

- text: the message body (``text/plain; charset=utf-8``), whatever its length
  (at most 512 KB);
- image, document, audio, video, voice: a MIME attachment with its file name
  and sniffed type, the caption as the body; 25 MB, and never more than the
  server's ``SIZE`` (an over-size message fails before any byte is sent).

The ``Message-ID`` is ``<message id@multimsg>`` on every attempt, so a
recipient's client can tell a repeat. One connection per message.

==============================================  ===========================================
answer                                          outcome
==============================================  ===========================================
250 after the data                              delivered, with the Message-ID
AUTH refused (535), AUTH or STARTTLS not        misconfigured: the message stays queued
offered, the certificate does not verify,
the sender refused with 5xx
4xx (greeting, sender, recipient, data)         retry
5xx recipient refused (550 no such user)        failed, with the server's reply
5xx to the data; 552 or over the SIZE           failed, with the server's reply
connection refused, timeout, disconnected       retry
==============================================  ===========================================
"""

from __future__ import annotations

import re
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate

from .base import CONTENT_REFUSED, MB, Outcome, ServiceBase, file_name, read_text
from .datatypes import Datatypes
from .sniff import OCTET_STREAM, sniff

__all__ = ["Email"]

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"


def _on(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no", "off")


class Email(ServiceBase):
    kind = "email"
    host: str  # the settings, set from the ServiceConfig
    sender: str
    port: str
    username: str
    password: str
    starttls: str
    ssl: str
    cafile: str
    subject: str
    datatypes = frozenset({Datatypes.TEXT, *Datatypes.FILES})
    dest_format = "an e-mail address (name@example.com)"
    dest_pattern = re.compile(rf"(?=.{{3,254}}$){_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+")
    rate = 5.0  # one connection per message; most relays throttle above a few per second
    credentials = {"host": "host", "sender": "from"}
    options = {
        "port": ("port", ""),
        "username": ("username", ""),
        "password": ("password", ""),
        "starttls": ("starttls", "on"),
        "ssl": ("ssl", "off"),
        "cafile": ("cafile", ""),
        "subject": ("subject", "Message from multimsg"),
    }
    size_limits = {datatype: 25 * MB for datatype in Datatypes.FILES}
    formats = {datatype: None for datatype in Datatypes.FILES}
    text_limit = 512 * 1024
    max_text_parts = 1
    caption_types = frozenset(Datatypes.FILES)

    def dest_limit(self, dest: str) -> tuple[int, float]:
        return (1, 1.0)

    def send(self, data: dict) -> Outcome:
        return self.send_parts(data, [lambda pace: self._send(data, pace)])

    def _message(self, data: dict) -> EmailMessage:
        message = EmailMessage(policy=SMTP_POLICY)
        message["From"] = self.sender
        message["To"] = data["dest"]
        message["Subject"] = self.subject
        message["Date"] = formatdate(time.time(), usegmt=True)
        message["Message-ID"] = f"<{data['id']}@multimsg>"
        if data["type"] == Datatypes.TEXT:
            message.set_content(read_text(data["content"]), charset="utf-8")
            return message
        caption = (data.get("options") or {}).get("caption") or ""
        message.set_content(caption, charset="utf-8")
        mime = (sniff(data["content"]) or OCTET_STREAM).split(";")[0]
        maintype, subtype = mime.split("/", 1)
        message.add_attachment(data["content"].read(), maintype=maintype, subtype=subtype, filename=file_name(data, mime))
        return message

    def _send(self, data: dict, pace) -> Outcome:
        try:
            raw = self._message(data).as_bytes()
        except CONTENT_REFUSED as exc:
            return Outcome.failed(f"{self.name}: {exc.reason}")
        implicit = _on(self.ssl)
        port = int(self.port) if str(self.port or "").strip() else (465 if implicit else 587)
        context = ssl.create_default_context(cafile=self.cafile or None)
        timeout = self.config.read_timeout
        message_id = f"<{data['id']}@multimsg>"
        try:
            smtp = (smtplib.SMTP_SSL(self.host, port, timeout=timeout, context=context) if implicit
                    else smtplib.SMTP(self.host, port, timeout=timeout))
            with smtp:
                smtp.ehlo()
                if not implicit and _on(self.starttls):
                    smtp.starttls(context=context)
                    smtp.ehlo()
                if self.username:
                    smtp.login(self.username, self.password or "")
                limit = int(smtp.esmtp_features.get("size", "0") or 0) if smtp.has_extn("size") else 0
                if limit and len(raw) > limit:
                    return Outcome.failed(f"{self.name}: the message is {len(raw)} bytes; the server takes at most {limit} (SIZE)")
                pace()
                smtp.sendmail(self.sender, [data["dest"]], raw)
        except smtplib.SMTPAuthenticationError as exc:
            return Outcome.misconfigured(f"{self.name}: the server refused the login ({_reply(exc.smtp_code, exc.smtp_error)})")
        except smtplib.SMTPNotSupportedError as exc:
            return Outcome.misconfigured(f"{self.name}: the server does not offer {exc} (check starttls, ssl, username)")
        except ssl.SSLCertVerificationError as exc:
            return Outcome.misconfigured(f"{self.name}: the server's certificate does not verify ({exc.verify_message}; see cafile)")
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = next(iter(exc.recipients.values()), (0, b""))
            outcome = Outcome.retry if 400 <= code < 500 else Outcome.failed
            return outcome(f"{self.name}: the recipient was refused ({_reply(code, reply)})")
        except smtplib.SMTPSenderRefused as exc:
            text = f"{self.name}: the sender was refused ({_reply(exc.smtp_code, exc.smtp_error)})"
            if 400 <= exc.smtp_code < 500:
                return Outcome.retry(text)
            return Outcome.failed(text) if exc.smtp_code == 552 else Outcome.misconfigured(text)
        except smtplib.SMTPConnectError as exc:
            return Outcome.retry(f"{self.name}: the server refused the connection ({_reply(exc.smtp_code, exc.smtp_error)})")
        except smtplib.SMTPResponseException as exc:
            outcome = Outcome.retry if exc.smtp_code < 500 else Outcome.failed
            return outcome(f"{self.name}: {_reply(exc.smtp_code, exc.smtp_error)}")
        except (smtplib.SMTPException, OSError) as exc:  # disconnected, refused, timed out, TLS failed
            return Outcome.retry(f"{self.name}: could not reach the server ({type(exc).__name__}: {exc})"[:300])
        return Outcome.delivered([message_id])


def _reply(code: int, text: bytes | str) -> str:
    text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
    return f"{code} {text}".strip()


