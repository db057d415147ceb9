"""Issue 3 item 3: IMAP4rev1 on the store, through the real chain.

Mail goes in through mx-1 -> antivirus -> antispam -> store-staff with
smtplib, and is read back with Python's imaplib over IMAPS and with
fetchmail, a third-party client.
"""

import imaplib
import os
import re
import shutil
import smtplib
import socket
import subprocess
import threading
import time

import pytest

from conftest import PASSWORD, make_message, tls_context, wait_for

NODES = ["store-staff", "mx-1", "antivirus-1", "antispam-1"]
USER = "alice@example.test"


def imap(arch, user=USER, password=PASSWORD):
    host, port = arch.addr("store-staff", "imaps")
    m = imaplib.IMAP4_SSL(host, port, ssl_context=tls_context(), timeout=30)
    if user:
        m.login(user, password)
    return m


def send(arch, rcpt, subject, body="Hello.\r\n"):
    msg, msgid = make_message("sender@outside.test", rcpt, subject, body)
    host, port = arch.addr("mx-1")
    with smtplib.SMTP(host, port, timeout=30) as s:
        s.sendmail("sender@outside.test", [rcpt], msg)
    return msg, msgid


def inbox_count(arch):
    m = imap(arch)
    try:
        typ, data = m.status("INBOX", "(MESSAGES)")
        assert typ == "OK", data
        return int(re.search(rb"MESSAGES (\d+)", data[0]).group(1))
    finally:
        m.logout()


def start(arch):
    arch.add_user(USER)
    arch.start(*NODES)
    from conftest import wait_port

    wait_port(arch.addr("store-staff", "imaps"), proc=arch.procs["store-staff"])


def test_read_search_flag_move_expunge_with_imaplib(arch):
    start(arch)
    _, msgid = send(arch, USER, "imap one", "First body line.\r\nkeyword: pelican\r\n")
    # Two messages may take different paths through the pairs; wait so the
    # sequence numbers below are known.
    wait_for(lambda: inbox_count(arch) == 1, what="the first message in INBOX")
    send(arch, USER, "imap two", "Second.\r\n")
    wait_for(lambda: inbox_count(arch) == 2, what="two messages in INBOX")

    m = imap(arch)
    typ, caps = m.capability()
    assert b"IDLE" in caps[0] and b"MOVE" in caps[0] and b"QUOTA" in caps[0]

    typ, folders = m.list()
    names = [f.decode().rsplit(" ", 1)[-1].strip('"') for f in folders]
    for name in ["INBOX", "Junk", "Sent", "Drafts", "Trash"]:
        assert name in names, names

    typ, data = m.select("INBOX")
    assert typ == "OK" and data == [b"2"], data

    # Index items and the message itself; PEEK does not mark it read.
    typ, data = m.fetch("1:*", "(UID FLAGS RFC822.SIZE)")
    assert typ == "OK" and len(data) == 2, data
    assert b"\\Seen" not in data[0]
    typ, data = m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT MESSAGE-ID)])")
    assert b"Subject: imap one" in data[0][1] and msgid.encode() in data[0][1], data
    typ, data = m.search(None, "UNSEEN")
    assert data == [b"1 2"], data

    typ, data = m.fetch("1", "(BODY[] ENVELOPE)")
    whole = data[0][1]
    assert b"keyword: pelican" in whole and b"Received: " in whole, whole
    typ, data = m.search(None, "SEEN")
    assert data == [b"1"], "BODY[] sets \\Seen"

    # SEARCH on text and flags; STORE.
    assert m.search(None, "BODY", "pelican")[1] == [b"1"]
    assert m.search(None, "SUBJECT", '"imap two"')[1] == [b"2"]
    assert m.search(None, "OR", "FROM", "nobody", "TO", USER)[1] == [b"1 2"]
    typ, data = m.store("2", "+FLAGS", "(\\Seen \\Flagged)")
    assert typ == "OK" and b"\\Flagged" in data[0], data
    assert m.search(None, "FLAGGED")[1] == [b"2"]
    assert m.search(None, "UNSEEN")[1] == [b""]

    # MOVE to a new folder (by UID), then EXPUNGE a deleted message.
    assert m.create("Receipts")[0] == "OK"
    uid2 = re.search(rb"UID (\d+)", m.fetch("2", "(UID)")[1][0]).group(1).decode()
    typ, data = m.uid("MOVE", uid2, "Receipts")
    assert typ == "OK", data
    # MOVE reports the source message as expunged (RFC 6851).
    assert m.response("EXPUNGE") == ("EXPUNGE", [b"2"])
    assert m.status("Receipts", "(MESSAGES)")[1] == [b'Receipts (MESSAGES 1)']
    m.store("1", "+FLAGS", "\\Deleted")
    typ, data = m.expunge()
    assert typ == "OK" and data == [b"1"], data
    typ, data = m.select("INBOX")
    assert data == [b"0"], data

    typ, data = m.getquotaroot("INBOX")
    assert typ == "OK", data
    m.logout()


def test_idle_reports_a_delivery_within_two_seconds(arch):
    start(arch)
    m = imap(arch)
    m.select("INBOX")
    tag = m._new_tag()
    m.send(tag + b" IDLE\r\n")
    assert m.readline().startswith(b"+"), "IDLE continuation"

    # A second connection notices the delivery as soon as the store has it.
    stored_at = {}

    def watch():
        deadline = time.time() + 60
        while time.time() < deadline:
            if inbox_count(arch) >= 1:
                stored_at["t"] = time.time()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    send(arch, USER, "wake up")
    m.sock.settimeout(60)
    line = m.readline()
    exists_at = time.time()
    watcher.join()
    assert re.match(rb"\* 1 EXISTS", line), line
    assert "t" in stored_at, "the message reached the store"
    assert exists_at - stored_at["t"] < 2.0, (exists_at, stored_at)

    m.send(b"DONE\r\n")
    rest = b""
    while not rest.startswith(tag):
        rest = m.readline()
    assert b"OK" in rest, rest
    m.logout()


def test_bad_credentials_are_refused_alike_and_slowly(arch):
    start(arch)
    for user, password in [(USER, "wrong"), ("nobody@example.test", PASSWORD)]:
        m = imap(arch, user=None)
        t0 = time.time()
        with pytest.raises(imaplib.IMAP4.error) as err:
            m.login(user, password)
        assert "AUTHENTICATIONFAILED" in str(err.value), err.value
        assert time.time() - t0 >= 0.9
        m.shutdown()


def test_imaps_port_never_talks_plaintext(arch):
    start(arch)
    host, port = arch.addr("store-staff", "imaps")
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"a LOGIN alice@example.test secret\r\n")
        s.settimeout(5)
        try:
            data = s.recv(1024)
        except (socket.timeout, ConnectionResetError):
            data = b""
        # Whatever comes back is a TLS alert or nothing, never an IMAP response.
        assert b"OK" not in data and b"NO" not in data and not data.startswith(b"*"), data


@pytest.mark.skipif(shutil.which("fetchmail") is None, reason="fetchmail not installed")
def test_fetchmail_retrieves_the_message_over_imaps(arch, tmp_path):
    start(arch)
    _, msgid = send(arch, USER, "for fetchmail", "Fetched by a real client.\r\n")
    wait_for(lambda: inbox_count(arch) == 1, what="message in INBOX")
    host, port = arch.addr("store-staff", "imaps")
    out = tmp_path / "delivered.mbox"
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        f'poll {host} service {port} protocol IMAP\n'
        f'  user "{USER}" password "{PASSWORD}" is "{os.environ.get("USER", "root")}" here\n'
        f'  ssl no sslcertck keep fetchall\n'
        f'  mda "/bin/sh -c \'cat >> {out}\'"\n'
    )
    rc.chmod(0o600)
    env = dict(os.environ, HOME=str(tmp_path))
    r = subprocess.run(
        ["fetchmail", "-f", str(rc), "--nodetach", "--nosyslog", "-v",
         "--idfile", str(tmp_path / "ids")],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    text = out.read_text(errors="replace")
    assert msgid in text and "Fetched by a real client." in text, r.stdout + r.stderr
    # fetchmail read it without PEEK semantics trouble: the store now has it \Seen.
    m = imap(arch)
    m.select("INBOX")
    assert m.search(None, "SEEN")[1] == [b"1"]
    m.logout()
