"""A real clamd for the tests (Debian's clamav-daemon), with a local
signature database only: EICAR (whole file, SHA-256, and anywhere in a
body) and ClamAV's own test file. No freshclam, no network: it listens on
a Unix socket in its directory (and, if asked, on a loopback TCP port).
The logic is shared/tools/clamd-local.sh's.

    c = Clamd(data_dir / "clamd"); c.start(); ...; c.stop()

Stopped by PID; `start()` after `stop()` starts it again on the same
socket (the antivirus nodes' default address is unix:<data_dir>/clamd/clamd.sock).
"""

import socket
import subprocess
import time
from pathlib import Path

from conftest import terminate

EICAR = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


class Clamd:
    def __init__(self, directory: Path, tcp_port: int | None = None):
        self.dir = Path(directory)
        self.tcp_port = tcp_port
        self.proc: subprocess.Popen | None = None

    @property
    def socket(self) -> Path:
        return self.dir / "clamd.sock"

    def write_files(self):
        db = self.dir / "db"
        db.mkdir(parents=True, exist_ok=True)
        (self.dir / "tmp").mkdir(exist_ok=True)
        (db / "local.hdb").write_text(
            "aa15bcf478d165efd2065190eb473bcb:544:ClamAV-Test-File\n"
            "44d88612fea8a8f36de82e1278abb02f:68:Eicar-Test-Signature\n"
        )
        (db / "local.hsb").write_text(
            "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f:68:"
            "Eicar-Test-Signature-SHA256\n"
        )
        (db / "local.ndb").write_text(f"Eicar-Test-Signature-Body:0:*:{EICAR.encode().hex()}\n")
        tcp = f"TCPSocket {self.tcp_port}\nTCPAddr 127.0.0.1\n" if self.tcp_port else ""
        (self.dir / "clamd.conf").write_text(
            f"Foreground yes\nDatabaseDirectory {db}\nTemporaryDirectory {self.dir}/tmp\n"
            f"LocalSocket {self.socket}\nLocalSocketMode 600\nFixStaleSocket yes\n{tcp}"
            f"LogFile {self.dir}/clamd.log\nLogTime yes\nSelfCheck 0\nMaxThreads 2\n"
            "StreamMaxLength 25M\nMaxFileSize 25M\nMaxScanSize 100M\nScanMail yes\n"
            "ScanArchive yes\nBytecode no\n"
        )

    def ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1)
                s.connect(str(self.socket))
                s.sendall(b"zPING\0")
                return s.recv(64).rstrip(b"\0") == b"PONG"
        except OSError:
            return False

    def start(self, timeout=30.0):
        assert self.proc is None, "clamd already running"
        self.write_files()
        out = open(self.dir / "clamd.stdout", "ab")
        self.proc = subprocess.Popen(
            ["clamd", f"--config-file={self.dir / 'clamd.conf'}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"clamd exited: {(self.dir / 'clamd.stdout').read_text()}")
            if self.ping():
                return self
            time.sleep(0.1)
        raise TimeoutError(f"clamd did not answer PING; see {self.dir}/clamd.log")

    def stop(self):
        if self.proc is None:
            return
        p, self.proc = self.proc, None
        terminate(p, timeout=10)

    def scan(self, data: bytes) -> str:
        """INSTREAM straight to clamd (to check the helper itself)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(self.socket))
            s.sendall(b"zINSTREAM\0" + len(data).to_bytes(4, "big") + data + b"\0\0\0\0")
            return s.recv(4096).rstrip(b"\0").decode()
