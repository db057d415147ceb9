"""Issue 2: `palisade up`, `palisade check-config`, `palisade user`, and the
upstream allow-list of internal stages."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from conftest import Raw, BIN, PASSWORD, Architecture, message_ids, mx_knows, pop3_messages, wait_for, wait_port


def pid_of(arch, node):
    path = arch.data / node / "pid"
    return int(path.read_text()) if path.exists() else None


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_up_runs_supervises_and_stops_every_node(arch_factory):
    arch: Architecture = arch_factory()
    up = subprocess.Popen(
        [str(BIN / "palisade"), "up", "--config", str(arch.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        for node in arch.nodes():
            key = "submission" if arch.stage_of(node) == "msa" else "smtp"
            wait_port(arch.addr(node, key), timeout=30, proc=up)
        assert (arch.data / "tls" / "cert.pem").exists(), "no self-signed certificate generated"

        # A user and a message through the supervised architecture.
        arch.add_user("bob@example.test")
        wait_for(lambda: mx_knows(arch, "bob@example.test", "mx-2"),
                 what="mx-2's replica knows bob")
        import smtplib
        with smtplib.SMTP(*arch.addr("mx-2"), timeout=30) as s:
            s.sendmail("x@outside.test", ["bob@example.test"],
                       b"Subject: via up\r\nMessage-ID: <up@x>\r\n\r\nhi\r\n")
        got = wait_for(lambda: pop3_messages(arch, "bob@example.test"), what="delivery")
        assert message_ids(got) == ["<up@x>"]

        # kill -9 a node: up restarts it.
        old = wait_for(lambda: pid_of(arch, "antispam-2"), what="pid file")
        os.kill(old, signal.SIGKILL)
        new = wait_for(lambda: (p := pid_of(arch, "antispam-2")) != old and p, timeout=15,
                       what="a restarted antispam-2")
        assert alive(new)
        wait_port(arch.addr("antispam-2"), timeout=15)

        pids = [pid_of(arch, n) for n in arch.nodes()]
        assert all(pids)
    finally:
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=30)
    assert up.returncode == 0, out
    # Logs are prefixed by node, and every node is gone.
    assert "      mx-1 | " in out or "mx-1 |" in out
    assert "all nodes stopped" in out
    for pid in pids:
        assert not alive(pid), f"node pid {pid} survived Ctrl-C"


def test_up_refuses_an_invalid_config(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[node.mx-1]\nstage = "mx"\n')
    r = subprocess.run([str(BIN / "palisade"), "up", "--config", str(bad)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "bad.toml:1" in r.stderr and "smtp" in r.stderr


def test_check_config_names_file_line_and_key(tmp_path):
    ok = subprocess.run([str(BIN / "palisade"), "check-config", "--config",
                         str(Path(__file__).parents[2] / "config" / "local.toml")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "12 nodes" in ok.stdout

    bad = tmp_path / "site.toml"
    bad.write_text(
        "[gateway]\nhostname = \"mx.site.test\"\n\n"
        "[stage.mx]\nnext = \"antivirus\"\n\n"
        "[node.mx-1]\nstage = \"mx\"\nsmtp = \"127.0.0.1:2525\"\n"
        "[node.mx-2]\nstage = \"mx\"\nsmtp = \"127.0.0.1:2525\"\n"
    )
    r = subprocess.run([str(BIN / "palisade"), "check-config", "--config", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert any(l.startswith(f"{bad}:5: stage.mx.next:") for l in lines), r.stderr
    assert any(l.startswith(f"{bad}:12: node.mx-2.smtp:") and "node.mx-1.smtp" in l
               for l in lines), r.stderr
    assert "2 error(s)" in r.stderr


def test_user_add_is_seen_by_a_running_mx(arch):
    arch.start("store-staff", "mx-1")
    c = Raw(arch.addr("mx-1"))
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<a@outside.test>")
    assert c.cmd("RCPT TO:<carol@example.test>")[0] == 550
    arch.add_user("carol@example.test")
    start = time.time()
    wait_for(lambda: c.cmd("RCPT TO:<carol@example.test>")[0] == 250, timeout=5,
             what="the new user accepted")
    assert time.time() - start < 5
    listed = arch.palisade("user", "list").stdout
    assert "carol@example.test" in listed and "store-staff" in listed
    # Short passwords and foreign domains are refused.
    r = arch.palisade("user", "add", "dave@example.test", "--password-stdin",
                      input="short\n", check=False)
    assert r.returncode != 0 and "8 characters" in r.stderr
    r = arch.palisade("user", "add", "eve@elsewhere.test", "--password-stdin",
                      input=PASSWORD + "\n", check=False)
    assert r.returncode != 0 and "not in a local domain" in r.stderr


def test_internal_stage_refuses_clients_that_are_not_upstream(arch):
    arch.start("antivirus-1")
    # 127.0.0.2 is loopback too, but no node of the mx or msa stage has it.
    s = socket.create_connection(arch.addr("antivirus-1"), timeout=10,
                                 source_address=("127.0.0.2", 0))
    data = s.recv(1024).decode()
    assert data.startswith("554 5.7.1"), data
    s.close()
    c = Raw(arch.addr("antivirus-1"))
    assert c.banner[0] == 220
