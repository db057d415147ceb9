"""Harness for the cross-stage tests: a whole architecture on loopback.

Each test gets config/local.toml rewritten onto free ports and a temporary
data directory, and starts the stage binaries itself (like `palisade up`
does), so it can kill -9, stop and restart single nodes by PID. Everything
it starts is stopped when the test ends.
"""

import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("PALISADE_BIN", REPO / "target" / "release"))
PASSWORD = "correct horse battery"


# SIGTERM (tests/run-all.sh stopping its background run) unwinds like
# Ctrl-C, so the fixtures stop the nodes they started in their own
# sessions instead of leaving them running.
signal.signal(signal.SIGTERM, signal.default_int_handler)


def free_port_offset(ports):
    """An offset that moves every port of the config onto free ports.

    The ports stay below Linux's ephemeral range (32768-60999): a port in it
    can be taken, while its node is down, as the local end of any outgoing
    connection, and the node's restart then fails with EADDRINUSE. They also
    stay below 25353, where the fixed-range helpers (dnsmasq, fake servers)
    look for theirs.

    No two offsets share a port: their step is one that no difference
    between two ports of config/local.toml is a multiple of (its ports come
    100 apart, 2526/2626: offsets 100 apart would overlap). A test's
    forwarder failing over to a node the test did not start must find
    nothing there, not another test's node. Tests that run side by side
    (tests/run-all.sh: pytest-xdist workers and the long probe run) take
    offsets from disjoint lanes."""
    lane, lanes = port_lane()
    step, slots = OFFSET_STEP
    for _ in range(200):
        slot = uuid.uuid4().int % (slots // lanes) * lanes + lane
        offset = OFFSET_MIN + slot * step
        if all(port_free(p + offset) for p in ports):
            return offset
    raise RuntimeError("no free port range")


OFFSET_MIN, OFFSET_MAX = 7700, 15173  # ports 10225-25300


def offset_step():
    """(step, slots): the step with the most slots between OFFSET_MIN and
    OFFSET_MAX such that no two offsets move two ports onto one."""
    text = (REPO / "config" / "local.toml").read_text()
    ports = {int(p) for p in re.findall(r'"127\.0\.0\.1:(\d+)"', text)}
    apart = {abs(a - b) for a in ports for b in ports}
    best = (0, 0)
    for step in range(13, 400):
        slots = (OFFSET_MAX - OFFSET_MIN) // step + 1
        if slots > best[1] and all(step * m not in apart for m in range(1, slots)):
            best = (step, slots)
    return best


OFFSET_STEP = offset_step()


def port_lane():
    """(lane, lanes): PALISADE_PORT_LANES lanes in all (default 1); this
    process's is PALISADE_PORT_LANE plus its pytest-xdist worker number."""
    lanes = int(os.environ.get("PALISADE_PORT_LANES", "1"))
    lane = int(os.environ.get("PALISADE_PORT_LANE", "0"))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    lane += int(worker.removeprefix("gw") or 0)
    assert lane < lanes, f"port lane {lane} of {lanes}: set PALISADE_PORT_LANES"
    return lane, lanes


def port_free(port):
    # SO_REUSEADDR as the nodes bind: a port whose last connections are in
    # TIME_WAIT is free for them.
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def wait_port(addr, timeout=15.0, proc=None):
    host, port = addr
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {addr}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {addr}")


def wait_serving(addr, timeout=30.0, proc=None):
    """A node binds its ports first (then drops privileges, opens its queue,
    warms its directory replica) and serves its HTTP endpoint only once it
    is ready: /metrics answering means the SMTP listeners serve too."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before serving {addr}")
        try:
            with socket.create_connection(addr, timeout=1.0) as s:
                s.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                if s.recv(16).startswith(b"HTTP/1."):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{addr} does not serve /metrics")


class Architecture:
    """config/local.toml on private ports, nodes started on demand."""

    def __init__(self, workdir: Path, config_text: str | None = None, edit=None):
        self.workdir = workdir
        self.data = workdir / "data"
        text = config_text or (REPO / "config" / "local.toml").read_text()
        ports = sorted({int(p) for p in re.findall(r'"127\.0\.0\.1:(\d+)"', text)})
        self.offset = free_port_offset(ports)
        text = re.sub(
            r'"127\.0\.0\.1:(\d+)"',
            lambda m: f'"127.0.0.1:{int(m.group(1)) + self.offset}"',
            text,
        )
        text = text.replace('data_dir = "data"', f'data_dir = "{self.data}"')
        if edit:
            text = edit(text)
        self.config = workdir / "palisade.toml"
        self.config.write_text(text)
        self.text = text
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    # ---- addresses -------------------------------------------------------
    def addr(self, node, key="smtp"):
        m = re.search(
            rf'\[node\.{re.escape(node)}\][^\[]*?{key}\s*=\s*"127\.0\.0\.1:(\d+)"',
            self.text,
            re.S,
        )
        assert m, f"{node} has no {key}"
        return ("127.0.0.1", int(m.group(1)))

    def nodes(self):
        return re.findall(r"^\[node\.([\w-]+)\]", self.text, re.M)

    def stage_of(self, node):
        m = re.search(rf'\[node\.{re.escape(node)}\][^\[]*?stage\s*=\s*"(\w+)"', self.text, re.S)
        return m.group(1)

    # ---- processes -------------------------------------------------------
    def start(self, *nodes):
        # The antivirus nodes scan with a real clamd (tests/integration/clamd.py).
        if any(self.stage_of(n) == "antivirus" for n in nodes or self.nodes()):
            self.start_clamd()
        for node in nodes or self.nodes():
            stage = self.stage_of(node)
            log = self.workdir / f"{node}.log"
            self.logs[node] = log
            with open(log, "ab") as out:
                p = subprocess.Popen(
                    [str(BIN / f"palisade-{stage}"), "--config", str(self.config), "--node", node],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.procs[node] = p
        for node in nodes or self.nodes():
            try:
                self.wait_ready(node)
            except (RuntimeError, TimeoutError) as e:
                tail = self.log(node)[-2000:]
                raise RuntimeError(f"{node}: {e}; its log ends:\n{tail}") from e

    def wait_ready(self, node):
        key = "submission" if self.stage_of(node) == "msa" else "smtp"
        wait_port(self.addr(node, key), proc=self.procs[node])
        if re.search(r'^metrics\s*=', self.section(node), re.M):
            wait_serving(self.addr(node, "metrics"), proc=self.procs[node])
        if self.stage_of(node) == "store" and "pop3s" in self.section(node):
            wait_port(self.addr(node, "pop3s"), proc=self.procs[node])

    def section(self, node):
        m = re.search(rf"\[node\.{re.escape(node)}\](.*?)(?=^\[|\Z)", self.text, re.S | re.M)
        return m.group(1)

    def kill(self, node, sig=signal.SIGKILL):
        p = self.procs.pop(node)
        p.send_signal(sig)
        p.wait(timeout=10)

    def start_clamd(self):
        from clamd import Clamd

        if getattr(self, "clamd", None) is None and "[stage.antivirus.virus]" not in self.text:
            self.clamd = Clamd(self.data / "clamd").start()

    def stop_all(self):
        if getattr(self, "clamd", None) is not None:
            self.clamd.stop()
            self.clamd = None
        for node in list(self.procs):
            terminate(self.procs.pop(node), timeout=5)

    def log(self, node):
        return self.logs[node].read_text(errors="replace")

    # ---- admin -----------------------------------------------------------
    def palisade(self, *args, input=None, check=True):
        return subprocess.run(
            [str(BIN / "palisade"), *args, "--config", str(self.config)],
            input=input,
            capture_output=True,
            text=True,
            check=check,
        )

    def add_user(self, address, password=PASSWORD, quota=None):
        args = ["user", "add", address, "--password-stdin"]
        if quota is not None:
            args += ["--quota", str(quota)]
        return self.palisade(*args, input=password + "\n")

    def pop3(self, node="store-staff"):
        import poplib

        host, port = self.addr(node, "pop3s")
        return poplib.POP3_SSL(host, port, context=tls_context(), timeout=30)


@pytest.fixture
def arch_factory():
    made = []

    def make(**kw):
        workdir = Path(tempfile.mkdtemp(prefix="palisade-it-"))
        a = Architecture(workdir, **kw)
        made.append(a)
        return a

    yield make
    for a in made:
        a.stop_all()
        if os.environ.get("KEEP_TEST_DATA"):
            print(f"kept {a.workdir}")
        else:
            shutil.rmtree(a.workdir, ignore_errors=True)


@pytest.fixture
def arch(arch_factory):
    return arch_factory()


def terminate(p, timeout):
    """SIGTERM to a process we started, SIGKILL if it is still there after
    `timeout` seconds; waits for it either way."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def tls_context():
    """A client TLS context that accepts the architecture's self-signed
    certificate (tests check what the servers say, not the PKI)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def make_message(sender, rcpt, subject, body="Hello.\r\n", msgid=None):
    msgid = msgid or f"<{uuid.uuid4().hex}@test.example>"
    return (
        f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n"
        f"Message-ID: {msgid}\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n\r\n{body}"
    ).encode(), msgid


def pop3_messages(arch, user, password=PASSWORD, node="store-staff"):
    """Every message in user's INBOX, as bytes with CRLF line ends."""
    p = arch.pop3(node)
    try:
        p.user(user)
        p.pass_(password)
        count, _ = p.stat()
        out = []
        for i in range(1, count + 1):
            _, lines, _ = p.retr(i)
            out.append(b"\r\n".join(lines) + b"\r\n")
        return out
    finally:
        p.quit()


def message_ids(messages):
    ids = []
    for m in messages:
        found = re.search(rb"^Message-ID:\s*(<[^>]+>)", m, re.M | re.I)
        ids.append(found.group(1).decode() if found else None)
    return ids


def mx_knows(arch, user, node="mx-1"):
    """The MX's directory replica has the user (RCPT 250). `palisade user
    add` writes the directory; each MX's replica catches up a moment later,
    so a test that sends right after adding a user waits for this first
    (and a store taken down afterwards cannot turn the answer into a 451)."""
    host, port = arch.addr(node)
    with smtplib.SMTP(host, port, timeout=10) as s:
        s.ehlo("probe.outside.test")
        s.mail("sender@outside.test")
        code, _ = s.rcpt(user)
        s.rset()
    return code == 250


def wait_for(predicate, timeout=30.0, interval=0.2, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what} (last: {last!r})")


class SmtpSink:
    """A small SMTP server on loopback that keeps what it receives:
    stands in for "the Internet" behind the outgoing stage."""

    def __init__(self, reply_to_rcpt=None):
        import socketserver
        import threading

        self.messages = []  # (mail_from, [rcpts], data bytes)
        self.reply_to_rcpt = reply_to_rcpt or (lambda rcpt: "250 2.1.5 Ok")
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                w = self.wfile.write
                w(b"220 sink.test ESMTP\r\n")
                mail_from, rcpts = None, []
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return
                    cmd = line.decode(errors="replace").strip()
                    verb = cmd[:4].upper()
                    if verb in ("EHLO", "HELO"):
                        w(b"250-sink.test\r\n250-8BITMIME\r\n250 PIPELINING\r\n")
                    elif verb == "MAIL":
                        mail_from, rcpts = cmd[10:].split(">")[0].lstrip("<"), []
                        w(b"250 2.1.0 Ok\r\n")
                    elif verb == "RCPT":
                        rcpt = cmd[8:].split(">")[0].lstrip("<")
                        reply = sink.reply_to_rcpt(rcpt)
                        if reply.startswith("2"):
                            rcpts.append(rcpt)
                        w(reply.encode() + b"\r\n")
                    elif verb == "DATA":
                        w(b"354 go ahead\r\n")
                        data = b""
                        while True:
                            l = self.rfile.readline()
                            if l in (b".\r\n", b""):
                                break
                            data += l[1:] if l.startswith(b"..") else l
                        sink.messages.append((mail_from, rcpts, data))
                        w(b"250 2.0.0 Ok: kept\r\n")
                    elif verb == "QUIT":
                        w(b"221 2.0.0 Bye\r\n")
                        return
                    else:
                        w(b"250 2.0.0 Ok\r\n")

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sink():
    s = SmtpSink()
    yield s
    s.close()


class Raw:
    """A line-oriented SMTP client that sends exactly the bytes it is told."""

    def __init__(self, addr, read_banner=True, source=None):
        self.sock = socket.create_connection(
            addr, timeout=15, source_address=(source, 0) if source else None)
        self.buf = b""
        if read_banner:
            self.banner = self.reply()

    def send(self, data: bytes):
        self.sock.sendall(data)

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; buffered {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode()

    def reply(self):
        lines = [self.line()]
        while lines[-1][3:4] == "-":
            lines.append(self.line())
        return int(lines[0][:3]), "\n".join(l[4:] for l in lines)

    def cmd(self, text):
        self.send(text.encode() + b"\r\n")
        return self.reply()

    def closed(self):
        try:
            self.sock.settimeout(5)
            return self.sock.recv(1) == b""
        except (ConnectionResetError, socket.timeout):
            return True

    def close(self):
        self.sock.close()
