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

FLOW1 = ["store-staff", "mx-1", "antivirus-1", "antivirus-2", "antispam-1", "antispam-2"]
USER = "alice@example.test"


def strip_trace(message: bytes) -> bytes:
    """The message without the trace headers the stages added (Received;
    the content stages' X-Virus-Scanned and X-Spam-*)."""
    return re.sub(rb"^(?:Received|X-Virus-Scanned|X-Spam-[\w-]+): .*?\r\n(?:[ \t].*?\r\n)*", b"", message, flags=re.M)


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
    arch.start("store-staff", "mx-1")
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


class Sender:
    """Sends `count` messages from `workers` threads at a bounded pace and
    records the Message-IDs that got a 250 (a message refused or cut off
    is the client's to retry, not the gateway's to keep)."""

    def __init__(self, arch, count, subject, workers=10, pause=0.02):
        self.accepted = []
        self.attempted = set()
        self.lock = threading.Lock()
        self.arch, self.subject, self.pause = arch, subject, pause
        self.pool = ThreadPoolExecutor(workers)
        self.futures = [self.pool.submit(self.one, i) for i in range(count)]

    def one(self, i):
        # Like a real client, retry a message that did not get its 250 —
        # as a new message: the gateway may have committed the one whose
        # 250 was lost, and must then deliver it too.
        for _ in range(50):
            msg, msgid = make_message("sender@outside.test", USER, f"{self.subject} {i}")
            with self.lock:
                self.attempted.add(msgid)
            host, port = self.arch.addr("mx-1")
            try:
                with smtplib.SMTP(host, port, timeout=30) as s:
                    s.sendmail("sender@outside.test", [USER], msg)
            except (smtplib.SMTPException, OSError):
                time.sleep(0.1)
                continue
            finally:
                time.sleep(self.pause)
            with self.lock:
                self.accepted.append(msgid)
            return

    def wait_accepted(self, n):
        wait_for(lambda: len(self.accepted) >= n, timeout=60, interval=0.01,
                 what=f"{n} accepted messages")

    def join(self):
        for f in self.futures:
            f.result()
        self.pool.shutdown()
        return list(self.accepted)


def queued_at_start(log):
    """Message counts a node reported on each start."""
    return [int(n) for n in re.findall(r"starting: (\d+) message", log)]


def fast_retry(text):
    """Retries between stages after 1 s, so a test does not wait minutes."""
    for stage in ("mx", "antivirus", "antispam"):
        text += f'\n[stage.{stage}.queue]\nmin_retry = "1s"\nmax_retry = "2s"\n'
    return text


def assert_exactly_once(arch, sender, timeout=120):
    accepted = sender.accepted
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
    # A message whose 250 was cut off by a crash may arrive too (it was
    # committed); a message nobody sent may not.
    assert set(got) <= sender.attempted, "the store holds messages nobody sent"


def test_kill9_of_content_nodes_mid_stream_loses_nothing(arch_factory):
    arch = arch_factory(edit=fast_retry)
    arch.add_user(USER)
    arch.start(*FLOW1)
    sender = Sender(arch, 500, "durable")
    sender.wait_accepted(80)
    arch.kill("antispam-1")
    sender.wait_accepted(160)
    arch.kill("antispam-2")  # now the antivirus nodes hold what arrives
    sender.wait_accepted(240)
    arch.kill("antivirus-1")  # ... and one of them dies holding it
    sender.wait_accepted(300)
    arch.start("antispam-1", "antispam-2", "antivirus-1")
    sender.wait_accepted(400)
    arch.kill("antivirus-2")
    arch.start("antivirus-2")
    accepted = sender.join()
    assert len(accepted) >= 450, f"only {len(accepted)} of 500 accepted"
    # The crash really hit a node with mail in its queue.
    assert queued_at_start(arch.log("antivirus-1"))[-1] > 0
    assert_exactly_once(arch, sender)


def test_kill9_of_mx_mid_load_loses_nothing(arch_factory):
    arch = arch_factory(edit=fast_retry)
    arch.add_user(USER)
    arch.start(*FLOW1)
    arch.kill("antivirus-1")
    arch.kill("antivirus-2")  # mx-1 keeps what it accepts
    sender = Sender(arch, 300, "mx crash")
    sender.wait_accepted(100)
    arch.kill("mx-1")
    time.sleep(0.3)
    arch.start("mx-1")
    sender.wait_accepted(150)
    arch.start("antivirus-1", "antivirus-2")
    accepted = sender.join()
    assert queued_at_start(arch.log("mx-1"))[-1] > 0, "mx-1 restarted with an empty queue"
    assert_exactly_once(arch, sender)


def at_least(messages, n):
    return messages if len(messages) >= n else None


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
    got = wait_for(lambda: at_least(pop3_messages(arch, USER), 10),
                   what="10 messages via antivirus-2")
    assert set(hops_of(got, "antivirus")) == {"antivirus-2"}

    arch.start("antivirus-1")
    time.sleep(6)  # past the time a failed node is skipped
    for i in range(20):
        send(arch, USER, f"spread {i}")
    got = wait_for(lambda: at_least(pop3_messages(arch, USER), 30),
                   what="20 more messages")
    spread = hops_of(got[10:], "antivirus")
    assert spread.count("antivirus-1") >= 3, spread
    assert spread.count("antivirus-2") >= 3, spread
