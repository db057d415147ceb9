"""Issue 2: the staged chain end to end with real clients.

Flow 1 (mx -> antivirus -> antispam -> store) with Python's smtplib and
poplib over TLS, durability under kill -9, and failover inside a pair.
"""

import re
import signal
import smtplib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from conftest import make_message, message_ids, pop3_messages, wait_for

FLOW1 = ["mx-1", "antivirus-1", "antivirus-2", "antispam-1", "antispam-2", "store-staff"]
USER = "alice@example.test"


def strip_trace(message: bytes) -> bytes:
    """The message without the Received headers the stages added."""
    return re.sub(rb"^Received: .*?\r\n(?:[ \t].*?\r\n)*", b"", message, flags=re.M)


def send(arch, rcpt, subject, body="Hello.\r\n", node="mx-1"):
    msg, msgid = make_message("sender@outside.test", rcpt, subject, body)
    host, port = arch.addr(node)
    with smtplib.SMTP(host, port, timeout=30) as s:
        s.sendmail("sender@outside.test", [rcpt], msg)
    return msg, msgid


def test_flow1_message_arrives_byte_identical_with_every_hop(arch):
    arch.add_user(USER)
    arch.start(*FLOW1)
    body = "Line one.\r\n.leading dot survives\r\n\r\nUTF-8 stays 8bit: caf\u00e9\r\n"
    msg, msgid = make_message("sender@outside.test", USER, "flow 1", body)
    msg = msg.replace(b"caf\\u00e9", "café".encode())
    host, port = arch.addr("mx-1")
    with smtplib.SMTP(host, port, timeout=30) as s:
        s.ehlo("client.outside.test")
        assert s.has_extn("starttls"), "the MX offers STARTTLS"
        s.sendmail("sender@outside.test", [USER], msg, mail_options=["BODY=8BITMIME"])

    got = wait_for(lambda: pop3_messages(arch, USER), what="delivery into the store")
    assert len(got) == 1
    assert strip_trace(got[0]) == msg, "content changed on the way"
    received = re.findall(rb"^Received: (.*?\r\n(?:[ \t].*?\r\n)*)", got[0], re.M)
    hops = [re.search(rb"\(Palisade ([\w-]+)\)", r).group(1).decode() for r in received]
    # Newest first: store, antispam, antivirus, mx.
    assert hops[0] == "store-staff"
    assert hops[1].startswith("antispam-")
    assert hops[2].startswith("antivirus-")
    assert hops[3] == "mx-1"
    for r in received:
        assert re.search(rb" id [0-9A-F]{12}", r), f"no queue id in {r!r}"
        assert re.search(rb"; \w{3}, \d+ \w{3} \d{4} \d\d:\d\d:\d\d \+0000", r), r
    assert message_ids(got) == [msgid]


def test_unknown_recipient_and_relay_refused_at_rcpt(arch):
    arch.add_user(USER)
    arch.start("mx-1")
    host, port = arch.addr("mx-1")
    with smtplib.SMTP(host, port, timeout=30) as s:
        s.ehlo("client.outside.test")
        s.mail("sender@outside.test")
        code, text = s.rcpt("nobody@example.test")
        assert code == 550 and text.startswith(b"5.1.1"), (code, text)
        code, text = s.rcpt("victim@elsewhere.test")
        assert code == 554 and text.startswith(b"5.7.1"), (code, text)
        code, _ = s.rcpt(USER)
        assert code == 250


def send_many(arch, count, subject, workers=25):
    """Sends `count` messages concurrently; returns the Message-IDs that got
    a 250 (messages refused or cut off are not the gateway's to keep)."""
    accepted = []
    lock = threading.Lock()

    def one(i):
        msg, msgid = make_message("sender@outside.test", USER, f"{subject} {i}")
        host, port = arch.addr("mx-1")
        try:
            with smtplib.SMTP(host, port, timeout=30) as s:
                s.sendmail("sender@outside.test", [USER], msg)
        except (smtplib.SMTPException, OSError):
            return
        with lock:
            accepted.append(msgid)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(count)))
    return accepted


def assert_exactly_once(arch, accepted, timeout=120):
    def all_there():
        got = message_ids(pop3_messages(arch, USER))
        return got if set(accepted) <= set(got) else None

    try:
        got = wait_for(all_there, timeout=timeout, interval=1.0, what="every accepted message")
    except TimeoutError:
        got = message_ids(pop3_messages(arch, USER))
        missing = set(accepted) - set(got)
        raise AssertionError(f"{len(missing)} accepted message(s) lost, e.g. {sorted(missing)[:3]}")
    dupes = {m for m in got if got.count(m) > 1}
    assert not dupes, f"{len(dupes)} message(s) delivered twice"
    assert set(got) == set(accepted), "the store holds messages nobody sent"


def test_kill9_of_content_nodes_mid_stream_loses_nothing(arch):
    arch.add_user(USER)
    arch.start(*FLOW1)
    result = {}
    sender = threading.Thread(target=lambda: result.setdefault("ok", send_many(arch, 500, "durable")))
    sender.start()
    time.sleep(1.0)
    arch.kill("antivirus-1")
    time.sleep(0.5)
    arch.kill("antispam-1")
    time.sleep(1.0)
    arch.start("antivirus-1", "antispam-1")
    time.sleep(1.0)
    arch.kill("antispam-1")
    arch.start("antispam-1")
    sender.join()
    accepted = result["ok"]
    assert len(accepted) >= 450, f"only {len(accepted)} of 500 accepted"
    assert_exactly_once(arch, accepted)


def test_kill9_of_mx_mid_load_loses_nothing(arch):
    arch.add_user(USER)
    arch.start(*FLOW1)
    result = {}
    sender = threading.Thread(target=lambda: result.setdefault("ok", send_many(arch, 300, "mx crash")))
    sender.start()
    time.sleep(1.0)
    arch.kill("mx-1")
    time.sleep(0.5)
    arch.start("mx-1")
    sender.join()
    accepted = result["ok"]
    assert len(accepted) > 0
    assert_exactly_once(arch, accepted)


def hops_of(messages, stage):
    out = []
    for m in messages:
        out += re.findall(rb"\(Palisade (" + stage.encode() + rb"-\d)\)", m)
    return [h.decode() for h in out]


def test_failover_to_the_peer_and_load_spreads_again(arch):
    arch.add_user(USER)
    arch.start(*FLOW1)
    arch.kill("antivirus-1", signal.SIGTERM)
    for i in range(10):
        send(arch, USER, f"failover {i}")
    got = wait_for(lambda: (m := pop3_messages(arch, USER)) if len(m) >= 10 else None,
                   what="10 messages via antivirus-2")
    assert set(hops_of(got, "antivirus")) == {"antivirus-2"}

    arch.start("antivirus-1")
    time.sleep(6)  # past the time a failed node is skipped
    for i in range(20):
        send(arch, USER, f"spread {i}")
    got = wait_for(lambda: (m := pop3_messages(arch, USER)) if len(m) >= 30 else None,
                   what="20 more messages")
    spread = hops_of(got[10:], "antivirus")
    assert spread.count("antivirus-1") >= 3, spread
    assert spread.count("antivirus-2") >= 3, spread
