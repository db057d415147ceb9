"""Issue 9, the deployment kit in deploy/: the systemd units pass
`systemd-analyze verify`, the perimeter rules load in `nft -c`, the haproxy
example passes `haproxy -c`.

systemd-analyze checks that the binary a unit names is executable, so the
units are verified as instances (palisade-mx@mx-1.service) in a temporary
directory with ExecStart pointing at this build's binaries instead of
/usr/local/bin; nothing else is changed.
"""

import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, REPO

DEPLOY = REPO / "deploy"
STAGES = ["mx", "msa", "antivirus", "antispam", "outgoing", "store"]
BIND_PORTS = {"mx", "msa", "store"}  # need CAP_NET_BIND_SERVICE (25, 587/465, 993/995)


def unit(stage):
    return (DEPLOY / "systemd" / f"palisade-{stage}@.service").read_text()


def directives(text):
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+)=(.*)$", line)
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_units_pass_systemd_analyze_verify(tmp_path):
    files = []
    for st in STAGES:
        text = unit(st)
        assert f"/usr/local/bin/palisade-{st} " in text
        text = text.replace(f"/usr/local/bin/palisade-{st}", str(BIN / f"palisade-{st}"))
        f = tmp_path / f"palisade-{st}@{st}-1.service"
        f.write_text(text)
        files.append(str(f))
    shutil.copy(DEPLOY / "systemd" / "palisade.target", tmp_path)
    files.append(str(tmp_path / "palisade.target"))
    p = subprocess.run(["systemd-analyze", "verify", "--man=no", *files],
                       capture_output=True, text=True, timeout=120)
    # verify exits 0 on unknown keys and bad values too: any line it
    # prints is a problem in our units.
    assert p.returncode == 0 and p.stderr.strip() == "", p.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_verify_catches_a_broken_unit(tmp_path):
    """The check above can fail: a misspelt directive is reported."""
    text = unit("mx").replace("ProtectSystem=strict", "ProtectSytem=strict")
    text = text.replace("/usr/local/bin/palisade-mx", str(BIN / "palisade-mx"))
    f = tmp_path / "palisade-mx@mx-1.service"
    f.write_text(text)
    p = subprocess.run(["systemd-analyze", "verify", "--man=no", str(f)],
                       capture_output=True, text=True, timeout=60)
    assert "ProtectSytem" in p.stderr, p.stderr


def test_units_are_sandboxed_and_only_edge_stages_may_bind_privileged_ports():
    for st in STAGES:
        d = directives(unit(st))
        assert d["User"] == ["palisade"], st
        assert d["NoNewPrivileges"] == ["yes"]
        assert d["ProtectSystem"] == ["strict"]
        assert d["ProtectHome"] == ["yes"]
        assert d["PrivateTmp"] == ["yes"]
        assert d["ReadWritePaths"] == ["/var/lib/palisade"]
        assert d["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
        assert "@system-service" in d["SystemCallFilter"]
        assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
        assert d["ExecStart"][0].endswith("--node %i")
        want = ["CAP_NET_BIND_SERVICE"] if st in BIND_PORTS else [""]
        assert d["CapabilityBoundingSet"] == want, st
        assert d["AmbientCapabilities"] == want, st


@pytest.mark.skipif(shutil.which("nft") is None, reason="nftables not installed")
def test_perimeter_rules_load_with_nft_check():
    rules = DEPLOY / "nftables" / "palisade.nft"
    p = subprocess.run(["nft", "-c", "-f", str(rules)], capture_output=True, text=True, timeout=60)
    if p.returncode != 0 and "Operation not permitted" in p.stderr:
        pytest.skip("nft -c needs CAP_NET_ADMIN")
    assert p.returncode == 0, p.stderr
    text = rules.read_text()
    # DM1: SMTP to the Internet only from the outgoing nodes, then a drop.
    allow = text.index("oifname $wan ip saddr $outgoing_nodes tcp dport { 25, 465, 587 } accept")
    deny = text.index('oifname $wan tcp dport { 25, 465, 587 } log prefix "palisade DM1 drop: " drop')
    assert allow < deny
    assert "ip saddr $internal_net tcp dport 10024-10127 accept" in text


@pytest.mark.skipif(shutil.which("nft") is None, reason="nftables not installed")
def test_nft_check_rejects_a_broken_rule(tmp_path):
    broken = tmp_path / "broken.nft"
    broken.write_text((DEPLOY / "nftables" / "palisade.nft").read_text()
                      .replace("tcp dport 10024-10127 accept", "tcp dport 10024-10127 acept"))
    p = subprocess.run(["nft", "-c", "-f", str(broken)], capture_output=True, text=True, timeout=60)
    if "Operation not permitted" in p.stderr:
        pytest.skip("nft -c needs CAP_NET_ADMIN")
    assert p.returncode != 0


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")
def test_haproxy_example_is_valid_and_sends_proxy_v2_with_smtp_checks():
    cfg = DEPLOY / "haproxy" / "haproxy.cfg"
    p = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    text = cfg.read_text()
    assert "send-proxy-v2" in text and "option smtpchk" in text


def keepalived_check(conf, tmp_path):
    """`keepalived -t -f` on the example as a host would run it. The file
    names its script user `palisade`, which this test host does not have:
    the copy runs its check script as `nobody` instead (nothing else
    changes). keepalived 2.2 ends a config test by SIGTERMing itself
    whether the file is good or not, so the verdict is its output: every
    line it prints is a problem."""
    text = conf.replace("script_user palisade", "script_user nobody")
    f = tmp_path / "keepalived.conf"
    f.write_text(text)
    p = subprocess.run(["keepalived", "-t", "-f", str(f)], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    return p.returncode, (p.stdout + p.stderr).strip()


@pytest.mark.skipif(shutil.which("keepalived") is None, reason="keepalived not installed")
def test_keepalived_example_passes_its_config_test(tmp_path):
    conf = (DEPLOY / "keepalived" / "keepalived.conf").read_text()
    assert "script_user palisade" in conf and "enable_script_security" in conf
    code, out = keepalived_check(conf, tmp_path)
    assert code in (0, -signal.SIGTERM) and out == "", (code, out)
    # The check can fail: a misspelt keyword and a track_script naming no
    # vrrp_script are reported.
    code, out = keepalived_check(conf.replace("advert_int 1", "advert_intt 1"), tmp_path)
    assert "Unknown keyword 'advert_intt'" in out, out
    code, out = keepalived_check(conf.replace("        mx_alive\n    }", "        mx_alvie\n    }"),
                                 tmp_path)
    assert "mx_alvie" in out, out
