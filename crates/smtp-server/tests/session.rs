//! Session tests over real TCP sockets on 127.0.0.1:0.

mod common;

use std::time::Duration;

use common::{start, start_with, tls, Client, Recorder};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn transaction_delivers_unstuffed_message() {
    let (addr, hooks) = start(|_| {}).await;
    let mut c = Client::greeted(addr).await;
    let ehlo = c.cmd("EHLO client.test").await;
    for kw in [
        "250-mx.test Hello client.test",
        "250-PIPELINING",
        "250-SIZE 10000",
        "250-8BITMIME",
        "250-ENHANCEDSTATUSCODES",
        "250-SMTPUTF8",
        "250-DSN",
        "250-CHUNKING",
    ] {
        assert!(ehlo.contains(kw), "{kw} missing in {ehlo}");
    }
    assert!(
        !ehlo.contains("STARTTLS") && !ehlo.contains("XORIGIN"),
        "{ehlo}"
    );
    c.ok("MAIL FROM:<a@example.org> BODY=8BITMIME", "250 2.1.0")
        .await;
    c.ok("RCPT TO:<b@example.test> NOTIFY=NEVER", "250 2.1.5")
        .await;
    c.ok("RCPT TO:<unknown@example.test>", "550 5.1.1").await;
    c.ok("RCPT TO:<c@example.test>", "250 2.1.5").await;
    c.ok("DATA", "354 ").await;
    c.send("Subject: t\r\n\r\n..dot\r\nline\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0 Queued as T1"));
    c.ok("QUIT", "221 2.0.0").await;
    c.expect_eof().await;
    let msgs = hooks.take();
    assert_eq!(msgs.len(), 1);
    let (info, env, body) = &msgs[0];
    assert_eq!(info.helo.as_deref(), Some("client.test"));
    assert!(info.esmtp);
    assert_eq!(env.mail_from, "a@example.org");
    let rcpts: Vec<&str> = env.rcpts.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(rcpts, ["b@example.test", "c@example.test"]);
    assert_eq!(env.rcpts[0].1.notify.as_deref(), Some("NEVER"));
    assert_eq!(body, b"Subject: t\r\n\r\n.dot\r\nline\r\n");
}

#[tokio::test]
async fn pipelined_transactions_are_answered_in_order() {
    let (addr, hooks) = start(|_| {}).await;
    let mut c = Client::greeted(addr).await;
    c.send(
        "EHLO c.test\r\nMAIL FROM:<>\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<unknown@x.test>\r\nDATA\r\n",
    )
    .await;
    assert!(c.reply().await.starts_with("250-mx.test"));
    for want in ["250 2.1.0", "250 2.1.5", "550 5.1.1", "354"] {
        let r = c.reply().await;
        assert!(r.starts_with(want), "want {want}, got {r}");
    }
    // End of data, a whole second transaction and QUIT in one segment: the
    // bytes after `.CRLF` must stay in the buffer as commands.
    c.send(
        "one\r\n.\r\nMAIL FROM:<b@y.test>\r\nRCPT TO:<c@x.test>\r\nDATA\r\ntwo\r\n.\r\nQUIT\r\n",
    )
    .await;
    for want in [
        "250 2.0.0",
        "250 2.1.0",
        "250 2.1.5",
        "354",
        "250 2.0.0",
        "221 2.0.0",
    ] {
        let r = c.reply().await;
        assert!(r.starts_with(want), "want {want}, got {r}");
    }
    c.expect_eof().await;
    let msgs = hooks.take();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].1.mail_from, "");
    assert_eq!(msgs[0].2, b"one\r\n");
    assert_eq!(msgs[1].2, b"two\r\n");
}

#[tokio::test]
async fn sequencing_errors_and_info_commands() {
    let (addr, _) = start(|_| {}).await;
    let mut c = Client::greeted(addr).await;
    // Before EHLO: no enhanced codes.
    assert_eq!(
        c.cmd("MAIL FROM:<a@b.test>").await,
        "503 Send HELO/EHLO first\r\n"
    );
    c.ok("HELO c.test", "250 mx.test").await;
    assert_eq!(c.cmd("RCPT TO:<a@b.test>").await, "503 Send MAIL first\r\n");
    c.ok("EHLO c.test", "250-").await;
    c.ok("RCPT TO:<a@b.test>", "503 5.5.1").await;
    c.ok("DATA", "503 5.5.1").await;
    c.ok("MAIL FROM:<a@b.test>", "250").await;
    c.ok("MAIL FROM:<a@b.test>", "503 5.5.1").await;
    c.ok("DATA", "503 5.5.1").await;
    c.ok("RSET", "250 2.0.0").await;
    c.ok("RCPT TO:<a@b.test>", "503 5.5.1").await;
    c.ok("VRFY root", "252 2.1.5").await;
    c.ok("EXPN staff", "502 5.5.1").await;
    c.ok("HELP", "214").await;
    c.ok("NOOP", "250 2.0.0").await;
    c.ok("FOO bar", "500 5.5.2").await;
    c.ok("MAIL FROM:<a@b.test> FOO=1", "555 5.5.4").await;
    c.ok("MAIL FROM:<a@b.test> XORIGIN=mx", "555 5.5.4").await;
    c.ok("MAIL FROM:<a@b.test> XCUT=1000", "555 5.5.4").await;
    c.ok("STARTTLS", "502 5.5.1").await;
    c.ok("AUTH PLAIN", "502 5.5.1").await;
    c.ok("QUIT", "221").await;
}

#[tokio::test]
async fn smuggling_payloads_are_refused_and_never_split_into_two_messages() {
    let fakes: &[&str] = &["\n.\n", "\r.\r", "\n.\r\n", "\r\n.\n", "\r.\r\n", "\r\n.\r"];
    let (addr, hooks) = start(|c| c.max_errors = 0).await;
    for fake in fakes {
        let mut c = Client::greeted(addr).await;
        c.ok("EHLO c.test", "250").await;
        c.ok("MAIL FROM:<a@x.test>", "250").await;
        c.ok("RCPT TO:<b@y.test>", "250").await;
        c.ok("DATA", "354").await;
        c.send(format!(
            "Subject: legit\r\n\r\nhello{fake}MAIL FROM:<admin@y.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\nNOOP\r\n"
        ))
        .await;
        let r = c.reply().await;
        assert!(r.starts_with("550 5.5.2"), "{fake:?}: {r}");
        // Nothing after the fake terminator was a command: the next reply
        // is the one for NOOP.
        c.ok("RSET", "250 2.0.0").await;
        let r = c.reply().await;
        assert!(r.is_empty() || r.starts_with("250 2.0.0"), "{fake:?}: {r}");
    }
    assert_eq!(hooks.count(), 0);
}

#[tokio::test]
async fn long_lines_and_nul_in_commands_do_not_desync() {
    let (addr, _) = start(|_| {}).await;
    let mut c = Client::greeted(addr).await;
    c.ok("EHLO c.test", "250").await;
    c.ok(&format!("NOOP {}", "x".repeat(600)), "500 5.5.2")
        .await;
    // Longer than our read chunk, sent in pieces.
    c.send(format!("NOOP {}", "y".repeat(40_000))).await;
    c.send("\r\n").await;
    assert!(c.reply().await.starts_with("500 5.5.2"));
    c.ok("NOOP", "250 2.0.0").await;
    c.send("NO\0OP\r\n").await;
    assert!(c.reply().await.starts_with("500 5.5.2"));
    c.ok("NOOP", "250 2.0.0").await;
}

#[tokio::test]
async fn too_many_errors_closes_with_421() {
    let (addr, _) = start(|c| c.max_errors = 3).await;
    let mut c = Client::greeted(addr).await;
    c.ok("EHLO c.test", "250").await;
    c.ok("FOO", "500").await;
    c.ok("RCPT TO:<a@b.test>", "503").await;
    let r = c.cmd("BAR").await;
    assert_eq!(r, "500 5.5.2 Command unrecognized\r\n");
    assert_eq!(c.reply().await, "421 4.7.0 Too many errors\r\n");
    c.expect_eof().await;
}

#[tokio::test]
async fn size_limits_at_mail_and_after_data() {
    let (addr, hooks) = start(|_| {}).await;
    let mut c = Client::greeted(addr).await;
    c.ok("EHLO c.test", "250").await;
    c.ok("MAIL FROM:<a@b.test> SIZE=10001", "552 5.3.4").await;
    c.ok("MAIL FROM:<a@b.test> SIZE=100", "250").await;
    c.ok("RCPT TO:<c@d.test>", "250").await;
    c.ok("DATA", "354").await;
    let line = format!("{}\r\n", "z".repeat(98));
    c.send(line.repeat(101)).await;
    c.send(".\r\n").await;
    assert!(c.reply().await.starts_with("552 5.3.4"));
    c.ok("NOOP", "250").await;
    assert_eq!(hooks.count(), 0);
}

#[tokio::test]
async fn too_many_recipients_is_452() {
    let (addr, hooks) = start(|c| c.max_recipients = 2).await;
    let mut c = Client::greeted(addr).await;
    c.ok("EHLO c.test", "250").await;
    c.ok("MAIL FROM:<a@b.test>", "250").await;
    c.ok("RCPT TO:<1@d.test>", "250").await;
    c.ok("RCPT TO:<2@d.test>", "250").await;
    c.ok("RCPT TO:<3@d.test>", "452 4.5.3").await;
    c.ok("DATA", "354").await;
    c.send("x\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250"));
    assert_eq!(hooks.take()[0].1.rcpts.len(), 2);
}

#[tokio::test]
async fn early_talker_gets_554_and_close() {
    let (addr, _) = start(|c| c.greet_pause = Duration::from_millis(300)).await;
    let mut c = Client::connect(addr).await;
    c.send("EHLO eager.test\r\n").await;
    assert_eq!(
        c.reply().await,
        "554 5.5.1 Protocol error: talked before greeting\r\n"
    );
    c.expect_eof().await;
    // A patient client gets the banner after the pause.
    let t = std::time::Instant::now();
    let mut c = Client::greeted(addr).await;
    assert!(t.elapsed() >= Duration::from_millis(250));
    c.ok("QUIT", "221").await;
}

#[tokio::test]
async fn on_connect_rejection_is_sent_and_closes() {
    let hooks = Recorder {
        reject_connect: true,
        ..Default::default()
    };
    let (addr, _) = start_with(common::config(), hooks).await;
    let mut c = Client::connect(addr).await;
    assert_eq!(c.reply().await, "554 5.7.1 Listed on test.dnsbl\r\n");
    c.expect_eof().await;
}

#[tokio::test]
async fn idle_and_data_timeouts_close_with_421() {
    let (addr, _) = start(|c| {
        c.timeouts.command = Duration::from_millis(200);
        c.timeouts.data_chunk = Duration::from_millis(200);
    })
    .await;
    let mut c = Client::greeted(addr).await;
    assert!(c.reply().await.starts_with("421 4.4.2"));
    c.expect_eof().await;

    let mut c = Client::greeted(addr).await;
    c.ok("EHLO c.test", "250").await;
    c.ok("MAIL FROM:<a@b.test>", "250").await;
    c.ok("RCPT TO:<c@d.test>", "250").await;
    c.ok("DATA", "354").await;
    c.send("partial line").await;
    assert!(c.reply().await.starts_with("421 4.4.2"));
    c.expect_eof().await;
}

#[tokio::test]
async fn session_cap_closes_with_421() {
    let (addr, _) = start(|c| {
        c.timeouts.command = Duration::from_secs(60);
        c.timeouts.session = Duration::from_millis(400);
    })
    .await;
    let mut c = Client::greeted(addr).await;
    c.ok("EHLO c.test", "250").await;
    let r = c.reply().await;
    assert!(r.starts_with("421 4.4.2 Session time limit"), "{r}");
    c.expect_eof().await;
}

#[tokio::test]
async fn connections_over_max_sessions_get_421() {
    let (addr, _) = start(|c| c.max_sessions = 1).await;
    let mut first = Client::greeted(addr).await;
    let mut second = Client::connect(addr).await;
    assert_eq!(
        second.reply().await,
        "421 4.7.0 mx.test Too many connections\r\n"
    );
    second.expect_eof().await;
    first.ok("QUIT", "221").await;
    first.expect_eof().await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut third = Client::greeted(addr).await;
    third.ok("QUIT", "221").await;
}

#[tokio::test]
async fn bdat_chunks_make_one_message() {
    let (addr, hooks) = start(|_| {}).await;
    let mut c = Client::greeted(addr).await;
    c.ok("EHLO c.test", "250").await;
    // A chunk out of sequence is consumed, not executed.
    c.send("BDAT 6\r\nQUIT\r\n").await;
    assert!(c.reply().await.starts_with("503 5.5.1"));
    c.ok("MAIL FROM:<a@b.test> BODY=BINARYMIME", "250").await;
    c.ok("RCPT TO:<c@d.test>", "250").await;
    c.ok("DATA", "503 5.5.1").await;
    c.send("BDAT 7\r\nline\n\r\0BDAT 4 LAST\r\n.\r\n\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0 7 octets"));
    assert!(c.reply().await.starts_with("250 2.0.0 Queued"));
    // Over the size limit: consumed, refused, transaction reset.
    c.ok("MAIL FROM:<a@b.test>", "250").await;
    c.ok("RCPT TO:<c@d.test>", "250").await;
    c.send(format!("BDAT 10001 LAST\r\n{}", "q".repeat(10001)))
        .await;
    assert!(c.reply().await.starts_with("552 5.3.4"));
    c.ok("BDAT 0 LAST", "503 5.5.1").await;
    c.ok("NOOP", "250").await;
    let msgs = hooks.take();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].2, b"line\n\r\0.\r\n\n");
}

#[tokio::test]
async fn xorigin_only_when_enabled() {
    let (addr, hooks) = start(|c| c.accept_origin_param = true).await;
    let mut c = Client::greeted(addr).await;
    let ehlo = c.cmd("EHLO c.test").await;
    assert!(ehlo.contains("250-XCUT\r\n250 XORIGIN\r\n"), "{ehlo}");
    c.ok(
        "MAIL FROM:<a@b.test> XORIGIN=authenticated XCUT=5000",
        "250",
    )
    .await;
    c.ok("RCPT TO:<c@d.test>", "250").await;
    c.ok("DATA", "354").await;
    c.send("x\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250"));
    let msgs = hooks.take();
    assert_eq!(
        msgs[0].1.mail_params.origin.as_deref(),
        Some("authenticated")
    );
    assert_eq!(msgs[0].1.mail_params.cut_through_ms, Some(5000));
    // The wait is this hop's: it is never passed on as it came.
    assert_eq!(msgs[0].1.mail_params.to_wire(), "XORIGIN=authenticated");
}

#[tokio::test]
async fn starttls_discards_injected_plaintext_and_resets() {
    let (addr, hooks) = start(|c| c.tls = Some(tls::server_config())).await;
    let mut c = Client::greeted(addr).await;
    assert!(c.cmd("EHLO c.test").await.contains("STARTTLS"));
    c.ok("MAIL FROM:<a@b.test>", "250").await;
    c.ok("STARTTLS", "503 5.5.1").await;
    c.ok("RSET", "250").await;
    // CVE-2011-0411: the injected MAIL arrives with STARTTLS in one segment.
    c.send("STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
        .await;
    assert!(c.reply().await.starts_with("220 2.0.0"));
    let tcp = c.io.into_inner();
    let stream = tls::connector()
        .connect(tls::localhost(), tcp)
        .await
        .unwrap();
    let mut c = Client::new(stream);
    c.ok("MAIL FROM:<a@b.test>", "503 5.5.1 Send HELO/EHLO first")
        .await;
    let ehlo = c.cmd("EHLO c.test").await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    // Had the injected MAIL been executed, this would be a nested MAIL.
    c.ok("RCPT TO:<c@d.test>", "503 5.5.1").await;
    c.ok("STARTTLS", "503 5.5.1").await;
    c.ok("MAIL FROM:<a@b.test>", "250").await;
    c.ok("RCPT TO:<c@d.test>", "250").await;
    c.ok("DATA", "354").await;
    c.send("secret\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250"));
    c.ok("QUIT", "221").await;
    let msgs = hooks.take();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].1.mail_from, "a@b.test");
    let tls = msgs[0].0.tls.as_ref().expect("tls info");
    assert!(tls.version.starts_with("TLS"), "{tls:?}");
    assert!(!tls.cipher.is_empty());
}

#[tokio::test]
async fn implicit_tls_handshakes_before_banner() {
    let (addr, _) = start(|c| {
        c.tls = Some(tls::server_config());
        c.implicit_tls = true;
    })
    .await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tls::connector()
        .connect(tls::localhost(), tcp)
        .await
        .unwrap();
    let mut c = Client::new(stream);
    assert_eq!(c.reply().await, "220 mx.test ESMTP Palisade\r\n");
    let ehlo = c.cmd("EHLO c.test").await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    c.ok("QUIT", "221").await;
    let _ = c.io.get_mut().shutdown().await;
}

#[tokio::test]
async fn submission_auth_before_tls_is_538() {
    let (addr, _) = start(|c| {
        c.profile = palisade_smtp_server::ListenerProfile::Submission;
        c.tls = Some(tls::server_config());
    })
    .await;
    let mut c = Client::greeted(addr).await;
    c.ok("EHLO c.test", "250").await;
    c.ok("AUTH PLAIN AGFAYgB4", "538 5.7.11").await;
}
