"""DANE (RFC 7672) in the outgoing stage, against a real DNSSEC-signed zone.

The test signs its own `test.` zone (ldns-keygen / ldns-signzone, keys in a
temp dir), serves it with NSD on a loopback port, and gives the outgoing
stage the zone's DNSKEY as `dane.trust_anchor_file`: every answer is
validated by palisade itself from that anchor. `plain.test` is a delegated,
unsigned child zone (no DS: provably insecure). The SMTP sinks of
test_outgoing stand on 127.0.0.4x addresses; their TLS certificates are
self-signed and in no CA store: only the TLSA records can vouch for them.
"""

import hashlib
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import Architecture
from dns import free_udp_tcp_port, stop_by_pid
from test_outgoing import Sink, metrics, port_free_on, queue_list, submit, wait_for

IPS = [f"127.0.0.{i}" for i in range(40, 53)]


def openssl(*args, input=None):
    return subprocess.run(["openssl", *map(str, args)], input=input, check=True,
                          capture_output=True).stdout


def self_signed(d, name, cn):
    """A self-signed EC certificate (no CA anywhere) and its server context."""
    key, pem = d / f"{name}.key", d / f"{name}.pem"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", key, "-out", pem, "-days", "2", "-subj", f"/CN={cn}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pem, key)
    return ctx, pem


def spki_sha256(pem):
    """TLSA 3 1 1 data: SHA-256 of the certificate's SubjectPublicKeyInfo."""
    der = openssl("x509", "-in", pem, "-pubkey", "-noout")
    der = openssl("pkey", "-pubin", "-outform", "DER", input=der)
    return hashlib.sha256(der).hexdigest()


def cert_sha256(pem):
    """TLSA x 0 1 data: SHA-256 of the whole certificate."""
    return hashlib.sha256(openssl("x509", "-in", pem, "-outform", "DER")).hexdigest()


def ca_and_leaf(d, host):
    """A private CA and a leaf for `host` it signed; the sink sends both
    (RFC 7672 §3.1.2: the DANE-TA certificate must be in the chain)."""
    ca_key, ca = d / "ca.key", d / "ca.pem"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=DANE-TA test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    key, csr, pem, ext = d / "ta.key", d / "ta.csr", d / "ta.pem", d / "ta.ext"
    ext.write_text(f"basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:{host}\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", csr, "-subj", f"/CN={host}")
    openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-out", pem, "-days", "2", "-extfile", ext)
    chain = d / "ta-chain.pem"
    chain.write_bytes(pem.read_bytes() + ca.read_bytes())
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(chain, key)
    return ctx, ca


class SignedDns:
    """NSD on 127.0.0.1:<port> serving the signed `test.` zone and the
    unsigned `plain.test.` child. `tamper` maps a placeholder string of the
    unsigned zone to the text served instead, after signing (a record whose
    RRSIG no longer verifies). Stopped by PID."""

    def __init__(self, test_zone, plain_zone, tamper):
        self.dir = Path(tempfile.mkdtemp(prefix="palisade-nsd-"))
        self.port = free_udp_tcp_port()
        d = self.dir
        (d / "test.zone").write_text(test_zone)
        (d / "plain.test.zone").write_text(plain_zone)
        key = subprocess.run(["ldns-keygen", "-a", "ECDSAP256SHA256", "-k", "test."], cwd=d,
                             check=True, capture_output=True, text=True).stdout.strip()
        subprocess.run(["ldns-signzone", "test.zone", key], cwd=d, check=True, capture_output=True)
        signed = (d / "test.zone.signed").read_text()
        for placeholder, served in tamper.items():
            assert placeholder in signed
            signed = signed.replace(placeholder, served)
        (d / "test.zone.signed").write_text(signed)
        # The trust anchor: the zone's KSK, as a DNSKEY record.
        self.anchor = d / "anchor.key"
        self.anchor.write_text((d / f"{key}.key").read_text())
        conf = d / "nsd.conf"
        conf.write_text(f"""server:
    ip-address: 127.0.0.1
    port: {self.port}
    zonesdir: "{d}"
    pidfile: "{d}/nsd.pid"
    database: ""
    zonelistfile: "{d}/zone.list"
    xfrdfile: "{d}/xfrd.state"
    xfrdir: "{d}"
    username: ""
    chroot: ""
    logfile: "{d}/nsd.log"
    server-count: 1
    verbosity: 1
remote-control:
    control-enable: no
zone:
    name: "test."
    zonefile: "test.zone.signed"
zone:
    name: "plain.test."
    zonefile: "plain.test.zone"
""")
        self.proc = subprocess.Popen(["nsd", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.time() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nsd exited: {self.proc.stderr.read().decode()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self):
        stop_by_pid(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def dane_world():
    for tool in ("nsd", "ldns-signzone", "ldns-keygen", "openssl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (nsd, ldnsutils)")
    port = next(p for p in range(31025, 31525) if all(port_free_on(ip, p) for ip in IPS))
    d = Path(tempfile.mkdtemp(prefix="palisade-dane-"))
    ee, ee_pem = self_signed(d, "ee", "not-the-mx-name.example")
    _, other_pem = self_signed(d, "other", "other.example")
    ta, ca_pem = ca_and_leaf(d, "mx.ta.test")
    sinks = {
        "good": Sink(IPS[0], port, tls=ee),
        "wrong": Sink(IPS[1], port, tls=ee),
        "notls": Sink(IPS[2], port),
        "unusable": Sink(IPS[3], port),
        "bogus": Sink(IPS[4], port, tls=ee),
        "bogusmx": Sink(IPS[5], port),
        "plain": Sink(IPS[6], port),
        "ta": Sink(IPS[7], port, tls=ta),
        "cname": Sink(IPS[8], port, tls=ee),
        "mixed1": Sink(IPS[9], port, tls=ee),
        "mixed2": Sink(IPS[10], port),
        "alias": Sink(IPS[11], port, tls=ee),
        "alias2": Sink(IPS[12], port, tls=ee),
    }
    good, wrong = spki_sha256(ee_pem), spki_sha256(other_pem)
    placeholder = secrets.token_hex(32)
    tlsa = {
        "good": f"3 1 1 {good}",
        "wrong": f"3 1 1 {wrong}",                  # another key: must not match
        "notls": f"3 1 1 {good}",                   # sink offers no STARTTLS
        "unusable": f"1 1 1 {good}",                # PKIX-EE only: unusable, TLS still required
        "bogus": f"3 1 1 {placeholder}",            # replaced by `good` after signing
        "bogusmx": f"3 1 1 {good}",
        "ta": f"2 0 1 {cert_sha256(ca_pem)}",       # DANE-TA: the private CA
    }
    lines = ["$ORIGIN test.", "$TTL 300",
             "@ IN SOA ns.test. admin.test. 1 3600 600 86400 300",
             "@ IN NS ns.test.", "ns IN A 127.0.0.1",
             "plain IN NS ns.plain.test.", "ns.plain IN A 127.0.0.1"]  # unsigned child, no DS
    for name, rdata in tlsa.items():
        ip = IPS[list(sinks).index(name)]
        lines += [f"{name} IN MX 10 mx.{name}", f"mx.{name} IN A {ip}",
                  f"_{port}._tcp.mx.{name} IN TLSA {rdata}"]
    # RFC 7672 §2.2.3: a TLSA owner name that is a (secure) CNAME, to a
    # record that does not match: only following it keeps the mail back.
    lines += ["cname IN MX 10 mx.cname", f"mx.cname IN A {IPS[8]}",
              f"_{port}._tcp.mx.cname IN CNAME tlsa.shared", f"tlsa.shared IN TLSA 3 1 1 {wrong}"]
    # A DANE primary whose key does not match and a secondary with no TLSA
    # records at all: RFC 7672 §2.2 gives the secondary pre-DANE
    # (opportunistic) TLS, as Postfix's `dane` level does.
    lines += ["mixed IN MX 10 mx1.mixed", "mixed IN MX 20 mx2.mixed",
              f"mx1.mixed IN A {IPS[9]}", f"mx2.mixed IN A {IPS[10]}",
              f"_{port}._tcp.mx1.mixed IN TLSA 3 1 1 {wrong}"]
    # RFC 7672 §2.2.2: an MX host that is an alias. Its TLSA records are
    # looked for at the expanded name first (alias: there they match, at
    # the alias they do not), then at the MX name (alias2: none at the
    # expanded name; the ones at the MX name match).
    lines += ["alias IN MX 10 mx.alias", "mx.alias IN CNAME real.alias", f"real.alias IN A {IPS[11]}",
              f"_{port}._tcp.real.alias IN TLSA 3 1 1 {good}",
              f"_{port}._tcp.mx.alias IN TLSA 3 1 1 {wrong}",
              "alias2 IN MX 10 mx.alias2", "mx.alias2 IN CNAME real.alias2",
              f"real.alias2 IN A {IPS[12]}", f"_{port}._tcp.mx.alias2 IN TLSA 3 1 1 {good}"]
    plain = "\n".join(["$ORIGIN plain.test.", "$TTL 300",
                       "@ IN SOA ns.plain.test. admin.test. 1 3600 600 86400 300",
                       "@ IN NS ns", "ns IN A 127.0.0.1", "@ IN MX 10 mx", f"mx IN A {IPS[6]}",
                       # Unsigned: this (non-matching) TLSA record must be ignored.
                       f"_{port}._tcp.mx IN TLSA 3 1 1 {wrong}"]) + "\n"
    dns = SignedDns("\n".join(lines) + "\n", plain, {
        placeholder: good,
        # bogusmx.test: the MX record now points elsewhere than what was signed.
        "bogusmx.test.\t300\tIN\tMX\t10 mx.bogusmx.test.": "bogusmx.test.\t300\tIN\tMX\t20 mx.bogusmx.test.",
    })

    def edit(text):
        text = text.replace('hostname = "mail.example.test"',
                            f'hostname = "mail.example.test"\ndns = "127.0.0.1:{dns.port}"')
        text = text.replace('min_retry = "5m"', 'min_retry = "1s"').replace('max_retry = "1h"', 'max_retry = "2s"')
        text = text.replace("[stage.outgoing.outbound.dane]\nenabled = false\n",
                            f'[stage.outgoing.outbound.dane]\nenabled = true\ntrust_anchor_file = "{dns.anchor}"\n')
        assert f'trust_anchor_file = "{dns.anchor}"' in text
        return text.replace("[stage.store]\n", f"""[stage.outgoing.outbound]
smtp_port = {port}
dsn_delay_after = "0s"

[stage.store]
""")

    workdir = Path(tempfile.mkdtemp(prefix="palisade-it-"))
    arch = Architecture(workdir, edit=edit)
    arch.start("outgoing-1")
    for name in sinks:
        if not name.startswith("mixed"):
            submit(arch, [f"user@{name}.test"])
    submit(arch, ["user@mixed.test"])
    yield arch, sinks, port
    arch.stop_all()
    for s in sinks.values():
        s.stop()
    dns.stop()
    shutil.rmtree(d, ignore_errors=True)
    if not os.environ.get("KEEP_TEST_DATA"):
        shutil.rmtree(workdir, ignore_errors=True)


def tls_failure_counted(arch, result):
    return any(l.startswith("palisade_tls_failures_total{")
               and f'policy="dane",result="{result}"}}' in l for l in metrics(arch).splitlines())


def never_sent(sink):
    return not sink.messages and not any(t.upper().startswith("MAIL") for t in sink.transcript)


def test_matching_dane_ee_record_delivers_over_tls_to_a_self_signed_server(dane_world):
    arch, sinks, _ = dane_world
    # The certificate is self-signed, for another name: DANE-EE checks
    # only the key (RFC 7672 §3.1.1).
    assert wait_for(lambda: "user@good.test" in sinks["good"].rcpts())
    assert sinks["good"].tls_sessions >= 1


def test_dane_ta_record_delivers_through_the_private_ca(dane_world):
    arch, sinks, _ = dane_world
    assert wait_for(lambda: "user@ta.test" in sinks["ta"].rcpts())
    assert sinks["ta"].tls_sessions >= 1


def test_tlsa_behind_a_secure_cname_is_followed(dane_world):
    arch, sinks, port = dane_world
    # Not followed, there would be no TLSA: opportunistic TLS would deliver.
    assert wait_for(lambda: f"DANE: TLSA at _{port}._tcp.mx.cname.test" in arch.log("outgoing-1"))
    assert "user@cname.test" in queue_list(arch)
    assert never_sent(sinks["cname"])


def test_mx_host_without_tlsa_gets_opportunistic_tls(dane_world):
    arch, sinks, port = dane_world
    # mx1.mixed has a TLSA record its key does not match: never used.
    assert wait_for(lambda: "user@mixed.test" in sinks["mixed2"].rcpts())
    assert never_sent(sinks["mixed1"])
    assert sinks["mixed2"].tls_sessions == 0


def test_unsigned_zone_is_opportunistic_and_its_tlsa_ignored(dane_world):
    arch, sinks, _ = dane_world
    # plain.test is provably unsigned: its (non-matching) TLSA record means
    # nothing, and the sink without STARTTLS gets the mail in plaintext.
    assert wait_for(lambda: "user@plain.test" in sinks["plain"].rcpts())
    assert sinks["plain"].tls_sessions == 0


def test_non_matching_tlsa_keeps_the_message_queued(dane_world):
    arch, sinks, port = dane_world
    assert wait_for(lambda: f"DANE: TLSA at _{port}._tcp.mx.wrong.test" in arch.log("outgoing-1"))
    assert "no TLSA record matches the server certificate chain" in arch.log("outgoing-1")
    assert wait_for(lambda: tls_failure_counted(arch, "tlsa-invalid"))
    assert "user@wrong.test" in queue_list(arch)
    assert never_sent(sinks["wrong"])
    assert sinks["wrong"].tls_sessions == 0, "the handshake must fail on our side"


def test_tlsa_without_starttls_is_never_sent_in_plaintext(dane_world):
    arch, sinks, _ = dane_world
    assert wait_for(lambda: "mx.notls.test" in arch.log("outgoing-1")
                    and "does not offer STARTTLS, required by DANE" in arch.log("outgoing-1"))
    # Only unusable (PKIX-EE) records: TLS is still mandatory (RFC 7672 §2.2).
    assert wait_for(lambda: any("mx.unusable.test" in l and "required by DANE" in l
                                for l in arch.log("outgoing-1").splitlines()))
    assert wait_for(lambda: tls_failure_counted(arch, "starttls-not-supported"))
    time.sleep(1.5)  # at least one retry
    q = queue_list(arch)
    assert "user@notls.test" in q and "user@unusable.test" in q
    assert never_sent(sinks["notls"]) and never_sent(sinks["unusable"])


def test_bogus_signatures_keep_the_message_queued(dane_world):
    arch, sinks, port = dane_world
    log = lambda: arch.log("outgoing-1")
    # A TLSA record changed after signing: its RRSIG no longer verifies.
    assert wait_for(lambda: f"DNSSEC validation failed for _{port}._tcp.mx.bogus.test" in log())
    # An MX record changed after signing: the whole domain waits.
    assert wait_for(lambda: "DNSSEC validation failed for bogusmx.test MX" in log())
    assert wait_for(lambda: tls_failure_counted(arch, "dnssec-invalid"))
    q = queue_list(arch)
    assert "user@bogus.test" in q and "user@bogusmx.test" in q
    # Not even a connection: the host is not used at all.
    assert not sinks["bogus"].transcript and not sinks["bogusmx"].transcript


def test_tlsa_of_an_mx_alias_at_its_expanded_name_first_then_at_the_mx_name(dane_world):
    arch, sinks, _ = dane_world
    # mx.alias.test's own TLSA record does not match: delivered only
    # because the expanded name's record was used.
    assert wait_for(lambda: "user@alias.test" in sinks["alias"].rcpts())
    assert sinks["alias"].tls_sessions >= 1
    assert wait_for(lambda: "user@alias2.test" in sinks["alias2"].rcpts())
    assert sinks["alias2"].tls_sessions >= 1
