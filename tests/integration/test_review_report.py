"""`palisade review`: exit status from the config, and the HTML report read
by a real browser.

The review runs against a real MX (and its store) on loopback: a relay
attempt makes DM7 act, each `palisade review --config` run appends a
snapshot of the nodes' /metrics to the history, and the HTML page is
rendered by headless Chromium (Debian `chromium`) to a PNG and to its DOM.
Chromium gets a dead loopback proxy and a resolver that resolves nothing, so
it cannot reach any other address even for its own background requests.
"""

import json
import re
import struct
import subprocess
import time

import pytest

from conftest import Raw
from dns import DnsServer

FAULTS = 14


def review(arch, *args, check=False):
    return arch.palisade("review", *args, check=check)


def without_relay_access(text):
    # DM17 refuses to load without DM7, so it goes with it.
    for table in ("[stage.mx.mechanisms.dm7_relay_access]",
                  "[stage.msa.mechanisms.dm7_relay_access]",
                  "[stage.mx.mechanisms.dm17_rfc2505]"):
        assert table in text, table
        text = text.replace(table, "", 1)
    return text


def test_exit_status_follows_unprotected_faults(arch_factory):
    good = arch_factory()
    r = review(good, "--format", "json", "--no-metrics")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    coverage = {c["fault"]: c["protection"] for c in report["review"]["coverage"]}
    assert len(coverage) == FAULTS
    assert coverage["open-relay"] == "solved"
    assert "unprotected" not in coverage.values()
    assert report["evaluation"] == []

    bad = arch_factory(edit=without_relay_access)
    r = review(bad, "--format", "json", "--no-metrics")
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)
    coverage = {c["fault"]: c["protection"] for c in report["review"]["coverage"]}
    assert coverage["open-relay"] == "unprotected"
    assert [e["fault"] for e in report["evaluation"]] == ["open-relay"]
    step = report["evaluation"][0]["steps"][0]
    assert (step["mechanism"], step["stage"], step["config_key"]) == (7, "mx", "dm7_relay_access")
    # The text report says it too, for the admin reading cron's mail.
    r = review(bad, "--no-metrics")
    assert r.returncode == 1
    assert re.search(r"open relay\s+UNPROTECTED", r.stdout), r.stdout

    broken = arch_factory(edit=lambda t: t.replace('max_recipients = 100', 'max_recipients = "many"'))
    r = review(broken, "--no-metrics")
    assert r.returncode == 2
    assert "palisade.toml:" in r.stderr and "expected usize" in r.stderr, r.stderr


@pytest.fixture
def dns():
    with DnsServer([
        "mx-host=good.test,mx.good.test,10",
        "host-record=mx.good.test,192.0.2.10",
        'txt-record=good.test,"v=spf1 ip4:127.0.0.0/8 -all"',
    ]) as d:
        yield d


@pytest.fixture
def mx(arch_factory, dns, sink):
    def edit(t):
        t = t.replace("[gateway]\n", f'[gateway]\ndns = "{dns.addr}"\n', 1)
        return t.replace('[stage.mx]\nnext = "antivirus"\n',
                         f'[stage.mx]\nrelay = ["127.0.0.1:{sink.port}"]\n', 1)

    a = arch_factory(edit=edit)
    a.start("store-staff", "mx-1")
    return a


def relay_attempt(arch):
    c = Raw(arch.addr("mx-1"))
    assert c.cmd("EHLO client.good.test")[0] == 250
    assert c.cmd("MAIL FROM:<news@good.test>")[0] == 250
    assert c.cmd("RCPT TO:<victim@elsewhere.test>")[0] == 554
    c.cmd("QUIT")
    c.close()


def chromium(workdir, *args):
    """Headless Chromium with no way off loopback."""
    return subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={workdir / 'chromium'}", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--disable-domain-reliability",
         "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
         *args],
        capture_output=True, timeout=120,
    )


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height, len(data)


def test_html_report_renders_in_chromium(mx):
    page = mx.workdir / "report.html"
    history = mx.data / "audit" / "metrics-history.jsonl"

    relay_attempt(mx)
    r = review(mx, "--format", "html", "--output", str(page))
    assert r.returncode == 0, r.stderr
    html = page.read_text()
    # One snapshot: the totals as bars, DM7's refusal among them.
    assert 'class="chart bars"' in html
    assert "DM7 RELAY access lists: reject" in html
    assert len(history.read_text().splitlines()) == 1

    # Counters move; the next run turns the history into a series.
    time.sleep(1.1)
    relay_attempt(mx)
    relay_attempt(mx)
    r = review(mx, "--format", "html", "--output", str(page))
    assert r.returncode == 0, r.stderr
    html = page.read_text()
    assert 'class="chart lines"' in html
    snapshots = [json.loads(l) for l in history.read_text().splitlines()]
    assert len(snapshots) == 2

    def dm7(snap):
        return sum(s["value"] for s in snap["samples"]
                   if s["mechanism"] == 7 and s["node"] == "mx-1")
    assert dm7(snapshots[1]) - dm7(snapshots[0]) == 2
    # Nodes that are not running are named, not fatal.
    assert any(u.startswith("antivirus-1 ") for u in snapshots[1]["unreachable"])

    png = mx.workdir / "report.png"
    shot = chromium(mx.workdir, f"--screenshot={png}", "--window-size=1400,2000",
                    page.as_uri())
    assert png.exists(), shot.stderr.decode(errors="replace")[-2000:]
    width, height, size = png_size(png)
    assert (width, height) == (1400, 2000)
    # A blank page of that size compresses to a few kB; the report does not.
    assert size > 50_000, size

    dom = chromium(mx.workdir, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr.decode(errors="replace")[-2000:]
    dom = dom.stdout.decode()
    matrix = re.search(r'<table class="matrix">(.*?)</table>', dom, re.S)
    assert matrix, "no matrix in the DOM"
    rows = re.findall(r'<tr data-fault="([a-z-]+)"', matrix.group(1))
    assert len(rows) == FAULTS and len(set(rows)) == FAULTS
    assert "open-relay" in rows and "mail-bombing" in rows
    # Reviewed, not probed: deployed cells are "not tested", DM1 (perimeter) not deployed.
    assert 'class="cell not-tested"' in matrix.group(1)
    assert 'class="cell not-deployed"' in matrix.group(1)
    assert re.search(r"<svg[^>]*class=\"chart lines\"", dom)
