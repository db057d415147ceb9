#!/usr/bin/env python3
"""Outgoing stage (F) delivery rate to 1 vs many destination domains.

Submits MESSAGES one-recipient messages over SESSIONS parallel SMTP
sessions to a running palisade-outgoing node; recipient domains cycle
through d0.test .. d{D-1}.test, whose MX records (a dnsmasq the caller
runs) point at 127.0.0.1, port `outbound.smtp_port` = Postfix's smtp-sink.
Prints accept and end-to-end messages/s (end: the server's queue is empty
and the sink counted every message) and, with --pid, the server's CPU per
message (process tree, shared/bench's accounting). Works against any
relay (Postfix too: tests/bench/outgoing-domains-vs-postfix.sh). Loopback
only, bounded in count and time.
"""
import argparse
import os
import smtplib
import subprocess
import sys
import threading
import time

p = argparse.ArgumentParser()
p.add_argument("--target", default="127.0.0.1:10026")
p.add_argument("--domains", type=int, default=1)
p.add_argument("--messages", type=int, default=1000)
p.add_argument("--sessions", type=int, default=10)
p.add_argument("--size", type=int, default=5000)
p.add_argument("--queue-cmd", required=True)
p.add_argument("--sink-count-cmd", required=True, help="prints messages the sink has received")
p.add_argument("--timeout", type=float, default=180)
p.add_argument("--label", default="palisade", help="printed as target=LABEL")
p.add_argument("--pid", help="root pid (or @pidfile) of the server, for CPU per message")
p.add_argument("--bench-dir", default=os.environ.get("BENCH", ""),
               help="shared/bench (for its process-tree CPU accounting)")
a = p.parse_args()
if a.bench_dir:
    sys.path.insert(0, a.bench_dir)


def server_cpu_ticks():
    """utime+stime (+ reaped children) of the server's process tree, or None."""
    if not a.pid or not a.bench_dir:
        return None
    from smtp_load import tree_cpu_ticks  # shared/bench: one accounting for all
    pid = open(a.pid[1:]).read().strip() if a.pid.startswith("@") else a.pid
    return tree_cpu_ticks([int(pid)])

host, port = a.target.rsplit(":", 1)
assert host.startswith("127."), "loopback only"
assert a.messages <= 100000

body = ("x" * 76 + "\r\n") * max(1, a.size // 78)
counter = iter(range(a.messages))
lock = threading.Lock()


def worker():
    with smtplib.SMTP(host, int(port), timeout=60) as s:
        s.ehlo("bench")
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            rcpt = f"u{i}@d{i % a.domains}.test"
            msg = f"From: <bench@sender.test>\r\nTo: <{rcpt}>\r\nSubject: {i}\r\n\r\n{body}"
            s.sendmail("bench@sender.test", [rcpt], msg.encode())


def count(cmd):
    return int(subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip() or 0)


sink0 = count(a.sink_count_cmd)
cpu0 = server_cpu_ticks()
t0 = time.time()
ts = [threading.Thread(target=worker) for _ in range(a.sessions)]
for t in ts:
    t.start()
for t in ts:
    t.join()
t_accept = time.time() - t0
while time.time() - t0 < a.timeout:
    if count(a.sink_count_cmd) - sink0 >= a.messages and count(a.queue_cmd) == 0:
        break
    time.sleep(0.05)
t_e2e = time.time() - t0
got = count(a.sink_count_cmd) - sink0
cpu1 = server_cpu_ticks()
cpu = ""
if cpu0 is not None and cpu1 is not None:
    cpu = f" srv_cpu_ms_per_msg={(cpu1 - cpu0) * 1000 / os.sysconf('SC_CLK_TCK') / a.messages:.2f}"
print(f"target={a.label} domains={a.domains} messages={a.messages} sessions={a.sessions} "
      f"size={a.size} accept_mps={a.messages / t_accept:.0f} e2e_mps={got / t_e2e:.0f} "
      f"delivered={got}{cpu}", flush=True)
