"""E-mail over SMTP, against a real aiosmtpd server with STARTTLS (a self-signed certificate
made here with ``cryptography``) and AUTH: every datatype by HTTP and by the CLI, the received
MIME parts byte for byte, and one test per row of the outcome table in ``multimsg/services/email.py``."""

from __future__ import annotations

import datetime
import email
import ipaddress
import itertools
import json
import ssl
from email.policy import default as default_policy

import pytest

from tests.conftest import require
from tests.gatewayproc import free_port
from tests.native_support import SAMPLES, VIA, send_every, settled_drain, start_gateway, wait_attempted

SIZE_LIMIT = 400_000
_n = itertools.count(1)


def new_address(local: str = "user") -> str:
    return f"{local}{next(_n)}@example.com"


def make_certificate(folder):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "smtp.crt", folder / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


class Mailbox:
    """The aiosmtpd handler: refuses nouser* with 550, answers flaky* with 451 once, keeps what it accepts."""

    def __init__(self):
        self.messages: list[dict] = []
        self.flaky_seen: set[str] = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0]
        if local.startswith("nouser"):
            return "550 5.1.1 No such user here"
        if local.startswith("flaky") and address not in self.flaky_seen:
            self.flaky_seen.add(address)
            return "451 4.3.0 Mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos), "content": envelope.original_content,
                              "tls": session.ssl is not None, "authenticated": session.authenticated})
        return "250 2.0.0 Message accepted"

    def wait_for(self, address: str, timeout: float = 10.0) -> dict:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages:
                if address in message["to"]:
                    return message
            time.sleep(0.05)
        raise AssertionError(f"no message for {address}; received {[m['to'] for m in self.messages]}")


@pytest.fixture(scope="module")
def smtp_server(tmp_path_factory):
    try:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword
    except ImportError:
        require(False, "aiosmtpd is not installed (pip install -e '.[test]')")
    folder = tmp_path_factory.mktemp("smtp")
    cert_path, key_path = make_certificate(folder)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"mailer" and auth_data.password == b"s3cret"
        return AuthResult(success=ok, handled=False)

    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True,
                            auth_required=True, authenticator=authenticator, data_size_limit=SIZE_LIMIT)
    controller.start()
    yield {"port": port, "cafile": cert_path, "mailbox": mailbox}
    controller.stop()


@pytest.fixture(scope="module")
def mail_gateway(tmp_path_factory, server_keys, smtp_server):
    def instance(name, **overrides):
        settings = {"kind": "email", "host": "127.0.0.1", "port": str(smtp_server["port"]), "from": "gateway@example.com",
                    "username": "mailer", "password": "s3cret", "cafile": str(smtp_server["cafile"]), "dest_interval": "0", **overrides}
        return {f"MULTIMSG_{name.upper()}_{key.upper()}": value for key, value in settings.items()}

    env = {**instance("mail"), **instance("mailbadpw", password="wrong"), **instance("mailoff", port=str(free_port())),
           **instance("mailnoca", cafile="")}
    runner = start_gateway(tmp_path_factory, server_keys, env, "email")
    yield runner
    runner.stop()


def parse(message: dict):
    return email.message_from_bytes(message["content"], policy=default_policy)


def test_a_text_is_the_body_sent_over_starttls_with_auth(mail_gateway, smtp_server):
    address, text = new_address(), "Hola ✓\nsegunda línea\n"
    message_id = mail_gateway.send(text.encode(), "mail", address)
    report = mail_gateway.wait_state(message_id)
    assert report["state"] == "delivered", report
    received = smtp_server["mailbox"].wait_for(address)
    assert received["tls"] and received["authenticated"] and received["from"] == "gateway@example.com"
    parsed = parse(received)
    assert parsed["Message-ID"] == f"<{message_id}@multimsg>" and report["platform_ids"] == [f"<{message_id}@multimsg>"]
    assert not parsed.is_multipart() and parsed.get_content_type() == "text/plain"
    assert parsed.get_content().replace("\r\n", "\n") == text  # lines end in CRLF on the wire, as SMTP wants


@pytest.mark.parametrize("via", VIA)
def test_every_datatype_arrives_text_as_the_body_files_as_attachments_byte_for_byte(mail_gateway, smtp_server, tmp_path, via):
    sent = send_every(mail_gateway, tmp_path, via, "mail", {datatype: new_address() for datatype, *_ in SAMPLES})
    for item in sent.values():
        assert item.report["state"] == "delivered", (item.datatype, item.report)
        received = smtp_server["mailbox"].wait_for(item.dest)
        parsed = parse(received)
        assert received["tls"] and received["authenticated"] and parsed["Message-ID"] == f"<{item.report['id']}@multimsg>"
        if item.datatype == "text":
            assert not parsed.is_multipart() and parsed.get_content().replace("\r\n", "\n") == item.content.decode() + "\n"  # a body ends its last line
            continue
        body, [attachment] = parsed.get_body(("plain",)), list(parsed.iter_attachments())
        assert body.get_content().strip() == item.caption
        assert attachment.get_filename() == item.upload_name and attachment.get_content_type() == item.mime
        assert attachment.get_content() == item.content


def test_a_message_over_the_servers_size_fails_before_sending(mail_gateway, smtp_server):
    address = new_address()
    report = mail_gateway.wait_state(mail_gateway.send(b"%PDF-1.4\n" + b"0" * SIZE_LIMIT, "mail", address, "document"))
    assert report["state"] == "failed" and "SIZE" in report["last_error"], report
    assert not any(address in m["to"] for m in smtp_server["mailbox"].messages)


def test_auth_refused_is_misconfigured(mail_gateway):
    report, summaries = wait_attempted(mail_gateway, mail_gateway.send(b"wrong password", "mailbadpw", new_address()))
    assert report["state"] == "queued" and "refused the login (535" in report["last_error"], report
    assert "mailbadpw" in summaries + json.dumps(settled_drain(mail_gateway))


def test_an_untrusted_certificate_is_misconfigured(mail_gateway):
    report, _ = wait_attempted(mail_gateway, mail_gateway.send(b"no CA", "mailnoca", new_address()))
    assert report["state"] == "queued" and "certificate does not verify" in report["last_error"], report


def test_4xx_is_retried(mail_gateway, smtp_server):
    address = new_address("flaky")
    report = mail_gateway.wait_state(mail_gateway.send(b"second time lucky", "mail", address))
    assert report["state"] == "delivered" and address in smtp_server["mailbox"].flaky_seen, report  # 451 first, then 250
    assert parse(smtp_server["mailbox"].wait_for(address)).get_content().strip() == "second time lucky"


def test_5xx_recipient_refused_fails(mail_gateway):
    report = mail_gateway.wait_state(mail_gateway.send(b"to nobody", "mail", new_address("nouser")))
    assert report["state"] == "failed" and "550" in report["last_error"] and "No such user" in report["last_error"], report


def test_connection_refused_is_retried(mail_gateway):
    report, _ = wait_attempted(mail_gateway, mail_gateway.send(b"server down", "mailoff", new_address()))
    assert report["state"] == "queued" and report["attempts"] >= 1 and "ConnectionRefused" in report["last_error"], report


def test_dest_must_be_an_address(mail_gateway):
    for dest in ("not-an-address", "a@b", "two@example.com,three@example.com", "x@example.com\r\nBcc: y@example.com"):
        response = mail_gateway.msg(id=mail_gateway.upload_id(b"hola"), serv="mail", dest=dest, type="text")
        assert response.status_code == 400, dest
