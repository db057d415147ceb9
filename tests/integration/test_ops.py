"""Issue 9, graceful operations: privilege drop, SIGHUP reload, drain.

Every node here is a real stage process started by the harness; the
tests look at it from outside: /proc/PID/status, SMTP sessions, its
log, `palisade drain`, and the store's mailbox over POP3S.
"""

import os
import pwd
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import BIN, Raw, make_message, message_ids, pop3_messages, wait_for
from test_chain import USER, assert_exactly_once, fast_retry

FLOW1_PAIR = ["store-staff", "mx-1", "mx-2", "antivirus-1", "antivirus-2",
              "antispam-1", "antispam-2"]


def free_privileged_port():
    for port in range(700, 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    pytest.skip("no free port below 1024")


def proc_ids(pid):
    status = open(f"/proc/{pid}/status").read()
    uid = [int(x) for x in re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()]
    gid = [int(x) for x in re.search(r"^Gid:\s+(.*)$", status, re.M).group(1).split()]
    groups = [int(x) for x in re.search(r"^Groups:\s*(.*)$", status, re.M).group(1).split()]
    return uid, gid, groups


def as_user(user):
    """Runs the nodes as `user` (no more allow_root)."""
    def edit(text):
        return text.replace("allow_root = true", f'user = "{user}"')
    return edit


# ---------------------------------------------------------------- privileges --

@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")
def test_node_started_as_root_binds_a_privileged_port_then_runs_as_its_user(arch_factory):
    nobody = pwd.getpwnam("nobody")
    port = free_privileged_port()

    def edit(text):
        text = as_user("nobody")(text)
        # antispam-1 on a port only root may bind.
        return re.sub(r'(\[node\.antispam-1\][^\[]*?smtp = )"127\.0\.0\.1:\d+"',
                      rf'\1"127.0.0.1:{port}"', text, flags=re.S)

    arch = arch_factory(edit=edit)
    # As an admin installs it (docs/deploy.md): the data directory belongs
    # to the nodes' user, below a directory it can traverse.
    os.chmod(arch.workdir, 0o755)
    arch.data.mkdir()
    os.chown(arch.data, nobody.pw_uid, nobody.pw_gid)
    arch.start("antispam-1")
    pid = arch.procs["antispam-1"].pid
    uid, gid, groups = wait_for(lambda: proc_ids(pid) if proc_ids(pid)[0][0] != 0 else None,
                                timeout=10, what="the node to leave root")
    assert uid == [nobody.pw_uid] * 4, uid   # real, effective, saved, fs
    assert gid == [nobody.pw_gid] * 4, gid
    assert groups == [nobody.pw_gid], groups
    # It serves on the privileged port and owns what it created.
    c = Raw(("127.0.0.1", port))
    assert c.banner[0] == 220, c.banner
    assert c.cmd("QUIT")[0] == 221
    queue_dir = arch.data / "antispam-1" / "queue"
    assert os.stat(queue_dir).st_uid == nobody.pw_uid
    assert "running as user nobody" in arch.log("antispam-1")


@pytest.mark.skipif(os.geteuid() != 0, reason="the refusal is for root")
def test_node_started_as_root_without_a_user_refuses_to_start(arch_factory):
    arch = arch_factory(edit=lambda t: t.replace("allow_root = true", ""))
    p = subprocess.run(
        [str(BIN / "palisade-antispam"), "--config", str(arch.config), "--node", "antispam-1"],
        capture_output=True, text=True, timeout=20,
    )
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "refusing to run as root" in p.stderr, p.stderr
    assert 'user = "palisade"' in p.stderr
    assert not (arch.data / "antispam-1" / "queue").exists(), "it opened its queue anyway"


# ---------------------------------------------------------------- reload --

def ehlo_size(s):
    s.ehlo("client.outside.test")
    return int(s.esmtp_features["size"])


def test_sighup_reloads_limits_and_lists_for_new_sessions_open_ones_continue(arch):
    arch.add_user(USER)
    arch.start("store-staff", "mx-1")
    host, port = arch.addr("mx-1")
    big, _ = make_message("spammer@bad.test", USER, "reload", body=("x" * 70 + "\r\n") * 40)

    old = smtplib.SMTP(host, port, timeout=30)
    assert ehlo_size(old) == 26214400

    text = arch.text.replace("max_message_size = 26214400   # DM8: 25 MiB",
                             "max_message_size = 2000")
    text = text.replace("sender_blacklist = []", 'sender_blacklist = ["spammer@bad.test"]', 1)
    assert text != arch.text
    arch.config.write_text(text)
    os.kill(arch.procs["mx-1"].pid, signal.SIGHUP)
    wait_for(lambda: "reloaded" in arch.log("mx-1"), timeout=10, what="the reload log line")

    # A new session sees the new size limit and the new blocklist.
    with smtplib.SMTP(host, port, timeout=30) as new:
        assert ehlo_size(new) == 2000
        code, msg = new.mail("spammer@bad.test")
        assert code == 554 and b"5.7.1" in msg, (code, msg)
        new.rset()
        new.mail("friend@outside.test")
        new.rcpt(USER)
        code, msg = new.data(big)
        assert code == 552, (code, msg)

    # The session opened before the reload finishes with its own settings.
    old.sendmail("spammer@bad.test", [USER], big)
    old.quit()
    # (No antivirus node runs: mx-1 holds that message.)
    assert arch.palisade("queue", "count", "--node", "mx-1").stdout.strip() == "1"

    # An invalid file is refused with a log line; the running one stays.
    arch.config.write_text(text.replace("max_message_size = 2000", 'max_message_size = "lots"'))
    os.kill(arch.procs["mx-1"].pid, signal.SIGHUP)
    wait_for(lambda: "reload failed" in arch.log("mx-1"), timeout=10, what="the refusal")
    assert re.search(r"palisade.toml:\d+: invalid type", arch.log("mx-1").split("reload failed", 1)[1])
    assert arch.procs["mx-1"].poll() is None, "an invalid reload killed the node"
    with smtplib.SMTP(host, port, timeout=30) as after:
        assert ehlo_size(after) == 2000


# ---------------------------------------------------------------- drain --

class PairSender:
    """A trickle of mail to the MX pair, like a client with two MX records
    of equal preference: it picks one, and tries the other on any failure
    (421 included). Records which node answered 250 for each Message-ID."""

    smtp = smtplib.SMTP  # the client class (test_netns connects from a namespace)
    timeout = 30

    def __init__(self, arch, count, subject, pause=0.05):
        self.arch, self.subject, self.pause = arch, subject, pause
        self.accepted = []          # Message-IDs that got a 250
        self.attempted = set()
        self.via = {}               # Message-ID -> node
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(3)
        self.futures = [self.pool.submit(self.one, i) for i in range(count)]

    def one(self, i):
        order = ["mx-1", "mx-2"] if i % 2 == 0 else ["mx-2", "mx-1"]
        for attempt in range(40):
            node = order[attempt % 2]
            msg, msgid = make_message("sender@outside.test", USER, f"{self.subject} {i}")
            with self.lock:
                self.attempted.add(msgid)
            try:
                with self.smtp(*self.arch.addr(node), timeout=self.timeout) as s:
                    s.sendmail("sender@outside.test", [USER], msg)
                    # The 250's time: a QUIT cut off later does not count.
                    at = time.time()
            except (smtplib.SMTPException, OSError):
                time.sleep(0.05)
                continue
            finally:
                time.sleep(self.pause)
            with self.lock:
                self.accepted.append(msgid)
                self.via[msgid] = (node, at)
            return

    def join(self):
        for f in self.futures:
            f.result()
        self.pool.shutdown()
        return list(self.accepted)


def drain_status(arch, node):
    out = arch.palisade("drain", "--status", node).stdout
    return re.search(rf"^{node}: (\w+)", out, re.M).group(1), out


def test_drain_mx1_under_a_trickle_loses_nothing_and_the_peer_takes_new_mail(arch_factory):
    arch = arch_factory(edit=fast_retry)
    arch.add_user(USER)
    arch.start(*FLOW1_PAIR)
    mx1 = arch.addr("mx-1")

    # A session inside a transaction when the drain starts.
    open_tx = smtplib.SMTP(*mx1, timeout=30)
    open_tx.ehlo("client.outside.test")
    open_tx.mail("sender@outside.test")
    open_tx.rcpt(USER)
    idle = Raw(mx1)
    idle.cmd("EHLO idle.outside.test")

    sender = PairSender(arch, 60, "trickle")
    wait_for(lambda: len(sender.accepted) >= 15, timeout=60, what="mail before the drain")
    out = arch.palisade("drain", "mx-1").stdout
    drained_at = time.time()
    assert re.search(r"^mx-1: draining \(flush\)", out, re.M), out

    # New connections: 421 4.3.2 at once.
    c = Raw(mx1)
    assert c.banner[0] == 421 and c.banner[1].startswith("4.3.2"), c.banner
    # The idle session between transactions is closed with the same 421.
    assert idle.reply()[0] == 421
    # The open transaction finishes; the next one is refused.
    msg, in_flight_id = make_message("sender@outside.test", USER, "open at drain")
    code, _ = open_tx.data(msg)
    assert code == 250
    code, text = open_tx.mail("sender@outside.test")
    assert code == 421 and text.startswith(b"4.3.2"), (code, text)
    open_tx.close()

    accepted = sender.join()
    assert len(accepted) == 60
    # Everything accepted after the drain was accepted by mx-2.
    late = [m for m in accepted if sender.via[m][1] > drained_at + 0.5]
    assert late, "the trickle ended before the drain"
    assert {sender.via[m][0] for m in late} == {"mx-2"}

    p = arch.palisade("drain", "mx-1", "--wait", "--timeout", "60", check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    state, out = drain_status(arch, "mx-1")
    assert state == "drained", out
    assert "0 open session(s), 0 message(s) queued" in out
    sender.accepted.append(in_flight_id)
    sender.attempted.add(in_flight_id)
    assert_exactly_once(arch, sender, timeout=60)
    assert arch.procs["mx-1"].poll() is None

    # Back in service.
    arch.palisade("undrain", "mx-1")
    c = Raw(mx1)
    assert c.banner[0] == 220, c.banner
    assert drain_status(arch, "mx-1")[0] == "serving"


def test_drain_keep_holds_the_queue_until_undrain(arch_factory):
    arch = arch_factory(edit=fast_retry)
    arch.add_user(USER)
    arch.start("store-staff", "mx-1", "antispam-1", "antispam-2")
    ids = []
    for i in range(3):
        msg, msgid = make_message("sender@outside.test", USER, f"kept {i}")
        with smtplib.SMTP(*arch.addr("mx-1"), timeout=30) as s:
            s.sendmail("sender@outside.test", [USER], msg)
        ids.append(msgid)
    out = arch.palisade("drain", "mx-1", "--keep").stdout
    assert "draining (keep)" in out or "drained (keep)" in out, out
    # The antivirus pair comes up: mx-1 could deliver, but keeps.
    arch.start("antivirus-1", "antivirus-2")
    state, out = wait_for(lambda: (lambda s: s if s[0] == "drained" else None)(
        drain_status(arch, "mx-1")), timeout=30, what="drained")
    assert "3 message(s) queued" in out, out
    time.sleep(3)  # several retry intervals (fast_retry: 1 s)
    assert arch.palisade("queue", "count", "--node", "mx-1").stdout.strip() == "3"
    assert pop3_messages(arch, USER) == []

    arch.palisade("undrain", "mx-1")
    got = wait_for(lambda: (lambda g: g if len(g) == 3 else None)(pop3_messages(arch, USER)),
                   timeout=60, what="the kept mail")
    assert sorted(message_ids(got)) == sorted(ids)


# ------------------------------------------------- what a reload keeps and renews --

def hup(arch, node, line=None):
    """SIGHUP `node` and wait for its reload log line (or `line`)."""
    line = line or f"reloaded {arch.config}"
    before = arch.log(node).count(line)
    os.kill(arch.procs[node].pid, signal.SIGHUP)
    wait_for(lambda: arch.log(node).count(line) > before, timeout=15, what=f"{node}: {line}")


def banner_code(addr, source):
    c = Raw(addr, read_banner=False, source=source)
    code, text = c.reply()
    c.close()
    return code, text[:5]


def test_client_at_its_rate_limit_stays_limited_across_a_sighup(arch_factory):
    arch = arch_factory(edit=lambda t: t.replace("connections_per_minute = 120",
                                                 "connections_per_minute = 2", 1))
    arch.add_user(USER)
    arch.start("store-staff", "mx-1")
    mx = arch.addr("mx-1")
    # 127.0.0.1 is a trusted network (no limits); .31 is a stranger.
    assert [banner_code(mx, "127.0.0.31")[0] for _ in range(2)] == [220, 220]
    assert banner_code(mx, "127.0.0.31") == (421, "4.7.0")
    hup(arch, "mx-1")
    # The new policy counts on the node's buckets: still limited.
    assert banner_code(mx, "127.0.0.31") == (421, "4.7.0")
    assert banner_code(mx, "127.0.0.32")[0] == 220


def peer_cert(addr, starttls):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if starttls:
        with smtplib.SMTP(*addr, timeout=30) as s:
            s.starttls(context=ctx)
            return s.sock.getpeercert(binary_form=True)
    with socket.create_connection(addr, timeout=30) as raw:
        with ctx.wrap_socket(raw) as tls:
            return tls.getpeercert(binary_form=True)


def new_cert(tmp, name):
    key, cert = tmp / f"{name}.key", tmp / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return key, cert, ssl.PEM_cert_to_DER_cert(cert.read_text())


def test_sighup_renews_the_tls_certificate_of_mx_and_store_a_bad_one_is_refused(arch, tmp_path):
    arch.add_user(USER)
    arch.start("store-staff", "mx-1")
    mx, pop3s = arch.addr("mx-1"), arch.addr("store-staff", "pop3s")
    first = peer_cert(mx, starttls=True)
    # certbot's renewal: new files in place, then a reload.
    key, cert, renewed = new_cert(tmp_path, "renewed.example.test")
    assert renewed != first
    tls_dir = arch.data / "tls"
    os.replace(key, tls_dir / "key.pem")
    os.replace(cert, tls_dir / "cert.pem")
    for node in ("mx-1", "store-staff"):
        hup(arch, node, "reloaded the TLS certificate")
    assert peer_cert(mx, starttls=True) == renewed
    assert peer_cert(pop3s, starttls=False) == renewed
    # A certificate that does not match its key: refused, the renewed one
    # stays in service.
    _, other_cert, _ = new_cert(tmp_path, "mismatch.example.test")
    os.replace(other_cert, tls_dir / "cert.pem")
    hup(arch, "mx-1", "could not reload the TLS certificate")
    assert "do not match" in arch.log("mx-1").split("could not reload the TLS certificate")[-1]
    assert peer_cert(mx, starttls=True) == renewed
    assert arch.procs["mx-1"].poll() is None


def test_store_drain_stops_smtp_intake_keeps_pop3_and_reload_sets_limits(arch):
    arch.add_user(USER)
    arch.start("store-staff")
    store = arch.addr("store-staff")
    msg, msgid = make_message("sender@outside.test", USER, "before reload",
                              body=("x" * 70 + "\r\n") * 60)
    with smtplib.SMTP(*store, timeout=30) as s:
        s.sendmail("sender@outside.test", [USER], msg)
    # Reload: a message size limit for new intake sessions.
    arch.config.write_text(arch.text.replace(
        "[stage.store]\n", "[stage.store]\n\n[stage.store.limits]\nmax_message_size = 3000\n", 1))
    hup(arch, "store-staff")
    with smtplib.SMTP(*store, timeout=30) as s:
        s.ehlo("antispam-1")
        assert int(s.esmtp_features["size"]) == 3000
        with pytest.raises(smtplib.SMTPException):
            s.sendmail("sender@outside.test", [USER], msg)

    out = arch.palisade("drain", "store-staff").stdout
    assert re.search(r"^store-staff: drain(ing|ed) \(flush\)", out, re.M), out
    # New SMTP/LMTP intake: 421 4.3.2 (the mail waits upstream)...
    assert banner_code(store, "127.0.0.1") == (421, "4.3.2")
    # ...while the users still read their mail.
    assert message_ids(pop3_messages(arch, USER)) == [msgid]
    state, out = drain_status(arch, "store-staff")
    assert state == "drained", out
    arch.palisade("undrain", "store-staff")
    assert banner_code(store, "127.0.0.1")[0] == 220


def test_drain_keep_pauses_outgoing_deliveries_then_flush_delivers(arch_factory):
    from conftest import SmtpSink
    from test_content import relay_outgoing_to

    deferring = {"on": True}
    sink = SmtpSink(reply_to_rcpt=lambda r: "451 4.3.0 later" if deferring["on"] else "250 2.1.5 Ok")

    def edit(text):
        text = relay_outgoing_to(sink, text)
        return text.replace('[stage.outgoing.queue]\nmin_retry = "5m"',
                            '[stage.outgoing.queue]\nmin_retry = "1s"', 1).replace(
                                'max_retry = "1h"', 'max_retry = "2s"', 1)

    try:
        arch = arch_factory(edit=edit)
        arch.start("outgoing-1")
        out1 = arch.addr("outgoing-1")
        for i in range(3):
            msg, _ = make_message(USER, "bob@remote.test", f"outgoing kept {i}")
            with smtplib.SMTP(*out1, timeout=30) as s:
                s.ehlo("antispam-1")
                s.sendmail(USER, ["bob@remote.test"], msg)
        count = lambda: arch.palisade("queue", "count", "--node", "outgoing-1").stdout.strip()
        assert count() == "3"
        out = arch.palisade("drain", "outgoing-1", "--keep").stdout
        assert "(keep)" in out, out
        # The destination takes mail now; the drained node keeps its queue.
        deferring["on"] = False
        wait_for(lambda: drain_status(arch, "outgoing-1")[0] == "drained", timeout=30,
                 what="drained (keep)")
        # (The sink records deferred transactions too, with no recipient.)
        delivered = lambda: [m for m in sink.messages if m[1]]
        time.sleep(4)  # several retry intervals (1-2 s)
        assert delivered() == []
        assert count() == "3"
        # `--flush`: it delivers everything, then reports drained.
        p = arch.palisade("drain", "outgoing-1", "--flush", "--wait", "--timeout", "60",
                          check=False)
        assert p.returncode == 0, p.stdout + p.stderr
        assert len(delivered()) == 3
        assert count() == "0"
    finally:
        sink.close()


def test_sighup_gives_the_antivirus_filter_its_new_scanner_policy(arch_factory):
    """Content-filter settings reload too: with no clamd answering, the
    default policy tempfails; after a reload to accept-tagged the same
    message is accepted (tagged Unscanned), without a restart."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens there
    head = '[stage.antivirus]\nnext = "antispam"\n'
    virus = f'\n[stage.antivirus.virus]\nclamd = ["127.0.0.1:{dead}"]\nscan_timeout = "2s"\n'
    arch = arch_factory(edit=lambda t: t.replace(head, head + virus, 1))
    arch.start("antivirus-1")
    msg, _ = make_message("sender@outside.test", USER, "scanner away")

    def send():
        with smtplib.SMTP(*arch.addr("antivirus-1"), timeout=30) as s:
            s.ehlo("mx-1.example.test")
            s.sendmail("sender@outside.test", [USER], msg)

    with pytest.raises(smtplib.SMTPDataError) as refused:
        send()
    assert refused.value.smtp_code == 451
    arch.config.write_text(arch.text.replace(
        virus, virus + 'on_scanner_unavailable = "accept-tagged"\n', 1))
    hup(arch, "antivirus-1", "reloaded the antivirus scanner and limits")
    send()
    assert arch.palisade("queue", "count", "--node", "antivirus-1").stdout.strip() == "1"
    assert "passing the message UNSCANNED" in arch.log("antivirus-1")


def test_sighup_gives_the_antispam_filter_its_new_thresholds(arch_factory):
    """The antispam stage's thresholds reload: the same ordinary message
    is ham before and tagged spam after a reload that lowers the tag
    threshold below any score, without a restart (same PID)."""
    arch = arch_factory()
    arch.start("antispam-1")
    pid = arch.procs["antispam-1"].pid
    msg, _ = make_message("sender@outside.test", USER, "an ordinary note")

    def send():
        with smtplib.SMTP(*arch.addr("antispam-1"), timeout=30) as s:
            s.ehlo("antivirus-1.example.test")
            s.sendmail("sender@outside.test", [USER], msg)

    send()
    assert wait_for(lambda: " ham" in arch.log("antispam-1"), what="the ham verdict")
    assert "tagged spam" not in arch.log("antispam-1")
    head = '[stage.antispam]\n'
    arch.config.write_text(arch.text.replace(
        head, '[stage.antispam.spam]\ntag_threshold = -1000.0\n\n' + head, 1))
    hup(arch, "antispam-1", "reloaded the antispam rules and thresholds")
    send()
    assert wait_for(lambda: "tagged spam" in arch.log("antispam-1"), what="the tagged verdict")
    assert arch.procs["antispam-1"].pid == pid and arch.procs["antispam-1"].poll() is None
