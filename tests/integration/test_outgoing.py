"""Stage F (outgoing): MX routing, failover, retries, TLS policy, DKIM, DSNs.

Runs a real DNS server (dnsmasq) on loopback with test zones whose MX
hosts are 127.0.0.x addresses, and small SMTP sinks on those addresses at
one port (the config's `outbound.smtp_port`, a test/lab setting). Only the
outgoing-1 node runs; the test submits to it like the antispam pair would,
and a sink stands on the antivirus-1 address to receive DSNs re-injected
into the chain.
"""

import shutil
import smtplib
import socket
import socketserver
import ssl
import urllib.request
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import BIN, port_free

SINK_PORT_BASE = 30025


class Sink:
    """A tiny SMTP server on (ip, port). mode: ok | greylist | reject | slow.
    tls: an ssl.SSLContext (server side) to offer STARTTLS with."""

    def __init__(self, ip, port, mode="ok", delay=0.0, tls=None):
        self.ip, self.port, self.mode, self.delay, self.tls = ip, port, mode, delay, tls
        self.tls_sessions = 0
        self.messages = []  # (mail_from, [rcpts], data)
        self.seen = set()
        self.transcript = []
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                w = lambda s: self.wfile.write((s + "\r\n").encode())
                w("220 sink ESMTP")
                mail_from, rcpts = None, []
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return
                    cmd = line.decode(errors="replace").rstrip("\r\n")
                    sink.transcript.append(cmd)
                    up = cmd.upper()
                    if up.startswith("EHLO"):
                        w("250-sink")
                        if sink.tls and not isinstance(self.request, ssl.SSLSocket):
                            w("250-STARTTLS")
                        w("250-PIPELINING")
                        w("250 8BITMIME")
                    elif up == "STARTTLS" and sink.tls:
                        w("220 2.0.0 ready to start TLS")
                        self.wfile.flush()
                        try:
                            self.request = sink.tls.wrap_socket(self.request, server_side=True)
                        except (ssl.SSLError, OSError):
                            return  # the client refused our certificate
                        sink.tls_sessions += 1
                        self.rfile = self.request.makefile("rb")
                        self.wfile = self.request.makefile("wb", buffering=0)
                        mail_from, rcpts = None, []
                    elif up.startswith("HELO"):
                        w("250 sink")
                    elif up.startswith("MAIL FROM:"):
                        mail_from, rcpts = cmd[10:].split(" ")[0].strip("<>"), []
                        w("250 2.1.0 ok")
                    elif up.startswith("RCPT TO:"):
                        rcpt = cmd[8:].split(" ")[0].strip("<>")
                        if sink.mode == "reject":
                            w("550 5.1.1 <%s>: no such user here" % rcpt)
                        elif sink.mode == "greylist" and rcpt not in sink.seen:
                            sink.seen.add(rcpt)
                            w("451 4.7.1 Greylisted, please try again later")
                        else:
                            rcpts.append(rcpt)
                            w("250 2.1.5 ok")
                    elif up == "DATA":
                        if not rcpts:
                            w("554 5.5.1 no valid recipients")
                            continue
                        w("354 go ahead")
                        data = b""
                        while True:
                            l = self.rfile.readline()
                            if not l:
                                return  # connection lost mid-DATA: nothing kept
                            if l == b".\r\n":
                                break
                            data += l[1:] if l.startswith(b"..") else l
                        if sink.delay:
                            time.sleep(sink.delay)
                            # A client that died while we waited never got
                            # our 250: a real server would not deliver.
                            self.request.setblocking(False)
                            try:
                                if self.request.recv(1, socket.MSG_PEEK) == b"":
                                    return
                            except BlockingIOError:
                                pass
                            finally:
                                self.request.setblocking(True)
                        sink.messages.append((mail_from, rcpts, data))
                        w("250 2.0.0 queued")
                    elif up == "RSET":
                        mail_from, rcpts = None, []
                        w("250 ok")
                    elif up == "NOOP":
                        w("250 ok")
                    elif up == "QUIT":
                        w("221 bye")
                        return
                    else:
                        w("502 5.5.2 not implemented")

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server((ip, port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def rcpts(self):
        return [r for _, rs, _ in self.messages for r in rs]


def free_udp_tcp_port():
    # Below test_audit's 26000-28000 (files may run side by side).
    for p in range(25353, 26000):
        if port_free(p):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", p))
                    return p
                except OSError:
                    continue
    raise RuntimeError("no port for dnsmasq")


class Dns:
    def __init__(self, lines):
        self.dir = Path(tempfile.mkdtemp(prefix="palisade-dns-"))
        self.port = free_udp_tcp_port()
        conf = self.dir / "zones.conf"
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen(
            ["dnsmasq", "--no-daemon", f"--port={self.port}", "--listen-address=127.0.0.1",
             "--bind-interfaces", "--no-resolv", "--no-hosts", f"--conf-file={conf}",
             "--log-facility=-"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(0.3)
        assert self.proc.poll() is None, "dnsmasq did not start"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def world(arch_factory):
    if shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq (dnsmasq-base) is not installed")
    port = next(p for p in range(SINK_PORT_BASE, SINK_PORT_BASE + 500)
                if all(port_free_on(f"127.0.0.{i}", p) for i in range(2, 10)))
    sinks = {
        "multi2": Sink("127.0.0.3", port),            # secondary MX (primary .2 is down)
        "grey": Sink("127.0.0.4", port, "greylist"),
        "reject": Sink("127.0.0.5", port, "reject"),
        "secure": Sink("127.0.0.6", port),             # no STARTTLS, domain requires TLS
        "slow": Sink("127.0.0.7", port, delay=4.0),
        "plain": Sink("127.0.0.8", port),
    }
    keydir = Path(tempfile.mkdtemp(prefix="palisade-dkim-"))
    key = keydir / "example.test.sel1.pem"
    out = subprocess.run([str(BIN / "palisade"), "dkim", "keygen", "example.test", "sel1",
                          "--algorithm", "ed25519", "--out", str(key),
                          "--config", str(Path(__file__).resolve().parents[2] / "config/local.toml")],
                         capture_output=True, text=True, check=True).stdout
    record = out.split('IN TXT ( "')[1].split('"')[0]
    # Rotation: example.test lists sel0 then sel1, both published: the last
    # published (sel1) signs. students.example.test lists old then new, only
    # old published: old keeps signing until new is visible in DNS.
    records = {}
    for dom, sel in [("example.test", "sel0"), ("students.example.test", "old"),
                     ("students.example.test", "new")]:
        o = subprocess.run([str(BIN / "palisade"), "dkim", "keygen", dom, sel,
                            "--algorithm", "ed25519", "--out", str(keydir / f"{dom}.{sel}.pem"),
                            "--config", str(Path(__file__).resolve().parents[2] / "config/local.toml")],
                           capture_output=True, text=True, check=True).stdout
        records[(dom, sel)] = o.split('IN TXT ( "')[1].split('"')[0]
    dns = Dns([
        "local=/test/",                                # authoritative: NXDOMAIN/NODATA, not REFUSED
        "mx-host=multi.test,mx1.multi.test,10",
        "mx-host=multi.test,mx2.multi.test,20",
        "host-record=mx1.multi.test,127.0.0.2",
        "host-record=mx2.multi.test,127.0.0.3",
        "mx-host=grey.test,mx.grey.test,10",
        "host-record=mx.grey.test,127.0.0.4",
        "mx-host=reject.test,mx.reject.test,10",
        "host-record=mx.reject.test,127.0.0.5",
        "mx-host=secure.test,mx.secure.test,10",
        "host-record=mx.secure.test,127.0.0.6",
        "mx-host=slow.test,mx.slow.test,10",
        "host-record=mx.slow.test,127.0.0.7",
        "host-record=implicit.test,127.0.0.8",       # no MX: implicit MX
        "mx-host=null.test,.,0",                       # RFC 7505 null MX
        "server=/servfail.test/127.0.0.1#9",           # upstream dead: SERVFAIL
        f'txt-record=sel1._domainkey.example.test,"{record}"',
        f'txt-record=sel0._domainkey.example.test,"{records[("example.test", "sel0")]}"',
        f'txt-record=old._domainkey.students.example.test,"{records[("students.example.test", "old")]}"',
    ])

    def edit(text):
        text = text.replace('hostname = "mail.example.test"',
                            f'hostname = "mail.example.test"\ndns = "127.0.0.1:{dns.port}"')
        text = text.replace('min_retry = "5m"', 'min_retry = "1s"').replace('max_retry = "1h"', 'max_retry = "2s"')
        dkim_keys = "".join(
            f'[[stage.outgoing.outbound.dkim]]\ndomain = "{domain}"\nselector = "{selector}"\n'
            f'key = "{path}"\n\n'
            for domain, selector, path in [
                ("example.test", "sel0", keydir / "example.test.sel0.pem"),
                ("example.test", "sel1", key),
                ("students.example.test", "old", keydir / "students.example.test.old.pem"),
                ("students.example.test", "new", keydir / "students.example.test.new.pem"),
            ]
        )
        text = text.replace("[stage.store]\n", f"""[stage.outgoing.outbound]
smtp_port = {port}
require_tls = ["secure.test"]
dsn_delay_after = "1s"

{dkim_keys}[stage.store]
""")
        return text

    arch = arch_factory(edit=edit)
    # A sink where the antivirus pair would be: DSNs re-enter the chain there.
    av = [Sink(*arch.addr("antivirus-1")), Sink(*arch.addr("antivirus-2"))]
    arch.start("outgoing-1")
    yield arch, sinks, av, dns
    arch.stop_all()
    for s in list(sinks.values()) + av:
        s.stop()
    dns.stop()
    shutil.rmtree(keydir, ignore_errors=True)


def port_free_on(ip, port):
    with socket.socket() as s:
        try:
            s.bind((ip, port))
            return True
        except OSError:
            return False


def outgoing_config(dns_addr, outgoing_toml):
    """An `edit` for arch_factory: nodes resolve through `dns_addr`, retries
    come after 1-2 s, and `outgoing_toml` (stage F's settings) is added."""
    def edit(text):
        text = text.replace('hostname = "mail.example.test"',
                            f'hostname = "mail.example.test"\ndns = "{dns_addr}"')
        text = text.replace('min_retry = "5m"', 'min_retry = "1s"').replace('max_retry = "1h"', 'max_retry = "2s"')
        return text.replace("[stage.store]\n", outgoing_toml + "\n[stage.store]\n")
    return edit


def submit(arch, rcpts, sender="alice@example.test", origin=None, subject="test"):
    msg = (f"From: Alice <{sender}>\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n"
           f"Message-ID: <{time.time_ns()}@example.test>\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n\r\n"
           "Hello from the outgoing test.\r\n").encode()
    with smtplib.SMTP(*arch.addr("outgoing-1"), timeout=30) as s:
        s.ehlo("antispam-1")
        opts = [f"XORIGIN={origin}"] if origin else []
        s.sendmail(sender, rcpts, msg, mail_options=opts)


def wait_for(cond, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return False


def queue_list(arch):
    return arch.palisade("queue", "list", "--node", "outgoing-1").stdout


def test_secondary_mx_takes_mail_when_primary_is_down(world):
    arch, sinks, _, _ = world
    submit(arch, ["bob@multi.test"])
    assert wait_for(lambda: "bob@multi.test" in sinks["multi2"].rcpts())
    assert "127.0.0.2" in arch.log("outgoing-1"), "the primary MX must have been tried first"


def test_implicit_mx_and_dkim_signature_verifies(world):
    arch, sinks, _, dns = world
    submit(arch, ["carol@implicit.test"])
    assert wait_for(lambda: sinks["plain"].messages)
    data = sinks["plain"].messages[0][2]
    assert data.startswith(b"DKIM-Signature:"), data[:200]
    v = subprocess.run([str(BIN / "palisade"), "dkim", "verify", "--dns", f"127.0.0.1:{dns.port}"],
                       input=data, capture_output=True)
    assert v.returncode == 0, v.stdout + v.stderr
    assert b"pass d=example.test s=sel1" in v.stdout
    # A tampered body must fail: the check can fail.
    bad = data.replace(b"Hello from", b"Jello from")
    v = subprocess.run([str(BIN / "palisade"), "dkim", "verify", "--dns", f"127.0.0.1:{dns.port}"],
                       input=bad, capture_output=True)
    assert v.returncode == 1


def test_dkim_rotation_waits_for_the_new_record(world):
    arch, sinks, _, dns = world
    submit(arch, ["frank@implicit.test"], sender="bob@students.example.test")
    assert wait_for(lambda: sinks["plain"].messages)
    data = sinks["plain"].messages[0][2]
    v = subprocess.run([str(BIN / "palisade"), "dkim", "verify", "--dns", f"127.0.0.1:{dns.port}"],
                       input=data, capture_output=True)
    assert v.returncode == 0, v.stdout + v.stderr
    assert b"pass d=students.example.test s=old" in v.stdout


def test_greylisting_destination_is_retried(world):
    arch, sinks, _, _ = world
    submit(arch, ["dave@grey.test"])
    assert wait_for(lambda: "dave@grey.test" in sinks["grey"].rcpts(), timeout=40)
    log = arch.log("outgoing-1")
    assert "cause=greylisted" in log and "status=deferred" in log


def test_unknown_user_bounces_to_authenticated_sender_with_reason(world):
    arch, sinks, av, _ = world
    submit(arch, ["nobody@reject.test"], origin="msa-1/0000000000AB", subject="for nobody")
    got = lambda: [m for s in av for m in s.messages]
    assert wait_for(lambda: got(), timeout=30)
    mail_from, rcpts, dsn = got()[0]
    assert mail_from == "" and rcpts == ["alice@example.test"]
    assert b"multipart/report; report-type=delivery-status" in dsn
    assert b"Final-Recipient: rfc822; nobody@reject.test" in dsn
    assert b"Status: 5.1.1" in dsn
    assert b"the recipient's address does not exist" in dsn
    assert b"Subject: for nobody" in dsn


def test_no_bounce_to_unauthenticated_sender(world):
    arch, sinks, av, _ = world
    submit(arch, ["nobody@reject.test"], origin="mx-1/0000000000AC")
    assert wait_for(lambda: "no DSN" in arch.log("outgoing-1"))
    time.sleep(1)
    assert not [m for s in av for m in s.messages]


def test_delayed_notice_after_dsn_delay_after(world):
    arch, _, av, _ = world
    submit(arch, ["late@secure.test"], origin="msa-2/0000000000AF", subject="slowpoke")
    got = lambda: [m for s in av for m in s.messages]
    assert wait_for(got, timeout=30)
    mail_from, rcpts, dsn = got()[0]
    assert mail_from == "" and rcpts == ["alice@example.test"]
    assert b"Action: delayed" in dsn and b"Status: 4.7.10" in dsn
    assert b"requires encryption" in dsn
    time.sleep(3)
    assert len(got()) == 1, "one delayed notice per message"


def test_null_mx_fails_at_once(world):
    arch, _, av, _ = world
    submit(arch, ["x@null.test"], origin="msa-1/0000000000AD")
    assert wait_for(lambda: [m for s in av for m in s.messages])
    dsn = [m for s in av for m in s.messages][0][2]
    assert b"null-mx" in dsn and b"accepts no e-mail" in dsn


def test_dns_servfail_keeps_message_queued(world):
    arch, _, av, _ = world
    submit(arch, ["y@servfail.test"], origin="msa-1/0000000000AE")
    assert wait_for(lambda: "cause=receiver-dns" in arch.log("outgoing-1"), timeout=40)
    assert "y@servfail.test" in queue_list(arch)
    assert "status=bounced" not in arch.log("outgoing-1")


def test_tls_required_domain_is_never_sent_in_plaintext(world):
    arch, sinks, _, _ = world
    submit(arch, ["eve@secure.test"])
    assert wait_for(lambda: "does not offer STARTTLS" in arch.log("outgoing-1"), timeout=30)
    time.sleep(1)
    assert not sinks["secure"].messages
    assert not any(t.upper().startswith("MAIL") for t in sinks["secure"].transcript)
    assert "eve@secure.test" in queue_list(arch)


def test_queue_hold_release_delete_through_the_node(world):
    arch, sinks, _, _ = world
    submit(arch, ["held@secure.test"])
    assert wait_for(lambda: "held@secure.test" in queue_list(arch))
    qid = [l.split()[1].rstrip("!") for l in queue_list(arch).splitlines() if l.startswith("outgoing-1")][0]
    arch.palisade("queue", "hold", qid)
    assert f"{qid}!" in queue_list(arch)
    arch.palisade("queue", "release", qid)
    assert f"{qid}!" not in queue_list(arch)
    show = arch.palisade("queue", "show", qid).stdout
    assert "held@secure.test" in show
    arch.palisade("queue", "delete", qid)
    assert qid not in queue_list(arch)
    assert arch.palisade("queue", "delete", qid, check=False).returncode != 0


def test_kill9_during_slow_delivery_loses_nothing(world):
    arch, sinks, _, _ = world
    submit(arch, ["first@implicit.test"])
    assert wait_for(lambda: "first@implicit.test" in sinks["plain"].rcpts())
    assert wait_for(lambda: "first@implicit.test" not in queue_list(arch))
    submit(arch, ["late@slow.test"])
    assert wait_for(lambda: any(t.upper() == "DATA" for t in sinks["slow"].transcript))
    arch.kill("outgoing-1")
    assert not sinks["slow"].messages
    sinks["slow"].delay = 0.0
    arch.start("outgoing-1")
    assert wait_for(lambda: "late@slow.test" in sinks["slow"].rcpts(), timeout=40)
    assert wait_for(lambda: "late@slow.test" not in queue_list(arch))
    time.sleep(1)
    # The confirmed delivery before the crash was not repeated.
    assert sinks["plain"].rcpts().count("first@implicit.test") == 1


def test_connection_reuse_and_domains_in_parallel(world):
    arch, sinks, _, _ = world
    for i in range(3):
        submit(arch, [f"r{i}@implicit.test"])
        assert wait_for(lambda: f"r{i}@implicit.test" in sinks["plain"].rcpts())
    ehlos = [t for t in sinks["plain"].transcript if t.upper().startswith("EHLO")]
    assert len(ehlos) == 1, f"3 messages to one host should share one connection: {ehlos}"
    # One message, two domains: the fast one does not wait for the slow one.
    submit(arch, ["p@slow.test", "q@implicit.test"])
    t0 = time.time()
    assert wait_for(lambda: "q@implicit.test" in sinks["plain"].rcpts())
    assert time.time() - t0 < 3.0 and not sinks["slow"].messages
    assert wait_for(lambda: "p@slow.test" in sinks["slow"].rcpts())


def test_kill9_while_slow_domain_sends_does_not_resend_to_fast_domain(world):
    """One message, a fast and a slow domain: the fast domain's 250 is stored
    as soon as its transaction ends, so a kill -9 while the slow sink still
    holds its DATA does not send the fast domain a second copy."""
    arch, sinks, _, _ = world
    submit(arch, ["quick@implicit.test", "lagging@slow.test"])
    assert wait_for(lambda: any(t.upper() == "DATA" for t in sinks["slow"].transcript))
    # The fast destination finished and was logged (logged after it is stored).
    assert wait_for(lambda: "to=<quick@implicit.test>" in arch.log("outgoing-1")
                    and "status=sent" in arch.log("outgoing-1"), timeout=3)
    assert sinks["plain"].rcpts() == ["quick@implicit.test"]
    arch.kill("outgoing-1")
    assert not sinks["slow"].messages, "the kill must come while the slow sink holds DATA"
    sinks["slow"].delay = 0.0
    arch.start("outgoing-1")
    assert wait_for(lambda: "lagging@slow.test" in sinks["slow"].rcpts(), timeout=40)
    assert wait_for(lambda: "lagging@slow.test" not in queue_list(arch))
    time.sleep(1)
    assert sinks["plain"].rcpts().count("quick@implicit.test") == 1, sinks["plain"].rcpts()
    rcpt_cmds = [t for t in sinks["plain"].transcript if "quick@implicit.test" in t]
    assert len(rcpt_cmds) == 1, f"the fast domain was not even offered it again: {rcpt_cmds}"


# ---- MTA-STS (RFC 8461): policies over verified HTTPS, enforce and testing ----

def make_ca(d):
    """A test CA (openssl): (certificate, key) paths under `d`."""
    ca = (d / "ca.pem", d / "ca.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", ca[1], "-out", ca[0],
                    "-days", "2", "-subj", "/CN=Palisade test CA",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
                   check=True, capture_output=True)
    return ca


def sts_policy(mode, *mx):
    """An MTA-STS policy file (RFC 8461 §3.2)."""
    return "version: STSv1\r\nmode: %s\r\n%smax_age: 86400\r\n" % (mode, "".join(f"mx: {m}\r\n" for m in mx))


def make_cert(d, name, sans, ca):
    """A leaf certificate for `sans` signed by the test CA (openssl)."""
    key, csr, pem, ext = (d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem", d / f"{name}.ext")
    ext.write_text("basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
                   "subjectAltName=" + ",".join(f"DNS:{s}" for s in sans) + "\n")
    subprocess.run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={sans[0]}"],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1],
                    "-CAcreateserial", "-out", pem, "-days", "2", "-extfile", ext],
                   check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pem, key)
    return ctx


class PolicyServer:
    """HTTPS on (ip, port) serving /.well-known/mta-sts.txt by Host header."""

    def __init__(self, ip, port, ctx, policies):
        import http.server
        self.policies, self.fetches = policies, []
        srv = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                host = (self.headers.get("Host") or "").split(":")[0]
                srv.fetches.append((host, self.path))
                body = srv.policies.get(host)
                if self.path != "/.well-known/mta-sts.txt" or body is None:
                    self.send_error(404)
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer((ip, port), H)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def metrics(arch):
    host, port = arch.addr("outgoing-1", "metrics")
    return urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()


def sts_lab(last_octets, base):
    """What an MTA-STS test needs: loopback addresses 127.0.0.x, one port
    free on all of them, a scratch directory and a test CA in it."""
    if shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq (dnsmasq-base) is not installed")
    ips = [f"127.0.0.{i}" for i in last_octets]
    port = next(p for p in range(base, base + 500) if all(port_free_on(ip, p) for ip in ips))
    d = Path(tempfile.mkdtemp(prefix="palisade-sts-"))
    return ips, port, d, make_ca(d)


@pytest.fixture
def sts_world(arch_factory):
    ips, port, d, ca = sts_lab(range(20, 27), SINK_PORT_BASE + 500)
    doms = ["enforce", "wrongcert", "nostarttls", "testing", "othermx"]
    web = make_cert(d, "web", [f"mta-sts.{x}.test" for x in doms], ca)
    good = make_cert(d, "mx", ["mx.enforce.test", "mx1.othermx.test", "mx0.othermx.test",
                               "mx.testing.test"], ca)
    wrong = make_cert(d, "wrong", ["not-the-mx.example"], ca)
    sinks = {
        "enforce": Sink(ips[1], port, tls=good),
        "wrongcert": Sink(ips[2], port, tls=wrong),
        "nostarttls": Sink(ips[3], port),
        "testing": Sink(ips[4], port),                 # no STARTTLS: testing delivers anyway
        "othermx0": Sink(ips[5], port, tls=good),      # MX 10 but not in the policy
        "othermx1": Sink(ips[6], port, tls=good),      # MX 20, in the policy
    }
    policy = sts_policy
    web_srv = PolicyServer(ips[0], port, web, {
        "mta-sts.enforce.test": policy("enforce", "mx.enforce.test"),
        "mta-sts.wrongcert.test": policy("enforce", "mx.wrongcert.test"),
        "mta-sts.nostarttls.test": policy("enforce", "*.nostarttls.test"),
        "mta-sts.testing.test": policy("testing", "mx.testing.test"),
        "mta-sts.othermx.test": policy("enforce", "mx1.othermx.test"),
    })
    lines = ["local=/test/"]
    for x in doms:
        lines += [f'txt-record=_mta-sts.{x}.test,"v=STSv1; id=2026120101"',
                  f"host-record=mta-sts.{x}.test,{ips[0]}"]
    for x, ip in [("enforce", ips[1]), ("wrongcert", ips[2]), ("nostarttls", ips[3]),
                  ("testing", ips[4])]:
        lines += [f"mx-host={x}.test,mx.{x}.test,10", f"host-record=mx.{x}.test,{ip}"]
    lines += ["mx-host=othermx.test,mx0.othermx.test,10", f"host-record=mx0.othermx.test,{ips[5]}",
              "mx-host=othermx.test,mx1.othermx.test,20", f"host-record=mx1.othermx.test,{ips[6]}"]
    dns = Dns(lines)
    edit = outgoing_config(f"127.0.0.1:{dns.port}", f"""[stage.outgoing.outbound]
smtp_port = {port}
mta_sts_port = {port}
ca_file = "{ca[0]}"
dsn_delay_after = "0s"
""")

    arch = arch_factory(edit=edit)
    arch.start("outgoing-1")
    yield arch, sinks, web_srv
    arch.stop_all()
    for s in sinks.values():
        s.stop()
    web_srv.stop()
    dns.stop()
    shutil.rmtree(d, ignore_errors=True)


def test_mta_sts_enforce_testing_and_mx_patterns(sts_world):
    arch, sinks, web = sts_world
    for x in ["enforce", "wrongcert", "nostarttls", "testing", "othermx"]:
        submit(arch, [f"user@{x}.test"])
    # enforce + certificate valid for the MX name: delivered over TLS.
    assert wait_for(lambda: "user@enforce.test" in sinks["enforce"].rcpts())
    assert sinks["enforce"].tls_sessions >= 1
    # testing mode, MX without STARTTLS: delivered anyway (in plaintext).
    assert wait_for(lambda: "user@testing.test" in sinks["testing"].rcpts())
    # MX 10 is not in the policy: never used; the policy's MX 20 gets it.
    assert wait_for(lambda: "user@othermx.test" in sinks["othermx1"].rcpts())
    assert not sinks["othermx0"].transcript
    # enforce + wrong certificate / no STARTTLS: kept queued, never sent.
    assert wait_for(lambda: "certificate required by the domain's MTA-STS policy" in arch.log("outgoing-1"))
    assert wait_for(lambda: "does not offer STARTTLS, required by the domain's MTA-STS policy"
                    in arch.log("outgoing-1"))
    time.sleep(1.5)  # at least one retry
    q = queue_list(arch)
    assert "user@wrongcert.test" in q and "user@nostarttls.test" in q
    assert "user@enforce.test" not in q and "user@testing.test" not in q
    assert not sinks["wrongcert"].messages and not sinks["nostarttls"].messages
    assert not any(t.upper().startswith("MAIL") for t in sinks["wrongcert"].transcript + sinks["nostarttls"].transcript)
    m = metrics(arch)
    for policy, result in [("mta-sts-enforce", "certificate-host-mismatch"),
                           ("mta-sts-enforce", "starttls-not-supported"),
                           ("mta-sts-enforce", "validation-failure"),
                           ("mta-sts-testing", "starttls-not-supported")]:
        assert any(l.startswith("palisade_tls_failures_total{")
                   and f'policy="{policy}",result="{result}"}}' in l for l in m.splitlines()), (policy, result)
    # Policies were fetched over verified HTTPS once per domain (cached) and
    # persisted in the node's data dir.
    assert sorted({h for h, _ in web.fetches}) == sorted(f"mta-sts.{x}.test" for x in
                                                         ["enforce", "wrongcert", "nostarttls", "testing", "othermx"])
    assert len(web.fetches) == 5, web.fetches
    cache = (arch.data / "outgoing-1" / "mta-sts.json").read_text()
    assert '"enforce.test"' in cache and '"mx.enforce.test"' in cache
    # A restart keeps the cached policies: with the policy server now
    # failing every fetch, enforce.test is still delivered under its policy
    # (same TXT id: no refetch) and wrongcert.test still never gets it.
    web.policies.clear()
    arch.kill("outgoing-1")
    arch.start("outgoing-1")
    submit(arch, ["again@enforce.test"])
    assert wait_for(lambda: "again@enforce.test" in sinks["enforce"].rcpts())
    assert len(web.fetches) == 5, web.fetches
    time.sleep(1.5)
    assert "user@wrongcert.test" in queue_list(arch) and not sinks["wrongcert"].messages


# ---- MTA-STS: a new TXT id replaces the cached policy (RFC 8461 §3.3, §5.1) ----

@pytest.fixture
def sts_refetch_world(arch_factory):
    from dns import DnsServer
    ips, port, d, ca = sts_lab(range(30, 34), SINK_PORT_BASE + 1000)
    web = make_cert(d, "web", ["mta-sts.rot.test"], ca)
    mx = make_cert(d, "mx", ["mx0.rot.test", "mx1.rot.test"], ca)
    sinks = {"mx0": Sink(ips[1], port, tls=mx), "mx1": Sink(ips[2], port, tls=mx),
             "reports": Sink(ips[3], port)}               # TLSRPT reports for rot.test
    web_srv = PolicyServer(ips[0], port, web, {"mta-sts.rot.test": sts_policy("enforce", "mx0.rot.test")})

    def zone(policy_id):
        return [f'txt-record=_mta-sts.rot.test,"v=STSv1; id={policy_id}"',
                f"host-record=mta-sts.rot.test,{ips[0]}",
                "mx-host=rot.test,mx0.rot.test,10", f"host-record=mx0.rot.test,{ips[1]}",
                "mx-host=rot.test,mx1.rot.test,20", f"host-record=mx1.rot.test,{ips[2]}",
                'txt-record=_smtp._tls.rot.test,"v=TLSRPTv1; rua=mailto:tls@reports.test"',
                "mx-host=reports.test,mx.reports.test,10", f"host-record=mx.reports.test,{ips[3]}"]

    dns = DnsServer(zone("v1")).__enter__()
    edit = outgoing_config(dns.addr, f"""[stage.outgoing.outbound]
smtp_port = {port}
mta_sts_port = {port}
mta_sts_recheck = "1s"
tlsrpt_interval = "4s"
ca_file = "{ca[0]}"
dsn_delay_after = "0s"
""")

    arch = arch_factory(edit=edit)
    arch.start("outgoing-1")
    yield arch, sinks, web_srv, dns, zone
    arch.stop_all()
    for s in sinks.values():
        s.stop()
    web_srv.stop()
    dns.__exit__(None, None, None)
    shutil.rmtree(d, ignore_errors=True)


def test_mta_sts_new_id_refetches_and_failed_refetch_keeps_policy(sts_refetch_world):
    arch, sinks, web, dns, zone = sts_refetch_world
    cache_file = arch.data / "outgoing-1" / "mta-sts.json"
    # id v1: enforce, only mx0 (MX 10).
    submit(arch, ["one@rot.test"])
    assert wait_for(lambda: "one@rot.test" in sinks["mx0"].rcpts())
    assert len(web.fetches) == 1
    # id v2 with a new policy: only mx1 (MX 20). The cached policy is replaced:
    # mx0, first by preference, is no longer even contacted.
    web.policies["mta-sts.rot.test"] = sts_policy("enforce", "mx1.rot.test")
    dns.restart(zone("v2"))
    time.sleep(1.5)  # past mta_sts_recheck
    mx0_seen = len(sinks["mx0"].transcript)
    submit(arch, ["two@rot.test"])
    assert wait_for(lambda: "two@rot.test" in sinks["mx1"].rcpts())
    assert len(sinks["mx0"].transcript) == mx0_seen, "mx0 is outside the new policy"
    assert len(web.fetches) == 2, web.fetches
    assert '"v2"' in cache_file.read_text() and '"mx1.rot.test"' in cache_file.read_text()
    # id v3 but the HTTPS fetch fails: the cached v2 policy stays in force
    # (RFC 8461 §5.1), the failure is counted, the cache is not touched.
    web.policies.clear()
    dns.restart(zone("v3"))
    time.sleep(1.5)
    submit(arch, ["three@rot.test"])
    assert wait_for(lambda: "three@rot.test" in sinks["mx1"].rcpts())
    assert len(sinks["mx0"].transcript) == mx0_seen
    assert len(web.fetches) >= 3, web.fetches
    assert wait_for(lambda: "policy fetch failed" in arch.log("outgoing-1"))
    assert any(l.startswith("palisade_tls_failures_total{") and 'result="sts-policy-fetch-error"' in l
               for l in metrics(arch).splitlines())
    cache = cache_file.read_text()
    assert '"v2"' in cache and '"v3"' not in cache and '"mx1.rot.test"' in cache


def tlsrpt_reports(sink):
    """The JSON reports (RFC 8460 §5.3) the sink received, decoded."""
    import email
    import gzip
    import json
    out = []
    for _, rcpts, data in sink.messages:
        msg = email.message_from_bytes(data)
        assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "tlsrpt"
        assert msg["TLS-Report-Domain"] == "rot.test" and rcpts == ["tls@reports.test"]
        parts = [p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
        assert len(parts) == 1 and parts[0].get_filename().endswith(".json.gz")
        out.append(json.loads(gzip.decompress(parts[0].get_payload(decode=True))))
    return out


def test_tlsrpt_report_counts_sessions_per_policy_domain(sts_refetch_world):
    arch, sinks, web, _, _ = sts_refetch_world
    # enforce, only mx1 (MX 20): each message skips mx0 (validation-failure,
    # RFC 8460 §4.3) and is delivered over verified TLS by mx1 (a success).
    web.policies["mta-sts.rot.test"] = sts_policy("enforce", "mx1.rot.test")
    for n in ["one", "two"]:
        submit(arch, [f"{n}@rot.test"])
        assert wait_for(lambda: f"{n}@rot.test" in sinks["mx1"].rcpts())
    # The reports of the periods (tlsrpt_interval = 4s) they fell in arrive
    # through the node's own queue at the _smtp._tls rua address.
    def totals():
        ok = fail = 0
        for r in tlsrpt_reports(sinks["reports"]):
            for p in r["policies"]:
                ok += p["summary"]["total-successful-session-count"]
                fail += p["summary"]["total-failure-session-count"]
        return ok, fail
    assert wait_for(lambda: totals() == (2, 2), timeout=20), totals()
    for r in tlsrpt_reports(sinks["reports"]):
        assert r["organization-name"] == "mail.example.test" and r["report-id"]
        assert r["date-range"]["start-datetime"] < r["date-range"]["end-datetime"]
        [p] = r["policies"]
        assert p["policy"]["policy-type"] == "sts" and p["policy"]["policy-domain"] == "rot.test"
        assert p["policy"]["mx-host"] == ["mx1.rot.test"] and "mode: enforce" in p["policy"]["policy-string"]
        for d in p["failure-details"]:
            assert (d["result-type"], d["receiving-mx-hostname"]) == ("validation-failure", "mx0.rot.test")
        assert p["summary"]["total-failure-session-count"] == sum(d["failed-session-count"] for d in p["failure-details"])
    # Counted once: a later period with no sessions sends nothing more.
    time.sleep(5)
    assert totals() == (2, 2)
    assert (arch.data / "outgoing-1" / "tlsrpt.json").exists()
