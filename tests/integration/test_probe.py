"""Issue 8: `palisade probe` (delivery probes: loss, bursts, latency per
hop) and `palisade trace` (conservation accounting: every hop's journal,
silent loss named). docs/probe.md.
"""

import json
import os
import shutil
import signal
import smtplib
import subprocess
import time

from conftest import BIN, PASSWORD, make_message, message_ids, mx_knows, pop3_messages, wait_for

USER = "alice@example.test"
FLOW1 = ["store-staff", "mx-1", "antivirus-1", "antivirus-2", "antispam-1", "antispam-2"]
# The long run; PROBE_SECONDS shortens it when iterating on this file.
PROBE_SECONDS = int(os.environ.get("PROBE_SECONDS", "300"))


def send(arch, subject, node="mx-1"):
    msg, msgid = make_message("sender@outside.test", USER, subject)
    host, port = arch.addr(node)
    with smtplib.SMTP(host, port, timeout=30) as s:
        s.sendmail("sender@outside.test", [USER], msg)
    return msgid


def no_cut_through(text):
    """Store-and-forward at every hop: with cut-through (issue 6) the
    entry and antivirus nodes queue nothing and so journal nothing; the
    path then starts at the first node that queued it (docs/probe.md)."""
    return text.replace("[stage.mx.cut_through]\nenabled = true", "[stage.mx.cut_through]\nenabled = false")


def trace(arch, msgid):
    r = arch.palisade("trace", msgid, "--format", "json", check=False)
    assert r.returncode in (0, 1, 2), r.stderr
    return r.returncode, json.loads(r.stdout)


def test_trace_follows_a_message_through_every_hop_to_the_store(arch_factory):
    arch = arch_factory(edit=no_cut_through)
    arch.add_user(USER)
    arch.start(*FLOW1)
    msgid = send(arch, "traced")
    wait_for(lambda: message_ids(pop3_messages(arch, USER)) == [msgid], what="delivery")
    code, t = trace(arch, msgid)
    assert code == 0, t
    assert t["stitched"]["losses"] == [] and t["stitched"]["vanished"] == []
    assert len(t["paths"]) == 1, t["paths"]
    path = t["paths"][0]
    hops = [h.split(" (")[0] for h in path.split(" -> ")]
    assert [h.split()[0].rsplit("-", 1)[0] for h in hops] == ["mx", "antivirus", "antispam", "store"], path
    assert hops[0].startswith("mx-1 ") and hops[3].startswith("store-staff "), path
    assert "delivered to INBOX for <alice@example.test>" in path, path
    # Each hop's id is the one the next hop named in its 250 reply.
    links = t["stitched"]["links"]
    assert len(links) == 3, links
    text = arch.palisade("trace", msgid).stdout
    assert "mx-1" in text and "store-staff" in text and "SILENT LOSS" not in text, text
    # A Message-ID nobody has seen: exit 2, said so.
    r = arch.palisade("trace", "<nobody@nowhere.test>", check=False)
    assert r.returncode == 2 and "no node has a record" in r.stdout, r.stdout


def test_trace_names_silent_loss_when_a_hop_lost_what_it_accepted(arch_factory):
    """antispam accepts the message and queues it (the store is down); then
    it is killed -9 and its data directory wiped: the antivirus journal
    says "forwarded to antispam-N as Q", antispam-N knows nothing of Q."""
    arch = arch_factory(edit=no_cut_through)
    arch.add_user(USER)
    arch.start(*FLOW1)
    wait_for(lambda: mx_knows(arch, USER), what="mx-1's replica knows the user")
    arch.kill("store-staff")
    msgid = send(arch, "to be lost")

    def held_by_antispam():
        _, t = trace(arch, msgid)
        return [
            c for c in t["stitched"]["copies"]
            if c["node"].startswith("antispam-")
            and any(e.get("queued") for e in c["entries"])
        ]

    holder = wait_for(held_by_antispam, what="the message queued at antispam")[0]
    code, t = trace(arch, msgid)
    assert code == 0 and "still queued" in " ".join(t["paths"]), t["paths"]

    node = holder["node"]
    arch.kill(node)
    shutil.rmtree(arch.data / node)
    arch.start(node)
    arch.start("store-staff")
    code, t = trace(arch, msgid)
    assert code == 1, t
    [loss] = t["stitched"]["losses"]
    assert loss["to_node"] == node and loss["to_id"] == holder["id"], loss
    assert loss["from_node"].startswith("antivirus-"), loss
    text = arch.palisade("trace", msgid, check=False).stdout
    assert f"SILENT LOSS: {loss['from_node']}" in text and f"{node} has no record of {holder['id']}" in text, text


def test_probe_reports_no_loss_and_the_latency_spike_of_a_hung_antispam_node(arch):
    """One run of PROBE_SECONDS (5 min) through flows 1 and 4. From 30 % to
    50 % of it antispam-1 hangs (SIGSTOP: it still accepts TCP, never
    answers), then it is killed -9 and restarted. The pair fails over:
    no probe is lost, and the probes caught by the hung node show as a
    latency spike well above the quiet baseline."""
    arch.add_user(USER)
    nodes = FLOW1 + ["mx-2", "msa-1", "msa-2"]
    arch.start(*nodes)
    out = arch.workdir / "probe.json"
    with open(out, "w") as f:
        probe = subprocess.Popen(
            [str(BIN / "palisade"), "probe", "--config", str(arch.config),
             "--duration", f"{PROBE_SECONDS}s", "--interval", "2s", "--flow", "1,4",
             "--user", USER, "--password-stdin", "--format", "json", "--wait", "4m"],
            stdin=subprocess.PIPE, stdout=f, stderr=subprocess.PIPE, text=True,
        )
        probe.stdin.write(PASSWORD + "\n")
        probe.stdin.close()
        start = time.time()
        outage_start = start + PROBE_SECONDS * 0.3
        outage_end = start + PROBE_SECONDS * 0.5
        try:
            time.sleep(max(0, outage_start - time.time()))
            arch.procs["antispam-1"].send_signal(signal.SIGSTOP)
            time.sleep(max(0, outage_end - time.time()))
            arch.kill("antispam-1")
            arch.start("antispam-1")
            probe.wait(timeout=PROBE_SECONDS + 420)
        finally:
            if probe.poll() is None:
                probe.kill()
                probe.wait()
    err = probe.stderr.read()
    report = json.loads(out.read_text())
    assert probe.returncode == 0, (err, {k: report[k] for k in ("sent", "failed_sends", "lost")})
    expected = 2 * int(PROBE_SECONDS / 2)
    assert report["sent"] >= expected - 4, report["sent"]
    assert report["failed_sends"] == 0 and report["lost"] == 0 and report["loss_pct"] == 0
    assert report["received"] == report["sent"]
    assert report["bursts"] == []
    assert {f["flow"] for f in report["flows"]} == {1, 4}
    # Per-hop latency, named by node pair, for every stage of both flows.
    pairs = [p for p, _ in report["hops"]]
    for want in ["client -> mx-1", "client -> msa-1", "mx-1 -> antivirus-", "msa-2 -> antivirus-",
                 "antivirus-1 -> antispam-", "antispam-2 -> store-staff", "antispam-1 -> store-staff"]:
        assert any(p.startswith(want) for p in pairs), (want, pairs)
    for _, s in report["hops"]:
        assert s["n"] > 0 and 0 <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"]

    def latencies(t0, t1):
        return [p["latency_s"] for p in report["probes"] if t0 <= p["sent_us"] / 1e6 < t1]

    quiet = latencies(start, outage_start - 2)
    outage = latencies(outage_start + 1, outage_end)
    assert quiet and outage
    baseline = sorted(quiet)[int(0.99 * (len(quiet) - 1))]
    assert max(outage) > max(5.0, 5 * baseline), (max(outage), baseline)
    # The report itself names the spike, inside the outage window.
    assert any(outage_start - 2 <= s["from_us"] / 1e6 <= outage_end for s in report["spikes"]), report["spikes"]
    # The hop into (or out of) the hung pair is the slow one.
    slow = [p for p in report["probes"] if p["latency_s"] == max(outage)][0]
    worst_hop = max(slow["hops"], key=lambda h: h[1])[0]
    assert "antispam-" in worst_hop, slow["hops"]
