#!/usr/bin/env python3
"""Benchmark: authenticated submissions per second at the MSA (stage B).

Each submission is what a mail client does: connect to 465, TLS handshake,
AUTH PLAIN (argon2id check against the directory replica), MAIL/RCPT/DATA
of a 5 KB message, QUIT. Runs config/local.toml's msa-1 with its chain
(antivirus-1, antispam-1, store-staff) on private ports, like the tests.

    /usr/bin/python3 tests/bench/submission.py [--messages 400] [--clients 1,10]

Prints accepted messages/s (client view) per concurrency and the time until
every message was in the mailbox. The client is Python (ssl + smtplib), so
its own CPU is part of the figure; the server CPU per message is read from
/proc for msa-1.
"""

import argparse
import os
import smtplib
import ssl
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from conftest import PASSWORD, Architecture, pop3_messages  # noqa: E402


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=400)
    ap.add_argument("--clients", default="1,10")
    args = ap.parse_args()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    body = "From: <alice@example.test>\r\nTo: <bob@example.test>\r\nSubject: bench\r\n\r\n" + ("x" * 76 + "\r\n") * 64

    def unlimited(text):
        # The MSA's per-client limits (DM11, DM34) would throttle one client
        # sending hundreds of messages; the benchmark measures the path.
        return (text.replace("connections_per_minute = 60", "connections_per_minute = 1000000")
                    .replace("messages_per_minute = 60", "messages_per_minute = 1000000")
                    .replace("messages = 300\n", "messages = 1000000\n"))

    arch = Architecture(Path(tempfile.mkdtemp(prefix="palisade-bench-")), edit=unlimited)
    try:
        arch.add_user("alice@example.test")
        arch.add_user("bob@example.test")
        arch.start("store-staff", "msa-1", "antivirus-1", "antispam-1")
        addr = arch.addr("msa-1", "submissions")
        delivered = 0
        print("| clients | messages | accepted msg/s | msa-1 CPU ms/msg | all in mailbox after s |")
        print("|---:|---:|---:|---:|---:|")
        for clients in [int(c) for c in args.clients.split(",")]:
            def one(_):
                with smtplib.SMTP_SSL(*addr, context=ctx, timeout=60) as s:
                    s.ehlo()
                    s.user, s.password = "alice@example.test", PASSWORD
                    s.auth("PLAIN", s.auth_plain)
                    s.sendmail("alice@example.test", ["bob@example.test"], body)
            cpu0 = cpu_seconds(arch.procs["msa-1"].pid)
            t0 = time.time()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(one, range(args.messages)))
            elapsed = time.time() - t0
            cpu = cpu_seconds(arch.procs["msa-1"].pid) - cpu0
            delivered += args.messages
            while len(pop3_messages(arch, "bob@example.test")) < delivered:
                time.sleep(0.2)
            print(f"| {clients} | {args.messages} | {args.messages / elapsed:.0f} | "
                  f"{cpu * 1000 / args.messages:.2f} | {time.time() - t0:.1f} |")
    finally:
        arch.stop_all()


if __name__ == "__main__":
    main()
