"""Issue 2: the SMTP engine as a client on a raw socket sees it (mx-1).

The engine's own unit and session tests live in crates/smtp-server; these
check the same contract end to end against the real palisade-mx binary.
"""

import time

import pytest

from conftest import Raw, message_ids, pop3_messages, tls_context, wait_for

USER = "alice@example.test"


@pytest.fixture
def mx(arch_factory):
    a = arch_factory()
    a.add_user(USER)
    a.start("store-staff", "mx-1")
    return a


def test_pipelined_envelope_is_answered_in_order(mx):
    c = Raw(mx.addr("mx-1"))
    code, ehlo = c.cmd("EHLO client.test")
    assert code == 250 and "PIPELINING" in ehlo
    c.send(
        b"MAIL FROM:<a@outside.test>\r\nRCPT TO:<nobody@example.test>\r\n"
        b"RCPT TO:<" + USER.encode() + b">\r\nDATA\r\n"
    )
    assert c.reply()[0] == 250
    assert c.reply()[0] == 550
    assert c.reply()[0] == 250
    assert c.reply()[0] == 354
    code, text = c.cmd("Subject: p\r\n\r\nbody\r\n.")
    assert code == 250 and "queued as" in text
    assert c.cmd("QUIT")[0] == 221


def test_size_refused_at_mail_and_after_data(arch_factory):
    a = arch_factory(edit=lambda t: t.replace(
        "max_message_size = 26214400   # DM8: 25 MiB", "max_message_size = 10000"))
    a.add_user(USER)
    a.start("store-staff", "mx-1")
    c = Raw(a.addr("mx-1"))
    code, ehlo = c.cmd("EHLO client.test")
    assert "SIZE 10000" in ehlo
    code, text = c.cmd("MAIL FROM:<a@outside.test> SIZE=20000")
    assert (code, text[:5]) == (552, "5.3.4")
    assert c.cmd("MAIL FROM:<a@outside.test>")[0] == 250
    assert c.cmd(f"RCPT TO:<{USER}>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    big = b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 300
    c.send(big + b".\r\n")
    code, text = c.reply()
    assert (code, text[:5]) == (552, "5.3.4")


SMUGGLING = [
    b"\n.\n",
    b"\r.\r",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r\n",
]


@pytest.mark.parametrize("fake_end", SMUGGLING, ids=[repr(s) for s in SMUGGLING])
def test_smuggling_payloads_are_refused_and_never_split(arch_factory, fake_end):
    a = arch_factory()
    a.add_user(USER)
    a.start("store-staff", "mx-1", "antivirus-1", "antispam-1")
    c = Raw(a.addr("mx-1"))
    c.cmd("EHLO client.test")
    assert c.cmd("MAIL FROM:<a@outside.test>")[0] == 250
    assert c.cmd(f"RCPT TO:<{USER}>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    hidden = (
        b"MAIL FROM:<admin@example.test>\r\nRCPT TO:<" + USER.encode() + b">\r\nDATA\r\n"
        b"Subject: smuggled\r\nMessage-ID: <smuggled@x>\r\n\r\nowned\r\n.\r\n"
    )
    c.send(b"Subject: outer\r\nMessage-ID: <outer@x>\r\n\r\nhello" + fake_end + hidden)
    code, text = c.reply()
    assert (code, text[:5]) == (550, "5.5.2"), (code, text)
    # The session is still in sync: the next reply answers the next command.
    assert c.cmd("NOOP")[0] == 250
    # A clean message afterwards is delivered, and it is the only one.
    assert c.cmd("MAIL FROM:<a@outside.test>")[0] == 250
    assert c.cmd(f"RCPT TO:<{USER}>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    assert c.cmd("Subject: clean\r\nMessage-ID: <clean@x>\r\n\r\nok\r\n.")[0] == 250
    got = wait_for(lambda: pop3_messages(a, USER), what="the clean message")
    time.sleep(1)
    assert message_ids(pop3_messages(a, USER)) == ["<clean@x>"]
    assert got


def test_starttls_discards_pipelined_plaintext(mx):
    c = Raw(mx.addr("mx-1"))
    c.cmd("EHLO client.test")
    # The injected MAIL must never be executed after the handshake.
    c.send(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
    code, _ = c.reply()
    assert code == 220
    tls = tls_context().wrap_socket(c.sock, server_hostname="mail.example.test")
    c.sock, c.buf = tls, b""
    # EHLO first: if the injected MAIL had been kept, we would see its
    # reply (or a 503 for the sequence) here instead.
    code, ehlo = c.cmd("EHLO client.test")
    assert code == 250 and "STARTTLS" not in ehlo
    code, _ = c.cmd("RCPT TO:<" + USER + ">")
    assert code == 503, "RCPT accepted: a MAIL from before TLS survived"


def test_overlong_line_and_nul_are_refused_without_desync(mx):
    c = Raw(mx.addr("mx-1"))
    c.cmd("EHLO client.test")
    code, text = c.cmd("NOOP " + "x" * 600)
    assert code == 500
    c.send(b"NOOP \x00\r\n")
    assert c.reply()[0] == 500
    assert c.cmd("NOOP")[0] == 250


def test_too_many_errors_closes_with_421(mx):
    c = Raw(mx.addr("mx-1"))
    c.cmd("EHLO client.test")
    codes = [c.cmd("BOGUS")[0] for _ in range(9)]
    assert set(codes) == {500}
    c.send(b"BOGUS\r\n")
    assert c.reply()[0] == 500
    code, text = c.reply()
    assert (code, text[:5]) == (421, "4.7.0")
    assert c.closed()


def test_command_before_greeting_is_554_and_closed(arch_factory):
    def pause(text):
        return text.replace(
            "max_sessions = 500            # DM12/DM13",
            'max_sessions = 500            # DM12/DM13\ngreet_pause = "1s"',
        )
    a = arch_factory(edit=pause)
    a.add_user(USER)
    a.start("store-staff", "mx-1")
    c = Raw(a.addr("mx-1"), read_banner=False)
    c.send(b"EHLO early.test\r\n")
    code, text = c.reply()
    assert (code, text[:5]) == (554, "5.5.1")
    assert c.closed()
    # A patient client gets the banner.
    c = Raw(a.addr("mx-1"))
    assert c.banner[0] == 220


def test_vrfy_and_expn_do_not_enumerate(mx):
    c = Raw(mx.addr("mx-1"))
    c.cmd("EHLO client.test")
    assert c.cmd(f"VRFY {USER}")[0] == 252
    assert c.cmd("VRFY nobody@example.test")[0] == 252
    assert c.cmd("EXPN staff")[0] == 502
