"""Issue 5: the MSA (stage B), authenticated submission that cannot be
abused, with Python's smtplib and swaks as clients."""

import re
import smtplib
import subprocess
import time

import pytest

from conftest import Raw, PASSWORD, message_ids, pop3_messages, tls_context, wait_for

ALICE = "alice@example.test"
BOB = "bob@example.test"


def to_sink(port):
    def edit(text):
        text = text.replace(
            "[stage.outgoing]\n",
            f'[stage.outgoing]\nrelay = ["127.0.0.1:{port}"]\n', 1)
        text = text.replace("[stage.msa.limits]", '[stage.msa.submission]\nauth_failure_delay = "50ms"\n\n[stage.msa.limits]', 1)
        return text
    return edit


@pytest.fixture
def msa(arch_factory, sink):
    a = arch_factory(edit=to_sink(sink.port))
    a.add_user(ALICE)
    a.add_user(BOB)
    a.palisade("user", "alias", "postmaster@example.test", ALICE)
    a.start("store-staff", "store-students", "msa-1", "antivirus-1", "antispam-1", "outgoing-1")
    a.sink = sink
    return a


def message(frm, to, subject):
    mid = f"<{subject.replace(' ', '-')}-{time.time_ns()}@example.test>"
    return (f"From: <{frm}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n\r\nhi\r\n").encode(), mid


def test_587_starttls_login_send_to_a_local_user(msa):
    msg, mid = message(ALICE, BOB, "local via 587")
    with smtplib.SMTP(*msa.addr("msa-1", "submission"), timeout=30) as s:
        s.ehlo()
        assert not s.has_extn("auth"), "AUTH offered before TLS"
        s.starttls(context=tls_context())
        s.ehlo()
        assert "PLAIN" in s.esmtp_features.get("auth", "").upper()
        s.login(ALICE, PASSWORD)
        s.sendmail(ALICE, [BOB], msg)
    got = wait_for(lambda: pop3_messages(msa, BOB), what="delivery to bob")
    assert message_ids(got) == [mid]
    received = re.findall(rb"^Received: .*?(?=\r\n\S)", got[0], re.M | re.S)
    msa_hop = [r for r in received if b"Palisade msa-1" in r][0]
    assert b"127.0.0.1" not in msa_hop, "the submitter's IP is in the Received header"
    assert b"ESMTPSA" in msa_hop


def test_465_implicit_tls_send_to_the_internet(msa):
    msg, mid = message(ALICE, "friend@elsewhere.test", "remote via 465")
    with smtplib.SMTP_SSL(*msa.addr("msa-1", "submissions"), context=tls_context(), timeout=30) as s:
        s.login(ALICE, PASSWORD)
        s.sendmail(ALICE, ["friend@elsewhere.test"], msg)
    wait_for(lambda: msa.sink.messages, what="the message at the sink behind outgoing")
    frm, rcpts, data = msa.sink.messages[0]
    assert (frm, rcpts) == (ALICE, ["friend@elsewhere.test"])
    assert mid.encode() in data
    hops = re.findall(rb"\(Palisade ([\w-]+)\)", data)
    assert hops[:4] == [b"outgoing-1", b"antispam-1", b"antivirus-1", b"msa-1"]


def test_refusals_with_exact_replies(msa):
    c = Raw(msa.addr("msa-1", "submission"))
    code, ehlo = c.cmd("EHLO client.test")
    assert "AUTH" not in ehlo
    assert c.cmd("AUTH PLAIN AGFsaWNlAHg=")[0] == 538
    code, text = c.cmd("MAIL FROM:<alice@example.test>")
    assert (code, text[:5]) == (530, "5.7.0")

    with smtplib.SMTP(*msa.addr("msa-1", "submission"), timeout=30) as s:
        s.starttls(context=tls_context())
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.login(ALICE, "wrong password")
        assert e.value.smtp_code == 535 and e.value.smtp_error.startswith(b"5.7.8")
        s.login(ALICE, PASSWORD)
        code, text = s.mail(BOB)
        assert (code, text[:5]) == (553, b"5.7.1"), "alice sent as bob"
        code, _ = s.mail("postmaster@example.test")
        assert code == 250, "an alias of alice is hers to send as"
        code, text = s.rcpt("nobody@example.test")
        assert (code, text[:5]) == (550, b"5.1.1")
        s.rset()
        s.mail(ALICE)
        s.rcpt(BOB)
        code, text = s.data(b"From: <bob@example.test>\r\nSubject: forged\r\n\r\nx\r\n")
        assert (code, text[:5]) == (553, b"5.7.1"), "From: header of another user accepted"


def test_brute_force_is_throttled_and_the_20th_attempt_is_not_checked(msa):
    outcomes = []
    for i in range(20):
        password = PASSWORD if i == 19 else f"guess {i}"
        try:
            with smtplib.SMTP_SSL(*msa.addr("msa-1", "submissions"), context=tls_context(),
                                  timeout=30) as s:
                # One AUTH PLAIN per connection (login() would retry with LOGIN).
                s.ehlo()
                s.user, s.password = ALICE, password
                s.auth("PLAIN", s.auth_plain)
                outcomes.append(235)
        except smtplib.SMTPAuthenticationError as e:
            outcomes.append(e.smtp_code)
        except smtplib.SMTPServerDisconnected:
            outcomes.append(421)
        except smtplib.SMTPResponseException as e:
            outcomes.append(e.smtp_code)
    assert outcomes[:10] == [535] * 10
    assert set(outcomes[10:]) == {421}, outcomes
    # The right password on the 20th try was not even checked.
    assert outcomes[19] == 421
    import urllib.request
    url = "http://%s:%d/metrics" % msa.addr("msa-1", "metrics")
    metrics = urllib.request.urlopen(url, timeout=10).read().decode()
    assert 'palisade_auth_total{node="msa-1",result="throttled"} 10' in metrics


def test_swaks_submits_like_a_user_would(msa):
    host, port = msa.addr("msa-1", "submission")
    r = subprocess.run(
        ["swaks", "--server", f"{host}:{port}", "--tls", "--auth", "LOGIN",
         "--auth-user", ALICE, "--auth-password", PASSWORD,
         "--from", ALICE, "--to", BOB, "--header", "Subject: from swaks",
         "--header", "X-Test-Id: swaks-1"],
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "235 2.7.0" in r.stdout
    got = wait_for(lambda: pop3_messages(msa, BOB), what="swaks' message")
    assert len(got) == 1 and b"X-Test-Id: swaks-1" in got[0]


def test_typo_guard_names_the_domain_the_user_meant(arch_factory, sink):
    from dns import DnsServer

    zone = ["mx-host=gmail.com,mx.gmail.com,10", "host-record=mx.gmail.com,127.0.0.9",
            "mx-host=mail.com,mx.mail.com,10", "host-record=mx.mail.com,127.0.0.9"]
    with DnsServer(zone, local=("com", "test")) as dns:
        def edit(text):
            text = to_sink(sink.port)(text)
            return text.replace("[gateway]\n", f'[gateway]\ndns = "127.0.0.1:{dns.port}"\n', 1)
        a = arch_factory(edit=edit)
        a.add_user(ALICE)
        a.start("store-staff", "store-students", "msa-1")
        with smtplib.SMTP_SSL(*a.addr("msa-1", "submissions"), context=tls_context(), timeout=30) as s:
            s.login(ALICE, PASSWORD)
            s.mail(ALICE)
            code, text = s.rcpt("friend@gmial.com")
            assert (code, text[:5]) == (550, b"5.1.2"), (code, text)
            assert b"friend@gmail.com" in text
            # The real domains, and a real domain one edit from a known one.
            assert s.rcpt("friend@gmail.com")[0] == 250
            assert s.rcpt("friend@mail.com")[0] == 250


def test_a_compromised_account_cannot_send_in_bulk(arch_factory, sink):
    """DM34 with stage B's settings: messages per (owned) sender per window."""
    def edit(text):
        return to_sink(sink.port)(text).replace(
            "[stage.msa.mechanisms.dm34_sender_rate]    # per (owned) sender address\nmessages = 300",
            "[stage.msa.mechanisms.dm34_sender_rate]\nmessages = 3")
    a = arch_factory(edit=edit)
    a.add_user(ALICE)
    a.add_user(BOB)
    a.start("store-staff", "store-students", "msa-1", "antivirus-1", "antispam-1")
    with smtplib.SMTP_SSL(*a.addr("msa-1", "submissions"), context=tls_context(), timeout=30) as s:
        s.login(ALICE, PASSWORD)
        for i in range(3):
            msg, _ = message(ALICE, BOB, f"bulk {i}")
            s.sendmail(ALICE, [BOB], msg)
        code, text = s.mail(ALICE)
        assert (code, text[:5]) == (450, b"4.7.1"), (code, text)
