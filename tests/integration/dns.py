"""A real DNS server for the tests: dnsmasq on a free loopback port.

    with DnsServer(zone_lines) as dns:
        arch = arch_factory(edit=lambda t: t.replace("[gateway]", f'[gateway]\\ndns = "{dns.addr}"', 1))

`zone_lines` are dnsmasq configuration lines (`mx-host=`, `host-record=`,
`txt-record=`...). Every name under the `local` domains (default `test`)
that the zone does not define answers NXDOMAIN; `broken` domains are
forwarded to a port where nothing answers, so their lookups fail (SERVFAIL
or timeout) like a broken DNS. dnsmasq is stopped by PID on exit.
dnsmasq cannot change records live: `restart(new_lines)` stops it and
starts it again with the new zone on the same port.

Also here: DKIM signing for the tests (rsa-sha256, relaxed/simple) with the
openssl command, and the TXT record that publishes the key.
"""

import base64
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_udp_tcp_port():
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port for DNS")


def txt_strings(value):
    """A TXT value as dnsmasq's comma-separated quoted strings of <=255 bytes."""
    parts = [value[i:i + 255] for i in range(0, len(value), 255)] or [""]
    return ",".join(f'"{p}"' for p in parts)


def stop_by_pid(proc):
    """SIGTERM to a server the test started, SIGKILL if it lingers."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


class DnsServer:
    def __init__(self, lines, local=("test",), broken=()):
        self.lines = list(lines)
        self.local = local
        self.broken = broken
        self.proc = None
        self.dir = None

    def __enter__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="palisade-dns-"))
        self.port = free_udp_tcp_port()
        self.dead = free_udp_tcp_port()
        self._start()
        self.addr = f"127.0.0.1:{self.port}"
        return self

    def restart(self, lines):
        """The same server (port) with a new zone."""
        self._stop()
        self.lines = list(lines)
        self._start()

    def _start(self):
        conf = [f"server=/{d}/127.0.0.1#{self.dead}" for d in self.broken]
        conf += [f"local=/{d}/" for d in self.local]
        conf += self.lines
        conf_file = self.dir / "dnsmasq.conf"
        conf_file.write_text("\n".join(conf) + "\n")
        self.log = self.dir / "dnsmasq.log"
        self.proc = subprocess.Popen(
            ["dnsmasq", "--no-daemon", f"--port={self.port}", "--listen-address=127.0.0.1",
             "--bind-interfaces", "--no-resolv", "--no-hosts", f"--conf-file={conf_file}",
             "--pid-file=", "--user=" + (os.environ.get("USER") or "root"), "--log-queries",
             f"--log-facility={self.log}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dnsmasq exited: {self.proc.stderr.read().decode()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"dnsmasq did not listen on port {self.port}")

    def _stop(self):
        if self.proc:
            stop_by_pid(self.proc)

    def __exit__(self, *exc):
        self._stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def query_log(self):
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


# ---- DKIM for the tests ---------------------------------------------------

class DkimKey:
    """An RSA key made with openssl; `txt` is its DNS record value."""

    def __init__(self, bits=2048):
        self.dir = Path(tempfile.mkdtemp(prefix="palisade-dkim-"))
        self.pem = self.dir / "key.pem"
        subprocess.run(["openssl", "genrsa", "-out", str(self.pem), str(bits)],
                       check=True, capture_output=True)
        der = subprocess.run(["openssl", "rsa", "-in", str(self.pem), "-pubout", "-outform", "DER"],
                             check=True, capture_output=True).stdout
        self.txt = "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()

    def record(self, selector, domain):
        return f"txt-record={selector}._domainkey.{domain},{txt_strings(self.txt)}"

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def sign(self, message: bytes, domain, selector, headers=("from", "to", "subject", "date", "message-id")):
        """`message` (CRLF lines) with a DKIM-Signature on top."""
        head, _, body = message.partition(b"\r\n\r\n")
        # Body: simple canonicalization (RFC 6376 §3.4.3).
        while body.endswith(b"\r\n\r\n"):
            body = body[:-2]
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        bh = base64.b64encode(hashlib.sha256(body).digest()).decode()
        fields = []
        for line in head.decode().split("\r\n"):
            if line[:1] in (" ", "\t") and fields:
                fields[-1] += "\r\n" + line
            else:
                fields.append(line)

        def relaxed(field):
            name, _, value = field.partition(":")
            value = re.sub(r"\r\n", "", value)
            value = re.sub(r"[ \t]+", " ", value).strip()
            return f"{name.strip().lower()}:{value}"

        signed = []
        for h in headers:
            for f in reversed(fields):
                if f.split(":", 1)[0].strip().lower() == h and f not in signed:
                    signed.append(f)
                    break
        names = ":".join(f.split(":", 1)[0].strip().lower() for f in signed)
        sig = (f"v=1; a=rsa-sha256; c=relaxed/simple; d={domain}; s={selector}; "
               f"t={int(time.time())}; h={names}; bh={bh}; b=")
        data = "".join(relaxed(f) + "\r\n" for f in signed) + relaxed("DKIM-Signature: " + sig)
        b = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.pem)],
                           input=data.encode(), check=True, capture_output=True).stdout
        header = "DKIM-Signature: " + sig + base64.b64encode(b).decode() + "\r\n"
        return header.encode() + message
