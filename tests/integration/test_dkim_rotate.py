"""DKIM key rotation without a restart (issue 7): `palisade dkim rotate`.

A real dnsmasq serves the old selector's record; outgoing-1 delivers to an
SMTP sink through a static route and signs with the old key. Step 1 makes
the new key; step 2 (`--activate`) is refused while DNS lacks its record,
then (dnsmasq restarted on the same port with the new record) rewrites the
configuration and has the running node reload it: the same process signs
the next message with the new selector, mail-auth verifies it, and a
message signed before the switch still verifies against the old record,
which the grace period keeps published.
"""

import re
import shutil
import subprocess
import tempfile
import time
import tomllib
from pathlib import Path

import pytest

from conftest import BIN, SmtpSink, wait_for
from dns import DnsServer, txt_strings
from test_outgoing import outgoing_config

DOMAIN = "example.test"


def record_of(out):
    """The TXT value printed by keygen/rotate (one quoted string for ed25519)."""
    return "".join(re.findall(r'"([^"]*)"', out.split("IN TXT (", 1)[1].split(")", 1)[0]))


def txt_line(selector, value):
    return f"txt-record={selector}._domainkey.{DOMAIN},{txt_strings(value)}"


@pytest.fixture
def rotation(arch_factory):
    if shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq (dnsmasq-base) is not installed")
    keydir = Path(tempfile.mkdtemp(prefix="palisade-dkim-rotate-"))
    old_key = keydir / f"{DOMAIN}.old.pem"
    out = subprocess.run([str(BIN / "palisade"), "dkim", "keygen", DOMAIN, "old",
                          "--algorithm", "ed25519", "--out", str(old_key),
                          "--config", str(Path(__file__).resolve().parents[2] / "config/local.toml")],
                         capture_output=True, text=True, check=True).stdout
    old_record = record_of(out)
    sink = SmtpSink()
    dns = DnsServer([txt_line("old", old_record)]).__enter__()

    edit = outgoing_config(dns.addr, f"""[stage.outgoing.routes]
"dest.test" = ["127.0.0.1:{sink.port}"]

[stage.outgoing.outbound]
dsn_delay_after = "0s"

# The key in service before the rotation.
[[stage.outgoing.outbound.dkim]]
domain = "{DOMAIN}"
selector = "old"
key = "{old_key}"
""")
    arch = arch_factory(edit=edit)
    arch.start("outgoing-1")
    yield arch, sink, dns, old_record, keydir
    arch.stop_all()
    sink.close()
    dns.__exit__(None, None, None)
    shutil.rmtree(keydir, ignore_errors=True)


def send(arch, subject):
    import smtplib
    msg = (f"From: Alice <alice@{DOMAIN}>\r\nTo: <bob@dest.test>\r\nSubject: {subject}\r\n"
           f"Message-ID: <{time.time_ns()}@{DOMAIN}>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\n"
           f"{subject}: hello.\r\n").encode()
    with smtplib.SMTP(*arch.addr("outgoing-1"), timeout=30) as s:
        s.ehlo("antispam-1")
        s.sendmail(f"alice@{DOMAIN}", ["bob@dest.test"], msg)


def received(sink, subject):
    return next((d for _, _, d in sink.messages if f"Subject: {subject}".encode() in d), None)


def verify(dns, data):
    v = subprocess.run([str(BIN / "palisade"), "dkim", "verify", "--dns", dns.addr],
                       input=data, capture_output=True)
    return v.returncode, v.stdout.decode()


def test_rotate_switches_the_running_node_after_dns_publishes_the_key(rotation):
    arch, sink, dns, old_record, keydir = rotation
    pid = arch.procs["outgoing-1"].pid

    send(arch, "before")
    before = wait_for(lambda: received(sink, "before"), what="first message at the sink")
    code, out = verify(dns, before)
    assert code == 0 and f"pass d={DOMAIN} s=old" in out, out

    # Step 1: the new key (the current key's type) beside the old one; no switch yet.
    r = arch.palisade("dkim", "rotate", DOMAIN, "new")
    new_record = record_of(r.stdout)
    assert "k=ed25519" in new_record and new_record != old_record
    assert (keydir / f"{DOMAIN}.new.pem").exists()
    config_before = arch.config.read_text()
    assert [k["selector"] for k in tomllib.loads(config_before)["stage"]["outgoing"]["outbound"]["dkim"]] == ["old"]

    # Step 2 refused while DNS lacks the record: config untouched, old key signs.
    r = arch.palisade("dkim", "rotate", DOMAIN, "new", "--activate", check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "refused" in r.stderr and "no DKIM record" in r.stderr, r.stderr
    assert arch.config.read_text() == config_before
    # ... and refused while DNS publishes a different key there.
    dns.restart([txt_line("old", old_record), txt_line("new", old_record)])
    r = arch.palisade("dkim", "rotate", DOMAIN, "new", "--activate", check=False)
    assert r.returncode == 1 and "another key" in r.stderr, r.stderr
    assert arch.config.read_text() == config_before
    status = arch.palisade("dkim", "status").stdout
    assert re.search(r"pending\s+new\s.*NOT published", status), status

    # The new record published (old one kept): activation goes through.
    dns.restart([txt_line("old", old_record), txt_line("new", new_record)])
    r = arch.palisade("dkim", "rotate", DOMAIN, "new", "--activate")
    assert "now signs with new" in r.stdout and "outgoing-1: reloading" in r.stdout, r.stdout
    cfg_text = arch.config.read_text()
    assert "# The key in service before the rotation." in cfg_text, "comments are kept"
    keys = tomllib.loads(cfg_text)["stage"]["outgoing"]["outbound"]["dkim"]
    assert [(k["selector"], "retire_after" in k) for k in keys] == [("old", True), ("new", False)]
    grace = keys[0]["retire_after"].timestamp() - time.time()
    assert 6.9 * 86400 < grace <= 7 * 86400, grace
    assert wait_for(lambda: "DKIM keys reloaded: signing with example.test=new" in arch.log("outgoing-1"),
                    what="the reload in the node's log")

    # The same process signs the next message with the new selector.
    send(arch, "after")
    after = wait_for(lambda: received(sink, "after"), what="second message at the sink")
    assert arch.procs["outgoing-1"].poll() is None and arch.procs["outgoing-1"].pid == pid
    code, out = verify(dns, after)
    assert code == 0 and f"pass d={DOMAIN} s=new" in out, out
    # The message signed before the switch still verifies: the old record stays.
    code, out = verify(dns, before)
    assert code == 0 and f"pass d={DOMAIN} s=old" in out, out

    status = arch.palisade("dkim", "status").stdout
    assert re.search(r"signing\s+new\s.*: published", status), status
    assert re.search(r"retiring\s+old\s.*keep old\._domainkey\.example\.test published until .*\(in 6 days\)",
                     status), status


def test_reload_with_an_unreadable_key_keeps_the_running_signer(rotation):
    import signal
    arch, sink, dns, _, keydir = rotation
    # A reload whose key file is missing: the node logs it and keeps signing
    # with the key it has (a valid config otherwise: nothing else changes).
    arch.config.write_text(arch.config.read_text().replace(
        f'key = "{keydir / (DOMAIN + ".old.pem")}"', f'key = "{keydir / "gone.pem"}"'))
    arch.procs["outgoing-1"].send_signal(signal.SIGHUP)
    assert wait_for(lambda: "could not reload the DKIM keys, keeping the running one"
                    in arch.log("outgoing-1"), what="the refused reload in the log")
    assert "gone.pem" in arch.log("outgoing-1")
    send(arch, "still-old")
    data = wait_for(lambda: received(sink, "still-old"), what="the message at the sink")
    code, out = verify(dns, data)
    assert code == 0 and f"pass d={DOMAIN} s=old" in out, out
