"""Issue 3: the directory the MX consults (DM19) and mailbox quotas (DM35).

The store nodes serve their users; the MX and MSA keep a persistent
replica, so they refuse unknown recipients (the paper's backscatter fix)
and accept known ones even while the stores are down.
"""

import re
import signal
import smtplib
import time

from conftest import Raw, PASSWORD, make_message, pop3_messages, wait_for
from test_chain import fast_retry

USER = "alice@example.test"
STUDENT = "sam@students.example.test"


def rcpt_reply(arch, rcpt, node="mx-1"):
    c = Raw(arch.addr(node))
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<someone@outside.test>")
    reply = c.cmd(f"RCPT TO:<{rcpt}>")
    c.close()
    return reply


def test_mx_keeps_refusing_unknown_and_accepting_known_with_every_store_down(arch_factory):
    arch = arch_factory(edit=fast_retry)
    arch.add_user(USER)
    arch.add_user(STUDENT)
    arch.start("store-staff", "store-students", "mx-1", "antivirus-1", "antispam-1")
    assert rcpt_reply(arch, USER)[0] == 250
    arch.kill("store-staff", signal.SIGTERM)
    arch.kill("store-students", signal.SIGTERM)

    code, text = rcpt_reply(arch, "nobody@example.test")
    assert (code, text[:5]) == (550, "5.1.1"), (code, text)
    assert rcpt_reply(arch, "nobody@students.example.test")[0] == 550
    assert rcpt_reply(arch, STUDENT)[0] == 250

    # A known recipient's mail is queued meanwhile, and arrives later.
    msg, msgid = make_message("someone@outside.test", STUDENT, "while the stores were down")
    with smtplib.SMTP(*arch.addr("mx-1"), timeout=30) as s:
        s.sendmail("someone@outside.test", [STUDENT], msg)
    # ... also after the MX itself restarts with the stores still down.
    arch.kill("mx-1")
    arch.start("mx-1")
    assert rcpt_reply(arch, "nobody@example.test")[0] == 550
    assert rcpt_reply(arch, USER)[0] == 250

    arch.start("store-students")
    got = wait_for(lambda: pop3_messages(arch, STUDENT, node="store-students"), timeout=60,
                   what="the queued message after the store came back")
    assert msgid.encode() in got[0]


def test_a_stale_replica_tempfails_unknown_recipients(arch_factory):
    def short_bound(text):
        return fast_retry(text).replace("[gateway]\n", '[gateway]\nreplica_max_age = "2s"\n', 1)

    arch = arch_factory(edit=short_bound)
    arch.add_user(USER)
    arch.start("store-staff", "store-students", "mx-1")
    assert rcpt_reply(arch, "nobody@example.test")[0] == 550
    arch.kill("store-staff", signal.SIGTERM)
    time.sleep(3)
    code, text = rcpt_reply(arch, "nobody@example.test")
    assert code == 451, (code, text)
    assert rcpt_reply(arch, USER)[0] == 250, "a known user must still be accepted"
    # The students' store is still reachable: its domain is unaffected.
    assert rcpt_reply(arch, "nobody@students.example.test")[0] == 550


def test_changes_reach_the_mx_without_restarts(arch_factory):
    arch = arch_factory()
    arch.start("store-staff", "store-students", "mx-1")
    assert rcpt_reply(arch, "newbie@example.test")[0] == 550
    arch.add_user("newbie@example.test")
    wait_for(lambda: rcpt_reply(arch, "newbie@example.test")[0] == 250, timeout=5,
             what="the new user at mx-1")
    arch.palisade("user", "del", "newbie@example.test")
    wait_for(lambda: rcpt_reply(arch, "newbie@example.test")[0] == 550, timeout=5,
             what="the deleted user refused")


def test_quota_refuses_at_the_store_keeps_mail_queued_and_delivers_after_raise(arch_factory):
    arch = arch_factory(edit=fast_retry)
    arch.add_user(USER, quota="100K")
    arch.start("store-staff", "mx-1", "antivirus-1", "antispam-1")
    body = ("x" * 76 + "\r\n") * 390  # ~30 KB
    sent = []
    for i in range(4):
        msg, msgid = make_message("someone@outside.test", USER, f"fill {i}", body)
        with smtplib.SMTP(*arch.addr("mx-1"), timeout=30) as s:
            s.sendmail("someone@outside.test", [USER], msg)
        sent.append(msgid)
        time.sleep(0.5)

    # Three fit; the fourth is refused by the store with 452 4.2.2 and
    # waits in the antispam node's queue.
    def fourth_waiting():
        out = arch.palisade("queue", "list", "--node", "antispam-1").stdout
        return out if "4.2.2" in out else None

    waiting = wait_for(fourth_waiting, timeout=30, what="the 4th message deferred with 4.2.2")
    assert "1 message(s)" in waiting
    inbox = pop3_messages(arch, USER)
    subjects = [re.search(rb"^Subject: (.*)$", m, re.M).group(1).strip() for m in inbox]
    assert sum(s.startswith(b"fill") for s in subjects) == 3
    notices = [s for s in subjects if b"% full" in s]
    assert len(notices) == 1, f"expected one 90% notice, got {subjects}"

    # The MX now knows the mailbox is full: new mail waits with the sender.
    wait_for(lambda: rcpt_reply(arch, USER)[0] == 452, timeout=10, what="452 at mx-1 RCPT")

    arch.palisade("user", "quota", USER, "1M")
    got = wait_for(lambda: (m := pop3_messages(arch, USER)) and len(m) >= 5 and m, timeout=30,
                   what="the 4th message after raising the quota")
    assert sent[3].encode() in b"".join(got)
    wait_for(lambda: rcpt_reply(arch, USER)[0] == 250, timeout=10, what="250 at mx-1 again")
