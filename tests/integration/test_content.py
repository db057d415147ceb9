"""Issue 6: the content stages, antivirus (C) with a real clamd and the
quarantine, antispam (D) with Bayes, rules and GTUBE, through the real
chain mx-1 -> antivirus -> antispam -> store (and msa-1 for flow 4).

clamd is Debian's clamav-daemon with a local signature database only
(tests/integration/clamd.py, started by conftest for antivirus nodes).
"""

import base64
import contextlib
import email.message
import imaplib
import io
import re
import signal
import smtplib
import time
import uuid
import zipfile

import pytest

from clamd import EICAR
from conftest import PASSWORD, message_ids, pop3_messages, tls_context, wait_for, wait_port

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
USER = "alice@example.test"
FLOW1 = ["store-staff", "mx-1", "antivirus-1", "antispam-1"]


def relay_outgoing_to(sink, text):
    """The outgoing stage relays to `sink`, standing for the Internet."""
    return text.replace(
        "[stage.outgoing]\n", f'[stage.outgoing]\nrelay = ["127.0.0.1:{sink.port}"]\n', 1)


def post_queue(text):
    """Cut-through off at the MX and the MSA (config/local.toml has it on):
    the content stages see the message after the 250, the path taken when
    the chain is slow, and quarantine or tag instead of refusing."""
    for stage in ("mx", "msa"):
        text = text.replace(f"[stage.{stage}.cut_through]\nenabled = true",
                            f"[stage.{stage}.cut_through]\nenabled = false", 1)
    assert text.count("enabled = false") >= 2, "config/local.toml changed: no cut-through sections"
    return text


def new_message(subject, body="Hello, just a normal note about lunch.\n", attachment=None,
                sender="sender@outside.test"):
    m = email.message.EmailMessage()
    m["From"] = sender
    m["To"] = USER
    m["Subject"] = subject
    m["Date"] = "Tue, 24 Nov 2026 10:00:00 +0000"
    m["Message-ID"] = f"<{uuid.uuid4().hex}@outside.test>"
    m.set_content(body)
    if attachment:
        name, data, maintype, subtype = attachment
        m.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    raw = m.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return raw, m["Message-ID"]


def eicar_zip():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("readme.com", EICAR)
    return buf.getvalue()


def send(arch, msg, node="mx-1", rcpt=USER):
    with smtplib.SMTP(*arch.addr(node), timeout=60) as s:
        return s.sendmail("sender@outside.test", [rcpt], msg)


@contextlib.contextmanager
def submission(arch, user=USER, node="msa-1"):
    """An SMTP session at the MSA's submission port, after STARTTLS and
    AUTH as `user`."""
    with smtplib.SMTP(*arch.addr(node, "submission"), timeout=30) as s:
        s.starttls(context=tls_context())
        s.login(user, PASSWORD)
        yield s


def quarantine(arch):
    out = arch.palisade("quarantine", "list").stdout
    return [l for l in out.splitlines() if re.match(r"^[0-9A-F]{18}\s", l)]


def imap_folder(arch, folder):
    host, port = arch.addr("store-staff", "imaps")
    m = imaplib.IMAP4_SSL(host, port, ssl_context=tls_context(), timeout=30)
    try:
        m.login(USER, PASSWORD)
        typ, _ = m.select(folder, readonly=True)
        assert typ == "OK"
        typ, data = m.search(None, "ALL")
        out = []
        for num in data[0].split():
            typ, msg = m.fetch(num, "(RFC822)")
            out.append(msg[0][1])
        return out
    finally:
        m.logout()


@pytest.fixture
def flow1(arch):
    arch.add_user(USER)
    arch.start(*FLOW1)
    return arch


@pytest.fixture
def flow1_post_queue(arch_factory):
    arch = arch_factory(edit=post_queue)
    arch.add_user(USER)
    arch.start(*FLOW1)
    return arch


def test_clamd_helper_finds_eicar_in_every_form():
    """The local signature database, straight through INSTREAM: this is
    what the antivirus stage relies on."""
    import tempfile
    from pathlib import Path

    from clamd import Clamd

    c = Clamd(Path(tempfile.mkdtemp(prefix="clamd-")))
    c.start()
    try:
        plain, _ = new_message("plain", body=f"look:\n{EICAR}\n")
        b64, _ = new_message("b64", attachment=("eicar.com", EICAR.encode(), "application", "octet-stream"))
        zipped, _ = new_message("zip", attachment=("eicar.zip", eicar_zip(), "application", "zip"))
        clean, _ = new_message("clean")
        assert c.scan(plain).endswith("FOUND")
        assert EICAR.encode() not in b64
        assert c.scan(b64).endswith("FOUND")
        assert c.scan(zipped).endswith("FOUND")
        assert c.scan(clean) == "stream: OK"
    finally:
        c.stop()


def test_eicar_plain_base64_and_zip_are_quarantined_clean_mail_is_delivered(flow1_post_queue):
    arch = flow1_post_queue
    plain, _ = new_message("eicar plain", body=f"look:\n{EICAR}\n")
    b64, _ = new_message("eicar base64", attachment=("eicar.com", EICAR.encode(), "application", "octet-stream"))
    zipped, _ = new_message("eicar zip", attachment=("eicar.zip", eicar_zip(), "application", "zip"))
    clean, clean_id = new_message("clean note")
    for m in (plain, b64, zipped, clean):
        assert send(arch, m) == {}
    got = wait_for(lambda: pop3_messages(arch, USER), what="the clean message")
    lines = wait_for(lambda: len(quarantine(arch)) >= 3 and quarantine(arch), what="3 quarantined")
    assert len(lines) == 3, lines
    for subject in ("eicar plain", "eicar base64", "eicar zip"):
        line = [l for l in lines if subject in l]
        assert line and "virus" in line[0] and "Eicar" in line[0], (subject, lines)
    time.sleep(2)  # anything infected would have arrived by now
    got = pop3_messages(arch, USER)
    assert message_ids(got) == [clean_id]
    assert b"X-Virus-Scanned: clamd" in got[0]
    assert not any(EICAR.encode() in m for m in got)
    # show: envelope, reason, message; delete forgets it.
    qid = lines[0].split()[0]
    shown = arch.palisade("quarantine", "show", qid).stdout
    assert "Kind: virus" in shown and "Mail-From: <sender@outside.test>" in shown
    assert f"Recipients: {USER}" in shown
    arch.palisade("quarantine", "delete", qid)
    assert len(quarantine(arch)) == 2
    assert arch.palisade("quarantine", "show", qid, check=False).returncode != 0


def test_quarantine_release_reinjects_after_antivirus(flow1_post_queue):
    arch = flow1_post_queue
    msg, mid = new_message("to be released", body=f"false alarm\n{EICAR}\n")
    send(arch, msg)
    qid = wait_for(lambda: quarantine(arch), what="quarantined")[0].split()[0]
    assert pop3_messages(arch, USER) == []
    out = arch.palisade("quarantine", "release", qid).stdout
    assert "released" in out
    got = wait_for(lambda: pop3_messages(arch, USER), what="released delivery")
    assert message_ids(got) == [mid]
    # It went through antispam (headers) but not through the antivirus again.
    assert b"X-Spam-Score:" in got[0]
    assert b"X-Palisade-Quarantine: released" in got[0]
    assert quarantine(arch) == []


def test_gtube_lands_in_junk_with_spam_headers(flow1):
    arch = flow1
    wait_port(arch.addr("store-staff", "imaps"), proc=arch.procs["store-staff"])
    spam, spam_id = new_message("gtube", body=f"test spam\n{GTUBE}\n")
    ham, ham_id = new_message("normal")
    send(arch, spam)
    send(arch, ham)
    junk = wait_for(lambda: imap_folder(arch, "Junk"), what="delivery to Junk")
    assert message_ids(junk) == [spam_id]
    head = junk[0].split(b"\r\n\r\n")[0]
    assert re.search(rb"^X-Spam-Flag: YES", head, re.M)
    assert re.search(rb"^X-Spam-Score: 1\d\.\d\d", head, re.M)
    assert b"GTUBE=+10.00" in head
    inbox = wait_for(lambda: imap_folder(arch, "INBOX"), what="ham in INBOX")
    assert message_ids(inbox) == [ham_id]
    assert re.search(rb"^X-Spam-Flag: NO", inbox[0], re.M)
    # Each score source is counted in the node's metrics.
    import urllib.request

    host, port = arch.addr("antispam-1", "metrics")
    text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
    assert re.search(r'palisade_spam_hits_total\{[^}]*source="gtube"[^}]*\} 1', text), text
    assert re.search(r'palisade_spam_verdicts_total\{[^}]*verdict="tagged"[^}]*\} 1', text), text
    # Below the reject threshold: accepted through cut-through (on in
    # config/local.toml), so mx-1 queued neither message.
    assert cut_through_count(arch, "mx-1", "accepted") == 2
    assert "nrcpt=" not in arch.log("mx-1")


def test_clamd_down_mail_waits_upstream_and_is_delivered_when_it_returns(arch_factory):
    # Retry between stages quickly so the test does not wait 10 s.
    arch = arch_factory(edit=lambda t: t.replace(
        "[stage.mx.limits]", '[stage.mx.queue]\nmin_retry = "1s"\nmax_retry = "2s"\n\n[stage.mx.limits]', 1))
    arch.add_user(USER)
    arch.start(*FLOW1)
    arch.clamd.stop()
    msg, mid = new_message("while clamd is down")
    assert send(arch, msg) == {}  # the MX accepts and queues it
    wait_for(lambda: "Virus scanner unavailable" in arch.log("mx-1") or "451" in arch.log("mx-1"),
             what="antivirus tempfail seen by mx-1")
    assert pop3_messages(arch, USER) == []
    assert quarantine(arch) == []
    arch.clamd.start()
    got = wait_for(lambda: pop3_messages(arch, USER), timeout=60, what="delivery after clamd is back")
    assert message_ids(got) == [mid]
    assert b"X-Virus-Scanned: clamd" in got[0]


def test_spam_train_then_bayes_scores_in_the_stage(flow1, tmp_path):
    arch = flow1
    ham_dir, spam_dir = tmp_path / "ham", tmp_path / "spam"
    ham_dir.mkdir()
    spam_dir.mkdir()
    for i in range(30):
        (ham_dir / f"{i}.eml").write_bytes(new_message(
            f"minutes {i}", body=f"the committee meeting agenda and minutes for week {i}, see the budget draft\n")[0])
        (spam_dir / f"{i}.eml").write_bytes(new_message(
            f"cheap pills {i}", body=f"buy cheap replica watches and pills now, best prices offer {i}\n")[0])
    out = arch.palisade("spam", "train", "--ham", str(ham_dir), "--spam", str(spam_dir))
    assert "trained 30 ham and 30 spam" in out.stdout
    ev = arch.palisade("spam", "eval", "--ham", str(ham_dir), "--spam", str(spam_dir)).stdout
    assert re.search(r"detection rate 100\.00% \(30/30\), false positives 0\.00% \(0/30\)", ev), ev
    assert re.search(r"\d+ msg/s per core", ev)
    cv = arch.palisade("spam", "eval", "--ham", str(ham_dir), "--spam", str(spam_dir), "--folds", "3").stdout
    assert "3-fold cross-validation" in cv
    # The running antispam node reads the trained database at once.
    spam, spam_id = new_message("cheap pills offer", body="buy cheap replica watches and pills now, best prices\n")
    send(arch, spam)
    junk = wait_for(lambda: imap_folder(arch, "Junk"), what="Bayes spam in Junk")
    assert message_ids(junk) == [spam_id]
    assert re.search(rb"BAYES=\+1\d\.\d\d \(p=0\.9", junk[0])


def test_outbound_spam_from_a_local_user_is_held_and_counted(arch_factory, sink):
    def edit(text):
        return post_queue(relay_outgoing_to(sink, text))

    arch = arch_factory(edit=edit)
    arch.add_user(USER)
    arch.start("store-staff", "msa-1", "antivirus-1", "antispam-1", "outgoing-1")
    clean, clean_id = new_message("report", sender=USER)
    spam, _ = new_message("outbound gtube", body=f"{GTUBE}\n", sender=USER)
    with submission(arch) as s:
        s.sendmail(USER, ["friend@remote.test"], clean)
        s.sendmail(USER, ["friend@remote.test"], spam)
    wait_for(lambda: sink.messages, what="clean message at the sink")
    held = wait_for(lambda: [l for l in quarantine(arch) if "outbound-spam" in l], what="held spam")
    assert "outbound gtube" in held[0]
    time.sleep(2)
    assert [m for m in sink.messages if b"outbound gtube" in m[2]] == []
    assert len(sink.messages) == 1 and clean_id.encode() in sink.messages[0][2]


def test_infected_mail_from_a_local_user_gets_a_dsn(arch_factory):
    arch = arch_factory(edit=post_queue)
    arch.add_user(USER)
    arch.add_user("bob@example.test")
    arch.start("store-staff", "msa-1", "antivirus-1", "antispam-1")
    msg, _ = new_message("my infected file", sender=USER,
                         attachment=("eicar.com", EICAR.encode(), "application", "octet-stream"))
    with submission(arch) as s:
        s.sendmail(USER, ["bob@example.test"], msg)
    dsn = wait_for(lambda: pop3_messages(arch, USER), what="DSN to the sender")
    assert b"multipart/report; report-type=delivery-status" in dsn[0]
    assert b"Final-Recipient: rfc822; bob@example.test" in dsn[0]
    assert EICAR.encode() not in dsn[0]
    assert pop3_messages(arch, "bob@example.test") == []
    assert len(quarantine(arch)) == 1


def test_external_infected_sender_never_gets_a_bounce(arch_factory, sink):
    """Backscatter (SPEC §4): nothing leaves for the outside sender; the
    outgoing stage (relaying to a sink standing for the Internet) gets
    nothing, only the quarantine knows."""
    arch = arch_factory(edit=lambda t: post_queue(relay_outgoing_to(sink, t)))
    arch.add_user(USER)
    arch.start(*FLOW1, "outgoing-1")
    msg, _ = new_message("infected from outside", body=f"{EICAR}\n")
    send(arch, msg)
    wait_for(lambda: quarantine(arch), what="quarantined")
    time.sleep(3)
    assert sink.messages == []
    assert pop3_messages(arch, USER) == []


# ---- cut-through (issue 6): verdicts while the client waits -------------

def cut_through(deadline="10s", extra=""):
    """Cut-through on (as in config/local.toml) with this deadline, fast
    retries between stages, and `extra` appended."""
    def edit(text):
        text = text.replace('[stage.mx.cut_through]\nenabled = true\ndeadline = "20s"',
                            f'[stage.mx.cut_through]\nenabled = true\ndeadline = "{deadline}"', 1)
        assert f'deadline = "{deadline}"' in text
        for stage in ("mx", "antivirus"):
            text += f'\n[stage.{stage}.queue]\nmin_retry = "1s"\nmax_retry = "2s"\n'
        return text + extra
    return edit


def cut_through_count(arch, node, outcome):
    import urllib.request

    host, port = arch.addr(node, "metrics")
    text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
    m = re.search(r'palisade_cut_through_total\{[^}]*outcome="' + outcome + r'"[^}]*\} (\d+)', text)
    return int(m.group(1)) if m else 0


def test_cut_through_refuses_eicar_at_end_of_data_and_never_stores_it(arch_factory):
    arch = arch_factory(edit=cut_through())
    arch.add_user(USER)
    arch.start(*FLOW1)
    infected, _ = new_message("eicar cut-through", attachment=("eicar.com", EICAR.encode(), "application", "octet-stream"))
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(arch, infected)
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.1"), refused.value.smtp_error
    assert b"Eicar" in refused.value.smtp_error
    # The sender was told: no quarantine copy, nothing to bounce.
    assert quarantine(arch) == []
    clean, clean_id = new_message("clean cut-through")
    assert send(arch, clean) == {}
    got = wait_for(lambda: pop3_messages(arch, USER), what="clean delivery")
    assert message_ids(got) == [clean_id]
    # mx-1 and antivirus-1 queued nothing: antispam-1 holds the copy.
    assert "nrcpt=" not in arch.log("mx-1"), "mx-1 enqueued a message"
    assert "nrcpt=" not in arch.log("antivirus-1"), "antivirus-1 enqueued a message"
    assert "nrcpt=" in arch.log("antispam-1")
    assert cut_through_count(arch, "mx-1", "rejected-virus") == 1
    assert cut_through_count(arch, "mx-1", "accepted") == 1
    assert cut_through_count(arch, "antivirus-1", "accepted") == 1
    time.sleep(1)
    assert message_ids(pop3_messages(arch, USER)) == [clean_id]
    assert quarantine(arch) == []


def test_cut_through_refuses_spam_over_the_reject_threshold(arch_factory):
    arch = arch_factory(edit=cut_through(extra="\n[stage.antispam.spam]\ncut_through_reject_threshold = 8.0\n"))
    arch.add_user(USER)
    arch.start(*FLOW1)
    spam, _ = new_message("gtube over the reject threshold", body=f"test spam\n{GTUBE}\n")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(arch, spam)
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.1 Rejected as spam: score 1"), refused.value.smtp_error
    assert quarantine(arch) == []
    assert cut_through_count(arch, "mx-1", "rejected-spam") == 1
    assert cut_through_count(arch, "antivirus-1", "rejected-spam") == 1
    ham, ham_id = new_message("plain note")
    assert send(arch, ham) == {}
    got = wait_for(lambda: pop3_messages(arch, USER), what="ham delivery")
    assert message_ids(got) == [ham_id]
    assert imap_folder(arch, "Junk") == []


def test_cut_through_refuses_outbound_spam_to_the_local_user(arch_factory, sink):
    """Flow 4: the compromised account's client is told at once (550); the
    held count still moves, nothing reaches the Internet or the quarantine."""
    arch = arch_factory(edit=lambda t: cut_through()(relay_outgoing_to(sink, t)))
    arch.add_user(USER)
    arch.start("store-staff", "msa-1", "antivirus-1", "antispam-1", "outgoing-1")
    clean, clean_id = new_message("report", sender=USER)
    spam, _ = new_message("outbound gtube", body=f"{GTUBE}\n", sender=USER)
    with submission(arch) as s:
        s.sendmail(USER, ["friend@remote.test"], clean)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            s.sendmail(USER, ["friend@remote.test"], spam)
    assert refused.value.smtp_code == 550 and b"Rejected as spam" in refused.value.smtp_error
    wait_for(lambda: sink.messages, what="clean message at the sink")
    assert cut_through_count(arch, "msa-1", "rejected-spam") == 1
    assert cut_through_count(arch, "msa-1", "accepted") == 1
    time.sleep(1)
    assert len(sink.messages) == 1 and clean_id.encode() in sink.messages[0][2]
    assert quarantine(arch) == []


def test_cut_through_with_antivirus_down_queues_and_delivers_later(arch_factory):
    arch = arch_factory(edit=cut_through())
    arch.add_user(USER)
    arch.start(*FLOW1)
    arch.kill("antivirus-1")
    clean, clean_id = new_message("while antivirus is down")
    assert send(arch, clean) == {}  # accepted and queued at mx-1
    assert "nrcpt=1" in arch.log("mx-1")
    assert cut_through_count(arch, "mx-1", "queued-unavailable") == 1
    assert pop3_messages(arch, USER) == []
    arch.start("antivirus-1")
    got = wait_for(lambda: pop3_messages(arch, USER), timeout=60, what="delivery after antivirus is back")
    assert message_ids(got) == [clean_id]
    assert b"X-Virus-Scanned: clamd" in got[0]


def test_cut_through_with_antispam_stopped_is_queued_at_antivirus_and_delivered(arch_factory):
    """SIGSTOP: antispam-1 accepts connections but never answers, the
    hostile kind of down. antivirus-1 gives up before mx-1's deadline,
    queues the message itself and says so in its 250."""
    arch = arch_factory(edit=cut_through(deadline="4s"))
    arch.add_user(USER)
    arch.start(*FLOW1)
    arch.procs["antispam-1"].send_signal(signal.SIGSTOP)
    try:
        clean, clean_id = new_message("while antispam is stopped")
        started = time.time()
        assert send(arch, clean) == {}
        assert time.time() - started < 4.5, "the client waited past the deadline"
        assert cut_through_count(arch, "antivirus-1", "queued-timeout") == 1
        assert cut_through_count(arch, "mx-1", "queued-timeout") == 1
        assert "nrcpt=" not in arch.log("mx-1")
        assert "nrcpt=1" in arch.log("antivirus-1")
        assert pop3_messages(arch, USER) == []
    finally:
        arch.procs["antispam-1"].send_signal(signal.SIGCONT)
    got = wait_for(lambda: pop3_messages(arch, USER), timeout=60, what="delivery after antispam is back")
    assert message_ids(got) == [clean_id]
    assert re.search(rb"^X-Spam-Flag: NO", got[0], re.M)


def test_cut_through_deadline_after_the_hand_off_delivers_exactly_once(arch_factory):
    """The deadline passes after antivirus-1 has the whole message (its
    clamd is stopped mid-scan): mx-1 queues its own copy, antivirus-1 also
    queues the first once clamd is back. Both carry the same origin, so
    the second is dropped downstream: one copy in the mailbox."""
    arch = arch_factory(edit=cut_through(deadline="3s"))
    arch.add_user(USER)
    arch.start(*FLOW1)
    arch.clamd.proc.send_signal(signal.SIGSTOP)
    try:
        msg, mid = new_message("deadline mid-hand-off")
        assert send(arch, msg) == {}
        assert cut_through_count(arch, "mx-1", "queued-timeout") == 1
        assert "nrcpt=1" in arch.log("mx-1")
        time.sleep(1)  # mx-1's copy reaches antivirus-1 and waits for clamd too
    finally:
        arch.clamd.proc.send_signal(signal.SIGCONT)
    got = wait_for(lambda: pop3_messages(arch, USER), timeout=60, what="delivery")
    assert message_ids(got) == [mid]
    logs = lambda: "".join(arch.log(n) for n in ("antivirus-1", "antispam-1", "store-staff"))
    wait_for(lambda: "duplicate" in logs(), timeout=30, what="the second copy recognised as a duplicate")
    time.sleep(2)
    assert message_ids(pop3_messages(arch, USER)) == [mid]


def test_cut_through_carries_8bitmime_smtputf8_and_dsn_byte_identical(arch_factory):
    from test_chain import strip_trace

    arch = arch_factory(edit=cut_through())
    arch.add_user(USER)
    arch.start(*FLOW1)
    mid = f"<{uuid.uuid4().hex}@outside.test>"
    msg = (f"From: Zoë <sender@outside.test>\r\nTo: {USER}\r\nSubject: Grüße, café ☕\r\n"
           f"Message-ID: {mid}\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n"
           "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
           "Content-Transfer-Encoding: 8bit\r\n\r\n"
           "Crème brûlée, naïve façade.\r\n.leading dot\r\n").encode()
    with smtplib.SMTP(*arch.addr("mx-1"), timeout=60) as s:
        s.ehlo("client.outside.test")
        assert s.has_extn("smtputf8") and s.has_extn("dsn")
        s.sendmail("sender@outside.test", [USER], msg,
                   mail_options=["BODY=8BITMIME", "SMTPUTF8", "RET=HDRS", "ENVID=QQ314159"],
                   rcpt_options=["NOTIFY=FAILURE", f"ORCPT=rfc822;{USER}"])
    got = wait_for(lambda: pop3_messages(arch, USER), what="delivery")
    assert strip_trace(got[0]) == msg, "content changed on the way"
    # Through cut-through, not queued at mx-1 for want of the parameters.
    assert cut_through_count(arch, "mx-1", "accepted") == 1
    assert "nrcpt=" not in arch.log("mx-1")
