//! Client against small scripted SMTP servers on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_smtp_client::{
    insecure_tls_config, verifying_tls_config, ClientConfig, ClientError, Connection, TlsMode,
    Transaction,
};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone)]
struct Script {
    /// EHLO keywords; None: EHLO is refused with 502 (HELO only).
    ehlo: Option<Vec<&'static str>>,
    /// STARTTLS offered (before TLS) when Some.
    tls: Option<Arc<rustls::ServerConfig>>,
    mail_reply: &'static str,
    rcpt: fn(&str) -> &'static str,
    /// Reply after end of data; "" never answers.
    data_final: &'static str,
    /// Never sends anything, not even the banner.
    silent: bool,
    /// Sent instead of the banner when Some.
    banner: Option<&'static str>,
    /// After the first end-of-data reply: "421 idle timeout" and close.
    close_after_first: bool,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            ehlo: Some(vec!["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"]),
            tls: None,
            mail_reply: "250 2.1.0 ok",
            rcpt: |_| "250 2.1.5 ok",
            data_final: "250 2.0.0 queued as X",
            silent: false,
            banner: None,
            close_after_first: false,
        }
    }
}

#[derive(Default, Debug)]
struct Log {
    /// Commands found complete in the buffer after each read, before any
    /// reply to them was written.
    batches: Vec<Vec<String>>,
    commands: Vec<String>,
    /// Raw DATA contents as received, terminator included.
    bodies: Vec<Vec<u8>>,
    tls_sessions: usize,
    /// Reads that happened while receiving DATA content.
    data_reads: usize,
}

type SharedLog = Arc<Mutex<Log>>;

async fn serve(script: Script) -> (SocketAddr, SharedLog) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = SharedLog::default();
    let log2 = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let script = script.clone();
            let log = log2.clone();
            tokio::spawn(async move {
                if script.silent {
                    let mut sink = [0u8; 1024];
                    while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
                    return;
                }
                let banner = script.banner.unwrap_or("220 fake.test ESMTP");
                let up = session(&mut tcp, &script, &log, false, banner).await;
                if let (Ok(true), Some(cfg)) = (up, script.tls.clone()) {
                    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        log.lock().unwrap().tls_sessions += 1;
                        let _ = session(&mut tls, &script, &log, true, "").await;
                    }
                }
            });
        }
    });
    (addr, log)
}

fn find_end(data: &[u8]) -> Option<usize> {
    if data.starts_with(b".\r\n") {
        return Some(3);
    }
    data.windows(5)
        .position(|w| w == b"\r\n.\r\n")
        .map(|p| p + 5)
}

/// Returns Ok(true) when STARTTLS was accepted.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    script: &Script,
    log: &SharedLog,
    tls_active: bool,
    banner: &str,
) -> std::io::Result<bool> {
    if !banner.is_empty() {
        s.write_all(format!("{banner}\r\n").as_bytes()).await?;
    }
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let (mut has_mail, mut accepted, mut in_data) = (false, 0, false);
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(false);
        }
        buf.extend_from_slice(&chunk[..n]);
        if in_data {
            log.lock().unwrap().data_reads += 1;
        }
        let mut out = String::new();
        let mut batch = Vec::new();
        loop {
            if in_data {
                let Some(end) = find_end(&buf) else { break };
                log.lock().unwrap().bodies.push(buf.drain(..end).collect());
                in_data = false;
                has_mail = false;
                accepted = 0;
                if !script.data_final.is_empty() {
                    out += script.data_final;
                    out += "\r\n";
                }
                if script.close_after_first {
                    s.write_all(out.as_bytes()).await?;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    s.write_all(b"421 4.4.2 idle timeout\r\n").await?;
                    return Ok(false);
                }
                continue;
            }
            let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
                break;
            };
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            batch.push(line.clone());
            log.lock().unwrap().commands.push(line.clone());
            let verb = line
                .split([' ', ':'])
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            match verb.as_str() {
                "EHLO" => match &script.ehlo {
                    None => out += "502 5.5.1 EHLO not implemented\r\n",
                    Some(kws) => {
                        let mut kws = kws.clone();
                        if script.tls.is_some() && !tls_active {
                            kws.push("STARTTLS");
                        }
                        let mut lines = vec!["fake.test hello"];
                        lines.extend(kws);
                        for (i, l) in lines.iter().enumerate() {
                            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
                            out += &format!("250{sep}{l}\r\n");
                        }
                    }
                },
                "HELO" => out += "250 fake.test\r\n",
                "STARTTLS" if script.tls.is_some() && !tls_active => {
                    out += "220 2.0.0 go ahead\r\n";
                    s.write_all(out.as_bytes()).await?;
                    log.lock().unwrap().batches.push(batch);
                    return Ok(true);
                }
                "MAIL" => {
                    has_mail = script.mail_reply.starts_with('2');
                    out += script.mail_reply;
                    out += "\r\n";
                }
                "RCPT" if !has_mail => out += "503 5.5.1 need MAIL\r\n",
                "RCPT" => {
                    let r = (script.rcpt)(&line);
                    accepted += usize::from(r.starts_with('2'));
                    out += r;
                    out += "\r\n";
                }
                "DATA" if accepted == 0 => out += "554 5.5.1 no valid recipients\r\n",
                "DATA" => {
                    in_data = true;
                    out += "354 go ahead\r\n";
                }
                "RSET" => {
                    has_mail = false;
                    accepted = 0;
                    out += "250 2.0.0 ok\r\n";
                }
                "NOOP" => out += "250 2.0.0 ok\r\n",
                "QUIT" => {
                    s.write_all(b"221 2.0.0 bye\r\n").await?;
                    log.lock().unwrap().batches.push(batch);
                    return Ok(false);
                }
                _ => out += "500 5.5.2 what?\r\n",
            }
        }
        if !batch.is_empty() {
            log.lock().unwrap().batches.push(batch);
        }
        if !out.is_empty() {
            s.write_all(out.as_bytes()).await?;
        }
    }
}

fn config() -> ClientConfig {
    ClientConfig {
        helo_name: "client.test".into(),
        tls_mode: TlsMode::None,
        tls: None,
        server_name: None,
        connect_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(5),
        data_timeout: Duration::from_secs(5),
    }
}

fn tx<'a>(rcpts: &'a [(&'a str, &'a str)], body: &'a [u8]) -> Transaction<'a> {
    Transaction {
        mail_from: "sender@example.org",
        mail_params: "",
        origin: None,
        rcpts,
        body,
    }
}

fn mail_lines(log: &SharedLog) -> Vec<String> {
    log.lock()
        .unwrap()
        .commands
        .iter()
        .filter(|c| c.starts_with("MAIL") || c.starts_with("RCPT"))
        .cloned()
        .collect()
}

#[tokio::test]
async fn pipelined_transaction_is_one_write_and_dot_stuffed() {
    let (addr, log) = serve(Script::default()).await;
    let mut conn = Connection::connect(addr, &config()).await.unwrap();
    assert!(conn.extensions().pipelining);
    assert!(!conn.is_tls());
    assert_eq!(conn.remote(), addr);
    let body = b"Subject: t\r\n\r\n.leading dot\r\n..two\r\n.\r\nlast line no crlf";
    let rcpts = [("a@example.com", ""), ("b@example.com", "")];
    let res = conn.send(&tx(&rcpts, body)).await.unwrap();
    assert_eq!(res.mail.code, 250);
    assert_eq!(res.data.as_ref().unwrap().code, 250);
    assert_eq!(res.accepted(), 2);
    conn.quit().await;

    let log = log.lock().unwrap();
    let want = vec![
        "MAIL FROM:<sender@example.org>".to_string(),
        "RCPT TO:<a@example.com>".into(),
        "RCPT TO:<b@example.com>".into(),
        "DATA".into(),
    ];
    assert!(
        log.batches.contains(&want),
        "MAIL/RCPT/RCPT/DATA not in one segment: {:?}",
        log.batches
    );
    assert_eq!(
        log.bodies[0],
        b"Subject: t\r\n\r\n..leading dot\r\n...two\r\n..\r\nlast line no crlf\r\n.\r\n"
    );
}

#[tokio::test]
async fn per_recipient_outcomes_pipelined_and_lockstep() {
    for pipelining in [true, false] {
        let script = Script {
            ehlo: Some(if pipelining {
                vec!["PIPELINING", "ENHANCEDSTATUSCODES"]
            } else {
                vec!["ENHANCEDSTATUSCODES"]
            }),
            rcpt: |l| {
                if l.contains("bad@") {
                    "550 5.1.1 no such user"
                } else {
                    "250 2.1.5 ok"
                }
            },
            ..Script::default()
        };
        let (addr, log) = serve(script).await;
        let mut conn = Connection::connect(addr, &config()).await.unwrap();
        assert_eq!(conn.extensions().pipelining, pipelining);
        let rcpts = [("bad@example.com", ""), ("good@example.com", "")];
        let res = conn.send(&tx(&rcpts, b"hi\r\n")).await.unwrap();
        let bad = res.rcpt_outcome(0);
        assert_eq!(bad.code, 550);
        assert_eq!(bad.enhanced.unwrap().to_string(), "5.1.1");
        assert!(bad.is_permanent());
        let good = res.rcpt_outcome(1);
        assert_eq!(good.code, 250);
        assert_eq!(good.text, "queued as X");
        assert_eq!(res.accepted(), 1);
        conn.quit().await;
        let log = log.lock().unwrap();
        assert_eq!(log.bodies.len(), 1);
        if !pipelining {
            // Lock-step: every batch holds a single command.
            assert!(
                log.batches.iter().all(|b| b.len() == 1),
                "{:?}",
                log.batches
            );
        }
    }
}

#[tokio::test]
async fn all_recipients_refused_then_reuse() {
    for pipelining in [true, false] {
        let script = Script {
            ehlo: Some(if pipelining {
                vec!["PIPELINING"]
            } else {
                vec![]
            }),
            rcpt: |l| {
                if l.contains("bad") {
                    "550 5.1.1 no such user"
                } else {
                    "250 2.1.5 ok"
                }
            },
            ..Script::default()
        };
        let (addr, log) = serve(script).await;
        let mut conn = Connection::connect(addr, &config()).await.unwrap();
        let rcpts = [("bad1@x.test", ""), ("bad2@x.test", "")];
        let res = conn.send(&tx(&rcpts, b"hi\r\n")).await.unwrap();
        assert!(res.data.is_none());
        assert_eq!(res.rcpt_outcome(0).code, 550);
        assert_eq!(res.rcpt_outcome(1).code, 550);
        assert!(conn.is_usable());
        let rcpts = [("ok@x.test", "")];
        let res = conn.send(&tx(&rcpts, b"second\r\n")).await.unwrap();
        assert_eq!(res.rcpt_outcome(0).code, 250);
        conn.quit().await;
        let log = log.lock().unwrap();
        assert!(
            log.commands.iter().any(|c| c == "RSET"),
            "{:?}",
            log.commands
        );
        assert_eq!(log.bodies, vec![b"second\r\n.\r\n".to_vec()]);
    }
}

#[tokio::test]
async fn mail_refused_decides_every_recipient() {
    let script = Script {
        mail_reply: "451 4.3.0 try later",
        ..Script::default()
    };
    let (addr, _log) = serve(script).await;
    let mut conn = Connection::connect(addr, &config()).await.unwrap();
    let rcpts = [("a@x.test", ""), ("b@x.test", "")];
    let res = conn.send(&tx(&rcpts, b"hi\r\n")).await.unwrap();
    assert_eq!(res.mail.code, 451);
    assert!(res.data.is_none());
    // The server's "503 need MAIL" answers to the pipelined RCPTs are not
    // what decides the recipients.
    assert_eq!(res.rcpt_outcome(0).code, 451);
    assert!(res.rcpt_outcome(1).is_transient());
    conn.noop().await.unwrap();
}

#[tokio::test]
async fn connection_reuse() {
    let (addr, log) = serve(Script::default()).await;
    let mut conn = Connection::connect(addr, &config()).await.unwrap();
    for i in 0..2 {
        let body = format!("message {i}\r\n");
        let rcpts = [("r@x.test", "")];
        let res = conn.send(&tx(&rcpts, body.as_bytes())).await.unwrap();
        assert_eq!(res.rcpt_outcome(0).code, 250);
    }
    conn.noop().await.unwrap();
    conn.rset().await.unwrap();
    conn.quit().await;
    let log = log.lock().unwrap();
    assert_eq!(log.bodies.len(), 2);
    assert_eq!(log.bodies[1], b"message 1\r\n.\r\n");
    assert_eq!(
        log.commands
            .iter()
            .filter(|c| c.starts_with("EHLO"))
            .count(),
        1
    );
    assert_eq!(log.commands.last().unwrap(), "QUIT");
}

#[tokio::test]
async fn size_limit_refused_locally_and_size_param_sent() {
    let script = Script {
        ehlo: Some(vec!["PIPELINING", "SIZE 100"]),
        ..Script::default()
    };
    let (addr, log) = serve(script).await;
    let mut conn = Connection::connect(addr, &config()).await.unwrap();
    assert_eq!(conn.extensions().size, Some(100));
    let rcpts = [("a@x.test", ""), ("b@x.test", "")];
    let big = vec![b'x'; 200];
    let res = conn.send(&tx(&rcpts, &big)).await.unwrap();
    assert_eq!(res.mail.code, 552);
    assert_eq!(res.mail.enhanced.unwrap().to_string(), "5.3.4");
    assert!(res.data.is_none());
    assert_eq!(res.rcpt_outcome(1).code, 552);
    assert!(
        mail_lines(&log).is_empty(),
        "nothing sent for a refused size"
    );

    let res = conn.send(&tx(&rcpts, b"small\r\n")).await.unwrap();
    assert_eq!(res.rcpt_outcome(0).code, 250);
    assert_eq!(mail_lines(&log)[0], "MAIL FROM:<sender@example.org> SIZE=7");
}

#[tokio::test]
async fn helo_fallback() {
    let script = Script {
        ehlo: None,
        ..Script::default()
    };
    let (addr, log) = serve(script).await;
    let mut conn = Connection::connect(addr, &config()).await.unwrap();
    assert_eq!(conn.extensions(), &Default::default());
    let rcpts = [("a@x.test", "NOTIFY=FAILURE ORCPT=rfc822;a@x.test")];
    let t = Transaction {
        mail_params: "RET=HDRS ENVID=abc BODY=8BITMIME",
        origin: Some("mx"),
        ..tx(&rcpts, b"hi\r\n")
    };
    let res = conn.send(&t).await.unwrap();
    assert_eq!(res.rcpt_outcome(0).code, 250);
    let log = log.lock().unwrap();
    assert_eq!(log.commands[0], "EHLO client.test");
    assert_eq!(log.commands[1], "HELO client.test");
    assert_eq!(log.commands[2], "MAIL FROM:<sender@example.org>");
    assert_eq!(log.commands[3], "RCPT TO:<a@x.test>");
}

#[tokio::test]
async fn xorigin_only_when_advertised() {
    for advertised in [true, false] {
        let script = Script {
            ehlo: Some(if advertised {
                vec!["PIPELINING", "XORIGIN"]
            } else {
                vec!["PIPELINING"]
            }),
            ..Script::default()
        };
        let (addr, log) = serve(script).await;
        let mut conn = Connection::connect(addr, &config()).await.unwrap();
        assert_eq!(conn.extensions().xorigin, advertised);
        let rcpts = [("a@x.test", "")];
        let t = Transaction {
            origin: Some("msa-1"),
            mail_from: "",
            ..tx(&rcpts, b"hi\r\n")
        };
        conn.send(&t).await.unwrap();
        let want = if advertised {
            "MAIL FROM:<> XORIGIN=msa-1"
        } else {
            "MAIL FROM:<>"
        };
        assert_eq!(mail_lines(&log)[0], want);
    }
}

#[tokio::test]
async fn dsn_params_only_when_advertised() {
    for dsn in [true, false] {
        let mut kws = vec!["PIPELINING", "8BITMIME"];
        if dsn {
            kws.push("DSN");
        }
        let script = Script {
            ehlo: Some(kws),
            ..Script::default()
        };
        let (addr, log) = serve(script).await;
        let mut conn = Connection::connect(addr, &config()).await.unwrap();
        let rcpts = [("a@x.test", "NOTIFY=FAILURE,DELAY ORCPT=rfc822;a@x.test")];
        let t = Transaction {
            mail_params: "RET=HDRS ENVID=QQ314159 BODY=8BITMIME SMTPUTF8",
            ..tx(&rcpts, b"hi\r\n")
        };
        conn.send(&t).await.unwrap();
        let lines = mail_lines(&log);
        if dsn {
            assert_eq!(
                lines[0],
                "MAIL FROM:<sender@example.org> RET=HDRS ENVID=QQ314159 BODY=8BITMIME"
            );
            assert_eq!(
                lines[1],
                "RCPT TO:<a@x.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;a@x.test"
            );
        } else {
            assert_eq!(lines[0], "MAIL FROM:<sender@example.org> BODY=8BITMIME");
            assert_eq!(lines[1], "RCPT TO:<a@x.test>");
        }
    }
}

#[tokio::test]
async fn smtputf8_addresses() {
    // Not offered: the non-ASCII recipient is refused locally, the other
    // one is delivered.
    let (addr, log) = serve(Script::default()).await;
    let mut conn = Connection::connect(addr, &config()).await.unwrap();
    let rcpts = [("jos\u{e9}@x.test", ""), ("jose@x.test", "")];
    let res = conn.send(&tx(&rcpts, b"hi\r\n")).await.unwrap();
    let r0 = res.rcpt_outcome(0);
    assert_eq!(
        (r0.code, r0.enhanced.unwrap().to_string()),
        (553, "5.6.7".into())
    );
    assert_eq!(res.rcpt_outcome(1).code, 250);
    assert_eq!(mail_lines(&log).len(), 2);
    // Non-ASCII sender: the whole transaction is refused.
    let t = Transaction {
        mail_from: "\u{e9}@x.test",
        ..tx(&rcpts, b"hi\r\n")
    };
    let res = conn.send(&t).await.unwrap();
    assert_eq!(res.rcpt_outcome(1).code, 553);

    // Offered: SMTPUTF8 is added to MAIL.
    let script = Script {
        ehlo: Some(vec!["PIPELINING", "SMTPUTF8"]),
        ..Script::default()
    };
    let (addr, log) = serve(script).await;
    let mut conn = Connection::connect(addr, &config()).await.unwrap();
    let res = conn.send(&tx(&rcpts, b"hi\r\n")).await.unwrap();
    assert_eq!(res.accepted(), 2);
    assert_eq!(
        mail_lines(&log)[0],
        "MAIL FROM:<sender@example.org> SMTPUTF8"
    );
}

#[tokio::test]
async fn envelope_injection_is_refused_locally() {
    let (addr, log) = serve(Script::default()).await;
    let mut conn = Connection::connect(addr, &config()).await.unwrap();
    let rcpts = [("a@x.test>\r\nRCPT TO:<evil@x.test", ""), ("b@x.test", "")];
    let res = conn.send(&tx(&rcpts, b"hi\r\n")).await.unwrap();
    assert_eq!(res.rcpt_outcome(0).code, 553);
    assert_eq!(res.rcpt_outcome(1).code, 250);
    assert_eq!(
        mail_lines(&log),
        vec!["MAIL FROM:<sender@example.org>", "RCPT TO:<b@x.test>"]
    );
}

fn tls_server() -> (Arc<rustls::ServerConfig>, CertificateDer<'static>) {
    palisade_testsupport::tls::self_signed("localhost")
}

#[tokio::test]
async fn starttls_opportunistic_with_self_signed_cert() {
    let (server_cfg, _) = tls_server();
    let script = Script {
        tls: Some(server_cfg),
        ..Script::default()
    };
    let (addr, log) = serve(script).await;
    let cfg = ClientConfig {
        tls_mode: TlsMode::Opportunistic,
        ..config()
    };
    let mut conn = Connection::connect(addr, &cfg).await.unwrap();
    assert!(conn.is_tls());
    assert!(
        !conn.extensions().starttls,
        "extensions are from the EHLO after TLS"
    );
    assert!(conn.extensions().pipelining);
    let rcpts = [("a@x.test", "")];
    let res = conn.send(&tx(&rcpts, b".secret\r\n")).await.unwrap();
    assert_eq!(res.rcpt_outcome(0).code, 250);
    conn.quit().await;
    let log = log.lock().unwrap();
    assert_eq!(log.tls_sessions, 1);
    assert_eq!(
        log.commands
            .iter()
            .filter(|c| c.starts_with("EHLO"))
            .count(),
        2
    );
    assert_eq!(log.bodies[0], b"..secret\r\n.\r\n");
}

#[tokio::test]
async fn opportunistic_without_starttls_stays_plaintext() {
    let (addr, _log) = serve(Script::default()).await;
    let cfg = ClientConfig {
        tls_mode: TlsMode::Opportunistic,
        ..config()
    };
    let conn = Connection::connect(addr, &cfg).await.unwrap();
    assert!(!conn.is_tls());
}

#[tokio::test]
async fn starttls_required_with_verified_cert() {
    let (server_cfg, cert) = tls_server();
    let script = Script {
        tls: Some(server_cfg),
        ..Script::default()
    };
    let (addr, _log) = serve(script).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let verifying = verifying_tls_config(roots);
    let cfg = ClientConfig {
        tls_mode: TlsMode::Required,
        tls: Some(verifying.clone()),
        server_name: Some("localhost".into()),
        ..config()
    };
    let mut conn = Connection::connect(addr, &cfg).await.unwrap();
    assert!(conn.is_tls());
    let rcpts = [("a@x.test", "")];
    let res = conn.send(&tx(&rcpts, b"hi\r\n")).await.unwrap();
    assert_eq!(res.rcpt_outcome(0).code, 250);

    // Same roots, wrong name: the handshake fails.
    let cfg = ClientConfig {
        server_name: Some("other.example".into()),
        ..cfg
    };
    match Connection::connect(addr, &cfg).await {
        Err(ClientError::Tls(msg)) => assert!(!msg.is_empty()),
        other => panic!("expected TLS error, got {other:?}"),
    }
    // Insecure config is a valid explicit choice too.
    let cfg = ClientConfig {
        tls: Some(insecure_tls_config()),
        server_name: None,
        ..cfg
    };
    assert!(Connection::connect(addr, &cfg).await.unwrap().is_tls());
}

#[tokio::test]
async fn starttls_required_but_not_offered() {
    let (addr, _log) = serve(Script::default()).await;
    let cfg = ClientConfig {
        tls_mode: TlsMode::Required,
        ..config()
    };
    let err = Connection::connect(addr, &cfg).await.unwrap_err();
    assert!(matches!(err, ClientError::TlsRequired), "{err:?}");
    assert!(err.is_temporary());
}

#[tokio::test]
async fn silent_server_times_out() {
    let script = Script {
        silent: true,
        ..Script::default()
    };
    let (addr, _log) = serve(script).await;
    let cfg = ClientConfig {
        command_timeout: Duration::from_millis(300),
        ..config()
    };
    let start = Instant::now();
    let err = Connection::connect(addr, &cfg).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout("greeting")), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(err.is_temporary());
}

#[tokio::test]
async fn no_reply_after_data_times_out_and_poisons() {
    let script = Script {
        data_final: "",
        ..Script::default()
    };
    let (addr, _log) = serve(script).await;
    let cfg = ClientConfig {
        data_timeout: Duration::from_millis(300),
        ..config()
    };
    let mut conn = Connection::connect(addr, &cfg).await.unwrap();
    let rcpts = [("a@x.test", "")];
    let start = Instant::now();
    let err = conn.send(&tx(&rcpts, b"hi\r\n")).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Timeout("end of data")),
        "{err:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(!conn.is_usable());
    assert!(conn.noop().await.is_err());
}

#[tokio::test]
async fn refused_greeting_and_hostile_replies() {
    let script = Script {
        banner: Some("554 5.7.1 go away"),
        ..Script::default()
    };
    let (addr, _log) = serve(script).await;
    let err = Connection::connect(addr, &config()).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Greeting(r) if r.code == 554),
        "{err:?}"
    );
    assert!(!err.is_temporary());

    let long: &'static str = Box::leak(format!("220 {}", "x".repeat(10_000)).into_boxed_str());
    let script = Script {
        banner: Some(long),
        ..Script::default()
    };
    let (addr, _log) = serve(script).await;
    let err = Connection::connect(addr, &config()).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Protocol(m) if m.contains("too long")),
        "{err:?}"
    );

    let many: &'static str = Box::leak("220-x\r\n".repeat(200).into_boxed_str());
    let script = Script {
        banner: Some(many),
        ..Script::default()
    };
    let (addr, _log) = serve(script).await;
    let err = Connection::connect(addr, &config()).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Protocol(m) if m.contains("lines")),
        "{err:?}"
    );
}

#[tokio::test]
async fn large_body_round_trip() {
    let (addr, log) = serve(Script::default()).await;
    let mut conn = Connection::connect(addr, &config()).await.unwrap();
    let mut body = Vec::new();
    for i in 0..20_000 {
        if i % 7 == 0 {
            body.extend_from_slice(b".");
        }
        body.extend_from_slice(format!("line {i} of a large message\r\n").as_bytes());
    }
    let rcpts = [("a@x.test", "")];
    let res = conn.send(&tx(&rcpts, &body)).await.unwrap();
    assert_eq!(res.rcpt_outcome(0).code, 250);
    let log = log.lock().unwrap();
    let got = &log.bodies[0];
    // Undo the stuffing and compare.
    let mut unstuffed = Vec::new();
    for line in got[..got.len() - 3].split_inclusive(|&b| b == b'\n') {
        unstuffed.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    assert_eq!(unstuffed, body);
}

#[tokio::test]
async fn stale_pooled_connection_is_an_io_error() {
    let script = Script {
        close_after_first: true,
        ..Script::default()
    };
    let (addr, log) = serve(script).await;
    let mut conn = Connection::connect(addr, &config()).await.unwrap();
    let rcpts = [("a@x.test", "")];
    conn.send(&tx(&rcpts, b"one\r\n")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = conn.send(&tx(&rcpts, b"two\r\n")).await.unwrap_err();
    match &err {
        ClientError::Io(e) => assert!(e.to_string().contains("421"), "{e}"),
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(!conn.is_usable());
    assert_eq!(mail_lines(&log).len(), 2, "second MAIL never sent");
}

#[tokio::test]
async fn small_message_body_is_one_write() {
    let (addr, log) = serve(Script::default()).await;
    let mut conn = Connection::connect(addr, &config()).await.unwrap();
    let mut body = Vec::new();
    while body.len() < 5000 {
        body.extend_from_slice(b".a line of a five kilobyte message, dot first\r\n");
    }
    let rcpts = [("a@x.test", "")];
    conn.send(&tx(&rcpts, &body)).await.unwrap();
    let log = log.lock().unwrap();
    assert_eq!(
        log.data_reads, 1,
        "body and terminator arrive in one segment"
    );
    assert!(log.bodies[0].ends_with(b"first\r\n.\r\n"));
}

/// cargo test -p palisade-smtp-client --release -- --ignored --nocapture
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    let (addr, _log) = serve(Script::default()).await;
    let body = vec![b'x'; 4000];
    let rcpts = [("a@x.test", ""), ("b@x.test", "")];
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..8 {
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::connect(addr, &config()).await.unwrap();
            for _ in 0..2500 {
                let res = conn.send(&tx(&rcpts, &body)).await.unwrap();
                assert_eq!(res.accepted(), 2);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = 8.0 * 2500.0;
    println!(
        "{:.0} msg/s (client + fake server on this machine)",
        n / start.elapsed().as_secs_f64()
    );
}
