#!/usr/bin/env python3
"""Benchmark: IMAP FETCH of 1,000 messages from one store node, with imaplib.

Starts store-staff of config/local.toml on free ports (release binaries,
`cargo build --release` first), APPENDs N messages of about 2 KiB to one
user's INBOX over IMAPS, then times
  * FETCH 1:* (FLAGS UID RFC822.SIZE)  -- index only, no body read
  * FETCH 1:* (BODY.PEEK[])            -- every body
and prints messages/s for each (best of --runs). Everything it starts is
stopped at the end. Not a test: it asserts only that the answers are complete.

usage: tests/bench/imap-fetch.py [--messages 1000] [--runs 5]
"""

import argparse
import imaplib
import shutil
import ssl
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from conftest import PASSWORD, Architecture, wait_port  # noqa: E402

USER = "bench@example.test"


def message(i):
    body = "".join(f"line {j} of message {i}: lorem ipsum dolor sit amet\r\n" for j in range(40))
    return (
        f"From: Sender <sender@outside.test>\r\nTo: <{USER}>\r\nSubject: bench {i}\r\n"
        f"Message-ID: <bench-{i}@outside.test>\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n\r\n{body}"
    ).encode()


def connect(arch):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    host, port = arch.addr("store-staff", "imaps")
    m = imaplib.IMAP4_SSL(host, port, ssl_context=ctx, timeout=120)
    m.login(USER, PASSWORD)
    return m


def best(runs, fn):
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    n = args.messages
    workdir = Path(tempfile.mkdtemp(prefix="palisade-bench-imap-"))
    arch = Architecture(workdir)
    try:
        arch.add_user(USER)
        arch.start("store-staff")
        wait_port(arch.addr("store-staff", "imaps"), proc=arch.procs["store-staff"])
        m = connect(arch)
        t0 = time.perf_counter()
        total = 0
        for i in range(n):
            data = message(i)
            total += len(data)
            typ, _ = m.append("INBOX", None, None, data)
            assert typ == "OK"
        append_s = time.perf_counter() - t0
        typ, data = m.select("INBOX", readonly=True)
        assert data == [str(n).encode()], data

        def fetch_index():
            typ, data = m.fetch("1:*", "(FLAGS UID RFC822.SIZE)")
            assert typ == "OK" and len(data) == n

        def fetch_bodies():
            typ, data = m.fetch("1:*", "(BODY.PEEK[])")
            assert typ == "OK" and sum(1 for d in data if isinstance(d, tuple)) == n

        index_s = best(args.runs, fetch_index)
        body_s = best(args.runs, fetch_bodies)
        m.logout()
        print(f"messages: {n}, {total / n:.0f} bytes each, {total / 1e6:.1f} MB")
        print(f"APPEND (one per fsync'd transaction): {n / append_s:,.0f} messages/s")
        print(f"FETCH 1:* (FLAGS UID RFC822.SIZE): {index_s * 1000:.1f} ms = {n / index_s:,.0f} messages/s")
        print(f"FETCH 1:* (BODY.PEEK[]): {body_s * 1000:.1f} ms = {n / body_s:,.0f} messages/s, "
              f"{total / body_s / 1e6:.1f} MB/s")
    finally:
        arch.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
