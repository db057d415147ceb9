"""Issue 9 (part 1): a pair of MX nodes that acts as one.

- Shared policy state: both MX nodes keep greylisting and rate limits in a
  real redis-server (Debian package) started here on a loopback port and
  stopped by PID. A triplet greylisted by mx-1 passes on mx-2 once the
  delay is served; a client's connection rate counts across both; with
  Redis killed mail still flows, the degradation is logged and counted
  (palisade_state_backend_degraded_total), and shared state resumes when
  Redis is back.
- PROXY protocol: behind a trusted proxy (127.0.0.5) the DNSBL and the
  rate limit act on the address in the header (v1 text and v2 binary),
  a header from an untrusted address is refused with 554 5.7.0, and a
  trusted proxy connection without a header is closed.
"""

import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request

import pytest

from conftest import wait_for, wait_port
from dns import DnsServer
from test_mx_defenses import USER, Sink, Smtp, code_of, message, mx_config


class RedisServer:
    """redis-server on a free loopback port, no persistence; stopped by PID."""

    def __init__(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="palisade-redis-")
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
             "--save", "", "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL)
        wait_port(("127.0.0.1", self.port), proc=self.proc)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def keys(self, pattern="palisade:*"):
        out = subprocess.run(["redis-cli", "-p", str(self.port), "--scan", "--pattern", pattern],
                             capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.split()

    def close(self):
        if self.proc.poll() is None:
            self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def redis():
    r = RedisServer()
    yield r
    r.close()


@pytest.fixture(scope="module")
def dns():
    zone = [
        # A sender with an MX but no SPF: greylisted.
        "mx-host=plain.test,mx.plain.test,10",
        "host-record=mx.plain.test,192.0.2.11",
        # SPF pass for every loopback client: not greylisted.
        "mx-host=good.test,mx.good.test,10",
        "host-record=mx.good.test,192.0.2.10",
        'txt-record=good.test,"v=spf1 ip4:127.0.0.0/8 -all"',
        # DNSBL bl.test lists 127.0.0.9 (the proxied client), not the proxy.
        "host-record=9.0.0.127.bl.test,127.0.0.2",
    ]
    with DnsServer(zone) as d:
        yield d


@pytest.fixture
def sink():
    s = Sink()
    yield s
    s.close()


def shared_state(redis, lease="30s"):
    return ("[node.mx-1]", f'[gateway.state]\nbackend = "redis"\n'
            f'url = "redis://127.0.0.1:{redis.port}/0"\n'
            'key_prefix = "palisade:"\n'
            # Generous for a busy test machine; production: the 50 ms default.
            'timeout = "250ms"\nretry_after = "500ms"\n'
            f'connection_lease = "{lease}"\n\n[node.mx-1]')


def pair(arch_factory, dns, sink, *edits):
    a = arch_factory(edit=mx_config(dns, sink, *edits))
    a.add_user(USER)
    a.start("store-staff", "mx-1", "mx-2")
    return a


def metric(arch, node, name, **labels):
    url = "http://%s:%d/metrics" % arch.addr(node, "metrics")
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---- shared state ----------------------------------------------------------

def test_triplet_greylisted_on_mx1_is_accepted_on_mx2(arch_factory, dns, sink, redis):
    a = pair(arch_factory, dns, sink, shared_state(redis))
    c = Smtp(a.addr("mx-1"))
    assert code_of(c.envelope("someone@plain.test")) == (451, "4.7.1")
    assert [k for k in redis.keys() if k.startswith("palisade:dm22:")]
    time.sleep(2.5)
    # The retry lands on the other node of the pair: accepted at once.
    c2 = Smtp(a.addr("mx-2"))
    assert c2.envelope("someone@plain.test")[0] == 250
    assert c2.data(message("someone@plain.test", "greylisted on mx-1"))[0] == 250
    sink.find(b"greylisted on mx-1")
    # A new triplet is still greylisted on mx-2: the state is shared, not off.
    c2.cmd("RSET")
    assert c2.cmd("MAIL FROM:<other@plain.test>")[0] == 250
    assert code_of(c2.cmd(f"RCPT TO:<{USER}>")) == (451, "4.7.1")


def test_client_rate_limit_counts_across_both_nodes(arch_factory, dns, sink, redis):
    a = pair(arch_factory, dns, sink, shared_state(redis),
             ("connections_per_minute = 120", "connections_per_minute = 3"))
    for node in ("mx-1", "mx-2", "mx-1"):
        assert Smtp(a.addr(node), source="127.0.0.6").banner[0] == 220
    # Three connections were spread over the pair: the fourth is refused
    # by either node.
    for node in ("mx-2", "mx-1"):
        c = Smtp(a.addr(node), source="127.0.0.6", banner=False)
        assert code_of(c.reply()) == (421, "4.7.0")
    # Another client has its own bucket.
    assert Smtp(a.addr("mx-2"), source="127.0.0.7").banner[0] == 220


def test_simultaneous_connections_count_across_the_pair_and_a_dead_nodes_slots_expire(
        arch_factory, dns, sink, redis):
    a = pair(arch_factory, dns, sink, shared_state(redis, lease="3s"),
             ("per_client = 20", "per_client = 2"))
    client = "127.0.0.21"

    def refused(node):
        c = Smtp(a.addr(node), source=client, banner=False)
        code, text = c.reply()
        return (code, text[:5]) == (421, "4.7.0") and f"Too many connections from {client}" in text

    held = [Smtp(a.addr("mx-1"), source=client), Smtp(a.addr("mx-2"), source=client)]
    assert [c.banner[0] for c in held] == [220, 220]
    assert redis.keys(f"palisade:dm10:mx:{client}")
    # One connection open on each node: the third is refused by either.
    assert refused("mx-1") and refused("mx-2")
    # Another client has its own count.
    assert Smtp(a.addr("mx-1"), source="127.0.0.22").banner[0] == 220
    # One session ends (QUIT): its slot is free for a new one on the other
    # node (the release is sent as the session ends).
    assert held[0].cmd("QUIT")[0] == 221
    held[0].close()

    def admitted_on_mx2():
        c = Smtp(a.addr("mx-2"), source=client, banner=False)
        if c.reply()[0] == 220:
            return c
        return None

    held[0] = wait_for(admitted_on_mx2, timeout=10, what="the freed slot")
    # Both sessions are now on mx-2; it dies with them open. Its slots
    # still count until their lease (3 s, renewed by mx-2's heartbeat
    # while it lived) runs out...
    a.kill("mx-2")
    assert refused("mx-1")

    def admitted_on_mx1():
        c = Smtp(a.addr("mx-1"), source=client, banner=False)
        return c.reply()[0] == 220

    # ...and no longer: mx-1 admits the client again.
    wait_for(admitted_on_mx1, timeout=20, what="the dead node's slots to expire")


def test_redis_down_mail_flows_degradation_counted_then_shared_again(
        arch_factory, dns, sink, redis):
    a = pair(arch_factory, dns, sink, shared_state(redis))
    assert Smtp(a.addr("mx-1"), source="127.0.0.6").banner[0] == 220
    redis.kill()
    # Mail still flows (SPF pass: no greylisting), decided on local state.
    c = Smtp(a.addr("mx-1"), source="127.0.0.6")
    assert c.envelope("news@good.test")[0] == 250
    assert c.data(message("news@good.test", "while redis is down"))[0] == 250
    sink.find(b"while redis is down")
    assert metric(a, "mx-1", "palisade_state_backend_degraded_total", mechanism="DM11") >= 1
    log = a.log("mx-1")
    assert "Redis unreachable" in log, log[-2000:]
    # A greylisted sender meets the node's own greylist meanwhile.
    c.cmd("RSET")
    assert c.cmd("MAIL FROM:<late@plain.test>")[0] == 250
    assert code_of(c.cmd(f"RCPT TO:<{USER}>")) == (451, "4.7.1")
    assert metric(a, "mx-1", "palisade_state_backend_degraded_total", mechanism="DM22") >= 1
    # Redis is back (empty): the nodes write to it again by themselves.
    redis.start()

    def shared_again():
        Smtp(a.addr("mx-1"), source="127.0.0.8").close()
        return [k for k in redis.keys() if k.endswith("conn:127.0.0.8")]

    wait_for(shared_again, timeout=20, what="mx-1 writing rate state to Redis again")

    def recovery_logged():
        # A reply slower than the timeout on this busy machine counts
        # as a failure: keep the node talking to Redis until one is in time.
        Smtp(a.addr("mx-1"), source="127.0.0.8").close()
        return "Redis answers again" in a.log("mx-1")

    wait_for(recovery_logged, timeout=20, what="recovery log")


# ---- PROXY protocol ----------------------------------------------------------

PROXY_EDITS = (
    ('[stage.mx]\nrelay', '[stage.mx]\nproxy_protocol = true\n'
     'trusted_proxies = ["127.0.0.5"]\nproxy_header_timeout = "2s"\nrelay'),
    ("zones = []", 'zones = [{ zone = "bl.test", answers = ["127.0.0.2"] }]'),
    ("connections_per_minute = 120", "connections_per_minute = 2"),
)


def v1(client):
    return f"PROXY TCP4 {client} 127.0.0.1 40000 25\r\n".encode()


def v2(client):
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    addrs = socket.inet_aton(client) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", 40000, 25)
    # Version 2, PROXY command; TCP over IPv4.
    return sig + bytes([0x21, 0x11]) + struct.pack("!H", len(addrs)) + addrs


def through_proxy(addr, header, source="127.0.0.5"):
    c = Smtp(addr, source=source, banner=False)
    c.send(header)
    return c


@pytest.fixture
def proxied_mx(arch_factory, dns, sink):
    a = arch_factory(edit=mx_config(dns, sink, *PROXY_EDITS))
    a.add_user(USER)
    a.start("store-staff", "mx-1")
    return a


@pytest.mark.parametrize("header", [v1, v2], ids=["v1", "v2"])
def test_dnsbl_and_rate_limit_act_on_the_proxied_address(proxied_mx, sink, header):
    addr = proxied_mx.addr("mx-1")
    # The proxied client is listed; the proxy itself is clean.
    c = through_proxy(addr, header("127.0.0.9"))
    code, text = c.reply()
    assert (code, text[:5]) == (554, "5.7.1") and "bl.test" in text
    # A clean client through the same proxy gets in, and its mail carries
    # its own address in Received.
    c = through_proxy(addr, header("127.0.0.10"))
    assert c.reply()[0] == 220
    assert c.envelope("news@good.test")[0] == 250
    assert c.data(message("news@good.test", f"proxied {header.__name__}"))[0] == 250
    got = sink.find(f"proxied {header.__name__}".encode()).decode()
    received = got.split("\r\n\r\n")[0]
    assert "127.0.0.10" in received and "127.0.0.5" not in received, received
    # Rate limit per proxied client (2 a minute): the third is refused,
    # while another client behind the same proxy is not.
    assert through_proxy(addr, header("127.0.0.10")).reply()[0] == 220
    assert code_of(through_proxy(addr, header("127.0.0.10")).reply()) == (421, "4.7.0")
    assert through_proxy(addr, header("127.0.0.11")).reply()[0] == 220


@pytest.mark.parametrize("header", [v1, v2], ids=["v1", "v2"])
def test_proxy_header_from_untrusted_address_is_refused(proxied_mx, header):
    c = through_proxy(proxied_mx.addr("mx-1"), header("127.0.0.20"), source="127.0.0.6")
    reply = c.reply()
    if reply[0] == 220:
        # The header arrived after the banner: refused as the first line.
        reply = c.reply()
    assert code_of(reply) == (554, "5.7.0")
    assert c.closed()
    assert "PROXY header from an untrusted address refused" in proxied_mx.log("mx-1")


def test_trusted_proxy_without_header_is_closed(proxied_mx):
    c = Smtp(proxied_mx.addr("mx-1"), source="127.0.0.5", banner=False)
    c.send(b"EHLO client.good.test\r\n")
    assert c.closed()
    wait_for(lambda: "trusted proxy connection refused" in proxied_mx.log("mx-1"),
             timeout=10, what="refusal log line")
    # Direct clients that are not proxies still talk SMTP as usual.
    assert Smtp(proxied_mx.addr("mx-1"), source="127.0.0.12").banner[0] == 220


def test_through_a_real_haproxy_with_send_proxy_v2(proxied_mx, tmp_path):
    """Interop: haproxy (Debian package) in TCP mode in front of mx-1,
    connecting from the trusted 127.0.0.5 with send-proxy-v2."""
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    host, mx_port = proxied_mx.addr("mx-1")
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(f"""global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend smtp
    bind 127.0.0.1:{port}
    default_backend mx
backend mx
    server mx-1 {host}:{mx_port} send-proxy-v2 source 127.0.0.5
""")
    proc = subprocess.Popen([haproxy, "-f", str(cfg), "-db"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(("127.0.0.1", port), proc=proc)
        # The DNSBL sees the client behind haproxy, not haproxy.
        c = Smtp(("127.0.0.1", port), source="127.0.0.9", banner=False)
        code, text = c.reply()
        assert (code, text[:5]) == (554, "5.7.1") and "bl.test" in text
        c = Smtp(("127.0.0.1", port), source="127.0.0.13")
        assert c.banner[0] == 220
        assert c.cmd("EHLO client.good.test")[0] == 250
        log = proxied_mx.log("mx-1")
        assert re.search(r"session start peer=127\.0\.0\.13:\d+ .*proxy=127\.0\.0\.5", log), log[-1500:]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def test_harvester_switching_nodes_keeps_its_bad_rcpt_count(arch_factory, dns, sink, redis):
    a = pair(arch_factory, dns, sink, shared_state(redis),
             ("tarpit_after = 3", "tarpit_after = 2"),
             ("disconnect_after = 10", 'disconnect_after = 3\nclient_window = "10m"'))
    c = Smtp(a.addr("mx-1"), source="127.0.0.14")
    assert c.cmd("EHLO client.good.test")[0] == 250
    assert c.cmd("MAIL FROM:<news@good.test>")[0] == 250
    for n in (1, 2):
        assert code_of(c.cmd(f"RCPT TO:<nobody{n}@example.test>")) == (550, "5.1.1")
    c.close()
    # The harvester reconnects to the other node: its third unknown
    # recipient there reaches disconnect_after.
    c = Smtp(a.addr("mx-2"), source="127.0.0.14")
    assert c.cmd("EHLO client.good.test")[0] == 250
    assert c.cmd("MAIL FROM:<news@good.test>")[0] == 250
    assert code_of(c.cmd("RCPT TO:<nobody3@example.test>")) == (421, "4.7.0")
    assert c.closed()
