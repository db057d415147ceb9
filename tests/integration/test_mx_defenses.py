"""Issue 4: the MX's defense mechanisms (Table I), each shown acting with
the exact reply of SPEC §5 and legitimate mail shown passing.

The MX resolves through a real DNS server (dnsmasq, tests/integration/dns.py)
serving a test zone with MX, A, SPF, DKIM keys, DMARC and a DNSBL zone. The
MX relays to a small SMTP sink here instead of the antivirus pair, so the
tests see exactly what the MX queued (the Authentication-Results header).
Clients connect from 127.0.0.x source addresses other than 127.0.0.1, which
config/local.toml trusts as the gateway host itself.
"""

import re
import socket
import socketserver
import subprocess
import threading
import time
import urllib.request

import pytest

from conftest import BIN, REPO, Raw, wait_for
from dns import DkimKey, DnsServer

USER = "alice@example.test"


# ---- a real DNS zone ------------------------------------------------------

@pytest.fixture(scope="module")
def dkim_key():
    k = DkimKey()
    yield k
    k.cleanup()


@pytest.fixture(scope="module")
def dns(dkim_key):
    zone = [
        # A sender whose SPF covers every loopback client: SPF pass.
        "mx-host=good.test,mx.good.test,10",
        "host-record=mx.good.test,192.0.2.10",
        'txt-record=good.test,"v=spf1 ip4:127.0.0.0/8 -all"',
        'txt-record=_dmarc.good.test,"v=DMARC1; p=none"',
        dkim_key.record("sel", "good.test"),
        # A sender with an MX but no SPF: greylisted.
        "mx-host=plain.test,mx.plain.test,10",
        "host-record=mx.plain.test,192.0.2.11",
        # Only an address record: RFC 5321 implicit MX.
        "host-record=a-only.test,192.0.2.12",
        # SPF that never designates us: fail.
        "mx-host=spf-fail.test,mx.spf-fail.test,10",
        'txt-record=spf-fail.test,"v=spf1 ip4:192.0.2.1 -all"',
        # A bank publishing DMARC p=reject, spoofed in From:.
        "mx-host=bank.test,mx.bank.test,10",
        'txt-record=bank.test,"v=spf1 ip4:192.0.2.1 -all"',
        'txt-record=_dmarc.bank.test,"v=DMARC1; p=reject"',
        # DNSBL bl.test: 127.0.0.2 listed (code 127.0.0.2), 127.0.0.3 with a
        # code the config does not count.
        "host-record=2.0.0.127.bl.test,127.0.0.2",
        "host-record=3.0.0.127.bl.test,127.0.0.99",
    ]
    with DnsServer(zone, broken=("broken.test",)) as d:
        yield d


# ---- a sink standing in for the next stage --------------------------------

class Sink:
    """Accepts everything over SMTP and keeps the messages."""

    def __init__(self):
        self.messages = []
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                w = self.wfile.write
                w(b"220 sink\r\n")
                data = None
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return
                    if data is not None:
                        if line == b".\r\n":
                            sink.messages.append(b"".join(data))
                            data = None
                            w(b"250 ok\r\n")
                        else:
                            data.append(line[1:] if line.startswith(b"..") else line)
                        continue
                    cmd = line[:4].upper()
                    if cmd in (b"EHLO", b"HELO"):
                        w(b"250-sink\r\n250 PIPELINING\r\n")
                    elif cmd == b"DATA":
                        data = []
                        w(b"354 go\r\n")
                    elif cmd == b"QUIT":
                        w(b"221 bye\r\n")
                        return
                    else:
                        w(b"250 ok\r\n")

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def find(self, needle: bytes, timeout=20):
        return wait_for(lambda: [m for m in self.messages if needle in m], timeout=timeout,
                        what=f"message with {needle!r} at the sink")[0]


@pytest.fixture
def sink():
    s = Sink()
    yield s
    s.close()


# ---- the MX under test ----------------------------------------------------

def mx_config(dns, sink, *edits):
    def edit(t):
        t = t.replace("[gateway]\n", f'[gateway]\ndns = "{dns.addr}"\n', 1)
        t = t.replace('[stage.mx]\nnext = "antivirus"\n',
                      f'[stage.mx]\nrelay = ["127.0.0.1:{sink.port}"]\n', 1)
        # Greylisting delays the tests only a little.
        t = t.replace('delay = "5m"', 'delay = "2s"')
        for old, new in edits:
            assert old in t, old
            t = t.replace(old, new, 1)
        return t
    return edit


@pytest.fixture
def make_mx(arch_factory, dns, sink):
    def make(*edits):
        a = arch_factory(edit=mx_config(dns, sink, *edits))
        a.add_user(USER)
        a.start("store-staff", "mx-1")
        return a
    return make


@pytest.fixture
def mx(make_mx):
    return make_mx()


class Smtp(Raw):
    """conftest's raw client, from a chosen loopback source address."""

    def __init__(self, addr, source="127.0.0.5", banner=True):
        super().__init__(addr, read_banner=banner, source=source)

    def envelope(self, sender, rcpt=USER, helo="client.good.test"):
        assert self.cmd(f"EHLO {helo}")[0] == 250
        code, text = self.cmd(f"MAIL FROM:<{sender}>")
        if code != 250:
            return code, text
        return self.cmd(f"RCPT TO:<{rcpt}>")

    def data(self, message: bytes):
        assert self.cmd("DATA")[0] == 354
        body = re.sub(rb"(?m)^\.", b"..", message)
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        self.send(body + b".\r\n")
        return self.reply()


def message(sender, subject="hello", body="Hello Alice.\r\n", extra=""):
    return (f"From: <{sender}>\r\nTo: <{USER}>\r\nSubject: {subject}\r\n"
            f"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{time.time_ns()}@test>\r\n{extra}\r\n{body}").encode()


def code_of(reply):
    code, text = reply
    return code, text[:text.index(" ")] if " " in text else text


def metrics(arch):
    url = "http://%s:%d/metrics" % arch.addr("mx-1", "metrics")
    return urllib.request.urlopen(url, timeout=10).read().decode()


def action_count(arch, mechanism, action):
    m = re.search(
        rf'palisade_defense_actions_total{{node="mx-1",mechanism="{mechanism}",action="{action}"}} (\S+)',
        metrics(arch))
    return float(m.group(1)) if m else 0.0


# ---- legitimate mail, DM30/DM31 -------------------------------------------

def test_legitimate_signed_mail_passes_with_authentication_results(mx, sink, dkim_key):
    c = Smtp(mx.addr("mx-1"))
    # SPF pass: not greylisted (DM22 bypass), accepted at once.
    assert c.envelope("news@good.test")[0] == 250
    signed = dkim_key.sign(message("news@good.test", "signed"), "good.test", "sel")
    code, text = c.data(signed)
    assert code == 250 and "queued as" in text
    got = sink.find(b"Subject: signed")
    head = got.split(b"\r\n\r\n")[0].decode()
    ar = re.search(r"^Authentication-Results: mail\.example\.test;.*?(?=^\S)", head, re.M | re.S)
    assert ar, head
    assert "dkim=pass" in ar.group(0) and "header.d=good.test" in ar.group(0)
    assert "spf=pass" in ar.group(0) and "dmarc=pass" in ar.group(0)
    assert action_count(mx, "DM22", "bypass") >= 1
    assert action_count(mx, "DM31", "record") >= 1


def test_body_modified_copy_gets_dkim_fail(mx, sink, dkim_key):
    signed = dkim_key.sign(message("news@good.test", "tampered", "Pay 10 EUR.\r\n"), "good.test", "sel")
    tampered = signed.replace(b"Pay 10 EUR.", b"Pay 9999 EUR.")
    c = Smtp(mx.addr("mx-1"))
    assert c.envelope("news@good.test")[0] == 250
    assert c.data(tampered)[0] == 250  # p=none: recorded, not refused
    got = sink.find(b"Subject: tampered").decode()
    assert "dkim=fail" in got and "dkim=pass" not in got, got


def test_spf_fail_refused_with_550_5_7_23_when_configured(make_mx):
    a = make_mx(('spf_fail = "record"', 'spf_fail = "reject"'))
    c = Smtp(a.addr("mx-1"))
    assert c.cmd("EHLO client.good.test")[0] == 250
    assert code_of(c.cmd("MAIL FROM:<billing@spf-fail.test>")) == (550, "5.7.23")
    # The default config only records SPF fail.
    assert action_count(a, "DM30", "reject") == 1


def test_dmarc_p_reject_is_honoured_with_550_5_7_1(mx, sink):
    c = Smtp(mx.addr("mx-1"))
    # Envelope from an SPF-pass domain, From: header spoofing the bank.
    assert c.envelope("bulk@good.test")[0] == 250
    assert code_of(c.data(message("security@bank.test", "verify your account"))) == (550, "5.7.1")
    assert action_count(mx, "DM31", "reject") == 1
    assert not [m for m in sink.messages if b"verify your account" in m]


# ---- DM7 relay access ------------------------------------------------------

RELAY_TRICKS = [
    "victim@elsewhere.test",
    "victim%elsewhere.test@example.test",
    "elsewhere.test!victim@example.test",
    '"victim@elsewhere.test"@example.test',
    "victim@[192.0.2.1]",
    "alice@example.test.elsewhere.test",
]


@pytest.mark.parametrize("rcpt", RELAY_TRICKS)
def test_relay_tricks_refused_with_554_5_7_1(mx, rcpt):
    c = Smtp(mx.addr("mx-1"))
    assert c.cmd("EHLO client.good.test")[0] == 250
    assert c.cmd("MAIL FROM:<news@good.test>")[0] == 250
    assert code_of(c.cmd(f"RCPT TO:<{rcpt}>")) == (554, "5.7.1")


def test_local_domain_with_case_and_trailing_dot_is_accepted(mx):
    c = Smtp(mx.addr("mx-1"))
    assert c.cmd("EHLO client.good.test")[0] == 250
    assert c.cmd("MAIL FROM:<news@good.test>")[0] == 250
    assert c.cmd("RCPT TO:<Alice@EXAMPLE.test>")[0] == 250


# ---- DM17, DM19 ------------------------------------------------------------

def test_rfc2505_no_address_disclosure(mx):
    c = Smtp(mx.addr("mx-1"))
    assert c.cmd("EHLO client.good.test")[0] == 250
    assert c.cmd(f"VRFY {USER}")[0] == 252
    assert c.cmd("VRFY nobody@example.test")[0] == 252
    assert c.cmd("EXPN staff")[0] == 502


def test_mta_rules(mx):
    c = Smtp(mx.addr("mx-1"))
    # Before a successful EHLO there are no enhanced status codes (RFC 2034).
    code, text = c.cmd("EHLO localhost")
    assert code == 550 and "need fully-qualified hostname" in text
    code, text = c.cmd("EHLO mail.example.test")
    assert code == 550 and "you are not me" in text
    assert c.cmd("EHLO client.good.test")[0] == 250
    # The sender's domain must exist; DNS failures only tempfail.
    assert code_of(c.cmd("MAIL FROM:<x@nowhere.test>")) == (550, "5.1.8")
    assert code_of(c.cmd("MAIL FROM:<x@broken.test>")) == (450, "4.1.8")
    # Local-domain sender from outside without AUTH: forgery.
    assert code_of(c.cmd("MAIL FROM:<boss@example.test>")) == (550, "5.7.1")
    # An A record is enough (implicit MX); unknown recipients get 550 5.1.1.
    assert c.cmd("MAIL FROM:<x@a-only.test>")[0] == 250
    assert code_of(c.cmd("RCPT TO:<nobody@example.test>")) == (550, "5.1.1")
    assert action_count(mx, "DM19", "reject") == 4
    assert action_count(mx, "DM19", "tempfail") == 1


# ---- DM18 local lists ------------------------------------------------------

def test_local_blacklists_reload_without_restart(make_mx, tmp_path):
    lst = tmp_path / "clients"
    lst.write_text("# blocked\n127.0.0.6\n")
    a = make_mx(("client_blacklist = []",
                 f'client_blacklist = []\nclient_blacklist_file = "{lst}"'),
                ("sender_blacklist = []", 'sender_blacklist = ["spammer.test"]'))
    c = Smtp(a.addr("mx-1"), source="127.0.0.6", banner=False)
    assert code_of(c.reply()) == (554, "5.7.1")
    ok = Smtp(a.addr("mx-1"), source="127.0.0.7")
    assert ok.cmd("EHLO client.good.test")[0] == 250
    assert code_of(ok.cmd("MAIL FROM:<x@spammer.test>")) == (554, "5.7.1")
    assert ok.cmd("MAIL FROM:<news@good.test>")[0] == 250
    # The admin edits the file: no restart needed.
    time.sleep(1.1)
    lst.write_text("127.0.0.7\n")
    wait_for(lambda: Smtp(a.addr("mx-1"), source="127.0.0.6").banner[0] == 220, timeout=10,
             what="127.0.0.6 unlisted")
    c = Smtp(a.addr("mx-1"), source="127.0.0.7", banner=False)
    assert code_of(c.reply()) == (554, "5.7.1")


# ---- DM20 DNSBL ------------------------------------------------------------

def test_dnsbl_refuses_listed_client_naming_the_list(make_mx):
    a = make_mx(("zones = []",
                 'zones = [{ zone = "bl.test", answers = ["127.0.0.2"] },'
                 ' { zone = "broken.test" }]'))
    c = Smtp(a.addr("mx-1"), source="127.0.0.2", banner=False)
    code, text = c.reply()
    assert (code, text[:5]) == (554, "5.7.1") and "bl.test" in text
    # Listed with an answer code the config does not count: not refused;
    # a zone that does not answer never refuses either.
    assert Smtp(a.addr("mx-1"), source="127.0.0.3").banner[0] == 220
    assert Smtp(a.addr("mx-1"), source="127.0.0.4").banner[0] == 220
    assert action_count(a, "DM20", "reject") == 1


# ---- DM22 greylisting ------------------------------------------------------

def test_greylisting_first_attempt_451_retry_after_delay_accepted(mx, sink):
    c = Smtp(mx.addr("mx-1"))
    assert code_of(c.envelope("someone@plain.test")) == (451, "4.7.1")
    c.cmd("RSET")
    # Retrying at once does not help.
    assert c.cmd("MAIL FROM:<someone@plain.test>")[0] == 250
    assert code_of(c.cmd(f"RCPT TO:<{USER}>")) == (451, "4.7.1")
    c.cmd("RSET")
    time.sleep(2.5)
    assert c.cmd("MAIL FROM:<someone@plain.test>")[0] == 250
    assert c.cmd(f"RCPT TO:<{USER}>")[0] == 250
    assert c.data(message("someone@plain.test", "after greylisting"))[0] == 250
    sink.find(b"after greylisting")
    assert action_count(mx, "DM22", "tempfail") == 2
    assert action_count(mx, "DM22", "pass") == 1


def test_spf_pass_sender_is_not_greylisted(mx):
    c = Smtp(mx.addr("mx-1"))
    assert c.envelope("first-time@good.test")[0] == 250


# ---- DM23 regular expressions ----------------------------------------------

RULES = '''[[stage.mx.mechanisms.dm23_regex.rules]]
on = "header:Subject"
pattern = "v[i1]agra"
action = "reject"
[[stage.mx.mechanisms.dm23_regex.rules]]
on = "helo"
pattern = "^[0-9]+-[0-9]+-[0-9]+"
action = "tempfail"
[[stage.mx.mechanisms.dm23_regex.rules]]
on = "header:*"
pattern = "lottery"
action = "tag"
message = "lottery wording"
[stage.mx.mechanisms.dm10_connections]'''


def test_regex_rules_reject_tempfail_and_tag(make_mx, sink):
    a = make_mx(("[stage.mx.mechanisms.dm10_connections]", RULES))
    c = Smtp(a.addr("mx-1"))
    assert c.cmd("EHLO 10-1-2.dsl.good.test")[0] == 451
    assert c.envelope("news@good.test")[0] == 250
    assert code_of(c.data(message("news@good.test", "cheap v1agra"))) == (550, "5.7.1")
    assert c.cmd("MAIL FROM:<news@good.test>")[0] == 250
    assert c.cmd(f"RCPT TO:<{USER}>")[0] == 250
    assert c.data(message("news@good.test", "you won the lottery"))[0] == 250
    got = sink.find(b"you won the lottery")
    assert b"X-Palisade-Rule: lottery wording" in got
    assert action_count(a, "DM23", "tag") == 1


# ---- DM27 spamtraps --------------------------------------------------------

def test_spamtrap_refuses_and_blacklists_the_client(make_mx):
    a = make_mx(("[stage.mx.mechanisms.dm10_connections]",
                 '[stage.mx.mechanisms.dm27_spamtraps]\naddresses = ["trap@example.test"]\n'
                 'blacklist_for = "1h"\n[stage.mx.mechanisms.dm10_connections]'))
    c = Smtp(a.addr("mx-1"), source="127.0.0.8")
    assert c.cmd("EHLO client.good.test")[0] == 250
    assert c.cmd("MAIL FROM:<news@good.test>")[0] == 250
    assert code_of(c.cmd("RCPT TO:<trap@example.test>")) == (554, "5.7.1")
    again = Smtp(a.addr("mx-1"), source="127.0.0.8", banner=False)
    assert code_of(again.reply()) == (554, "5.7.1")
    assert Smtp(a.addr("mx-1"), source="127.0.0.9").banner[0] == 220


# ---- limits: DM8, DM9, DM10, DM11, DM32, DM33, DM34, DM36 -------------------

def test_size_and_recipient_limits(make_mx):
    a = make_mx(("max_message_size = 26214400   # DM8: 25 MiB", "max_message_size = 10000"),
                ("max_recipients = 100          # DM9", "max_recipients = 1"))
    c = Smtp(a.addr("mx-1"))
    assert c.cmd("EHLO client.good.test")[0] == 250
    assert code_of(c.cmd("MAIL FROM:<news@good.test> SIZE=20000")) == (552, "5.3.4")
    assert c.cmd("MAIL FROM:<news@good.test> SIZE=2000")[0] == 250
    assert c.cmd(f"RCPT TO:<{USER}>")[0] == 250
    assert code_of(c.cmd(f"RCPT TO:<{USER}>")) == (452, "4.5.3")


def test_greet_pause_refuses_early_talkers(make_mx):
    a = make_mx(("max_sessions = 500            # DM12/DM13",
                 'max_sessions = 500            # DM12/DM13\ngreet_pause = "1s"'))
    c = Smtp(a.addr("mx-1"), banner=False)
    c.send(b"EHLO impatient.good.test\r\n")
    assert code_of(c.reply()) == (554, "5.5.1")
    assert c.closed()
    assert Smtp(a.addr("mx-1")).banner[0] == 220


def test_simultaneous_connections_per_client(make_mx):
    a = make_mx(("per_client = 20", "per_client = 2"))
    first = [Smtp(a.addr("mx-1"), source="127.0.0.10") for _ in range(2)]
    third = Smtp(a.addr("mx-1"), source="127.0.0.10", banner=False)
    assert code_of(third.reply()) == (421, "4.7.0") and third.closed()
    # Another client is not affected; a closed session frees its slot.
    assert Smtp(a.addr("mx-1"), source="127.0.0.11").banner[0] == 220
    first[0].cmd("QUIT")
    first[0].close()
    time.sleep(0.3)
    assert Smtp(a.addr("mx-1"), source="127.0.0.10").banner[0] == 220
    assert action_count(a, "DM10", "disconnect") == 1


def test_connection_and_message_rate_per_client(make_mx):
    a = make_mx(("connections_per_minute = 120", "connections_per_minute = 3"),
                ("messages_per_minute = 600", "messages_per_minute = 2"))
    for _ in range(3):
        assert Smtp(a.addr("mx-1"), source="127.0.0.12").banner[0] == 220
    c = Smtp(a.addr("mx-1"), source="127.0.0.12", banner=False)
    assert code_of(c.reply()) == (421, "4.7.0")
    m = Smtp(a.addr("mx-1"), source="127.0.0.13")
    assert m.cmd("EHLO client.good.test")[0] == 250
    for _ in range(2):
        assert m.cmd("MAIL FROM:<news@good.test>")[0] == 250
        m.cmd("RSET")
    assert code_of(m.cmd("MAIL FROM:<news@good.test>")) == (421, "4.7.0")
    assert m.closed()


def test_data_rate_slow_and_cut(make_mx):
    a = make_mx(("bytes_per_second = 10485760", "bytes_per_second = 20000"))
    c = Smtp(a.addr("mx-1"))
    assert c.envelope("news@good.test")[0] == 250
    t = time.time()
    assert c.data(message("news@good.test", "big", "x" * 70 + "\r\n") * 1 +
                  (b"y" * 70 + b"\r\n") * 600)[0] == 250
    assert time.time() - t >= 1.5  # ~43 KB at 20 KB/s: slowed to ~2 s
    assert action_count(a, "DM33", "slow") == 1
    b = make_mx(("bytes_per_second = 10485760", "bytes_per_second = 20000"),
                ('action = "slow"', 'action = "cut"'))
    c = Smtp(b.addr("mx-1"))
    assert c.envelope("news@good.test")[0] == 250
    assert code_of(c.data((b"y" * 70 + b"\r\n") * 600)) == (421, "4.7.0")
    assert c.closed()


def test_messages_per_sender(make_mx):
    a = make_mx(("messages = 1000", "messages = 2"))
    c = Smtp(a.addr("mx-1"))
    assert c.cmd("EHLO client.good.test")[0] == 250
    for _ in range(2):
        assert c.cmd("MAIL FROM:<bulk@good.test>")[0] == 250
        c.cmd("RSET")
    assert code_of(c.cmd("MAIL FROM:<bulk@good.test>")) == (450, "4.7.1")
    assert c.cmd("MAIL FROM:<other@good.test>")[0] == 250


def test_bad_rcpt_throttle_tarpits_then_disconnects(make_mx):
    a = make_mx(("tarpit_after = 3", "tarpit_after = 1"),
                ('tarpit_delay = "1s"', 'tarpit_delay = "0.5s"'),
                ("disconnect_after = 10", "disconnect_after = 3"))
    c = Smtp(a.addr("mx-1"))
    assert c.cmd("EHLO client.good.test")[0] == 250
    assert c.cmd("MAIL FROM:<harvest@good.test>")[0] == 250
    assert code_of(c.cmd("RCPT TO:<a1@example.test>")) == (550, "5.1.1")
    t = time.time()
    assert code_of(c.cmd("RCPT TO:<a2@example.test>")) == (550, "5.1.1")
    assert time.time() - t >= 0.45  # tarpit
    assert code_of(c.cmd("RCPT TO:<a3@example.test>")) == (421, "4.7.0")
    assert c.closed()
    assert action_count(a, "DM36", "tarpit") >= 1
    assert action_count(a, "DM36", "disconnect") == 1


# ---- the trusted host and check-config -------------------------------------

def test_trusted_host_skips_greylisting_but_not_relay_control(mx):
    c = Smtp(mx.addr("mx-1"), source="127.0.0.1")
    assert c.envelope("someone@plain.test")[0] == 250
    assert code_of(c.cmd("RCPT TO:<victim@elsewhere.test>")) == (554, "5.7.1")


@pytest.mark.parametrize("snippet, key, words", [
    ("[stage.outgoing.mechanisms.dm22_greylist]\n", "stage.outgoing.mechanisms.dm22_greylist",
     "cannot run on the outgoing stage"),
    ('[stage.antispam.mechanisms.dm20_dnsbl]\nzones = [{ zone = "bl.test", answers = ["listed"] }]\n',
     "stage.antispam.mechanisms.dm20_dnsbl", "cannot run on the antispam stage"),
])
def test_check_config_rejects_impossible_mechanisms(tmp_path, snippet, key, words):
    text = (REPO / "config" / "local.toml").read_text() + "\n" + snippet
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    r = subprocess.run([str(BIN / "palisade"), "check-config", "--config", str(cfg)],
                       capture_output=True, text=True)
    assert r.returncode != 0
    line = text[:text.index(snippet.splitlines()[0])].count("\n") + 1
    assert f"{cfg}:{line}: {key}: " in r.stdout + r.stderr and words in r.stdout + r.stderr


def test_check_config_names_an_unknown_dnsbl_answer_format(tmp_path):
    text = (REPO / "config" / "local.toml").read_text().replace(
        "zones = []", 'zones = [{ zone = "bl.test", answers = ["listed"] }]')
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    r = subprocess.run([str(BIN / "palisade"), "check-config", "--config", str(cfg)],
                       capture_output=True, text=True)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "stage.mx.mechanisms.dm20_dnsbl.zones.0.answers" in out
    assert "unknown DNSBL answer format `listed`" in out
