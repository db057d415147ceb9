mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::TempDir;
use palisade_mailbox::{
    serve_pop3, serve_pop3_with_options, Directory, MailStore, Pop3Options, INBOX,
};
use palisade_testsupport::tls::{connector, localhost, server_config as server_tls};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

struct Client<S> {
    s: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn line(&mut self) -> String {
        let mut l = String::new();
        let n = tokio::time::timeout(Duration::from_secs(20), self.s.read_line(&mut l))
            .await
            .expect("server answers")
            .unwrap();
        assert!(n > 0, "connection closed");
        assert!(l.ends_with("\r\n"), "CRLF line ending: {l:?}");
        l.truncate(l.len() - 2);
        l
    }
    async fn cmd(&mut self, c: &str) -> String {
        self.s
            .write_all(format!("{c}\r\n").as_bytes())
            .await
            .unwrap();
        self.s.flush().await.unwrap();
        self.line().await
    }
    /// Reads a multi-line body up to the terminating ".", undoing byte-stuffing.
    async fn body(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut l = Vec::new();
            self.s.read_until(b'\n', &mut l).await.unwrap();
            assert!(l.ends_with(b"\r\n"), "CRLF line ending: {l:?}");
            if l == b".\r\n" {
                return out;
            }
            if l.starts_with(b".") {
                l.remove(0);
            }
            out.extend_from_slice(&l);
        }
    }
    async fn multi(&mut self, c: &str) -> (String, Vec<u8>) {
        let status = self.cmd(c).await;
        assert!(status.starts_with("+OK"), "{c}: {status}");
        let body = self.body().await;
        (status, body)
    }
}

async fn tls_client(addr: SocketAddr) -> Client<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector().connect(localhost(), tcp).await.unwrap();
    Client {
        s: BufReader::new(tls),
    }
}

struct Fixture {
    _tmp: TempDir,
    dir: Directory,
    store: MailStore,
    messages: Vec<Vec<u8>>,
}

fn fixture() -> Fixture {
    let tmp = TempDir::new("pop3");
    let dir = Directory::open(&tmp.path().join("directory")).unwrap();
    let store = MailStore::open(&tmp.path().join("store")).unwrap();
    dir.add_user("alice@example.test", "correct horse", 0, "store-staff")
        .unwrap();
    dir.add_alias("info@example.test", "alice@example.test")
        .unwrap();
    let messages = vec![
        b"Subject: one\r\nFrom: a@b.test\r\n\r\nfirst line\r\n.dot line\r\n..two dots\r\n.\r\nlast\r\n".to_vec(),
        b"Subject: two\r\n\r\nhello\r\n".to_vec(),
        b"Subject: three\r\nX: y\r\n\r\nl1\r\nl2\r\nl3\r\nl4\r\n".to_vec(),
    ];
    for m in &messages {
        store
            .deliver("alice@example.test", INBOX, None, m, 0)
            .unwrap();
    }
    Fixture {
        _tmp: tmp,
        dir,
        store,
        messages,
    }
}

async fn start(f: &Fixture, implicit_tls: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_pop3(
        listener,
        server_tls(),
        implicit_tls,
        f.dir.clone(),
        f.store.clone(),
        "pop.example.test".to_string(),
    ));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pop3s_session() {
    let f = fixture();
    let addr = start(&f, true).await;
    let uidvalidity = f
        .store
        .folder_info("alice@example.test", INBOX)
        .unwrap()
        .unwrap()
        .uidvalidity;

    let mut c = tls_client(addr).await;
    let greeting = c.line().await;
    assert!(greeting.starts_with("+OK pop.example.test"), "{greeting}");
    let (_, capa) = c.multi("CAPA").await;
    let capa = String::from_utf8(capa).unwrap();
    for cap in ["USER", "UIDL", "TOP", "RESP-CODES"] {
        assert!(capa.lines().any(|l| l == cap), "{cap} missing in {capa}");
    }
    assert!(!capa.contains("STLS"), "no STLS once under TLS: {capa}");
    assert!(c.cmd("STAT").await.starts_with("-ERR"), "STAT before login");

    // Bad password: refused after a delay.
    assert!(c.cmd("USER alice@example.test").await.starts_with("+OK"));
    let t = Instant::now();
    assert_eq!(c.cmd("PASS wrong").await, "-ERR [AUTH] invalid credentials");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "delay {:?}",
        t.elapsed()
    );
    assert!(
        c.cmd("PASS correct horse").await.starts_with("-ERR"),
        "PASS needs USER again"
    );

    // Login (case-insensitive, password with a space).
    assert!(c.cmd("user ALICE@example.test").await.starts_with("+OK"));
    let ok = c.cmd("PASS correct horse").await;
    assert!(ok.starts_with("+OK"), "{ok}");
    let total: usize = f.messages.iter().map(Vec::len).sum();
    assert_eq!(c.cmd("STAT").await, format!("+OK 3 {total}"));

    let (_, list) = c.multi("LIST").await;
    let expect: String = f
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| format!("{} {}\r\n", i + 1, m.len()))
        .collect();
    assert_eq!(String::from_utf8(list).unwrap(), expect);
    assert_eq!(
        c.cmd("LIST 2").await,
        format!("+OK 2 {}", f.messages[1].len())
    );
    assert!(c.cmd("LIST 4").await.starts_with("-ERR"));
    assert!(c.cmd("LIST 0").await.starts_with("-ERR"));

    let (_, uidl) = c.multi("UIDL").await;
    assert_eq!(
        String::from_utf8(uidl).unwrap(),
        format!("1 {uidvalidity}.1\r\n2 {uidvalidity}.2\r\n3 {uidvalidity}.3\r\n")
    );
    assert_eq!(c.cmd("UIDL 3").await, format!("+OK 3 {uidvalidity}.3"));

    // RETR returns the exact bytes (byte-stuffing undone here).
    for (i, m) in f.messages.iter().enumerate() {
        let (status, body) = c.multi(&format!("RETR {}", i + 1)).await;
        assert_eq!(status, format!("+OK {} octets", m.len()));
        assert_eq!(body, *m, "message {}", i + 1);
    }
    assert!(c.cmd("RETR 9").await.starts_with("-ERR"));

    let (_, top) = c.multi("TOP 3 2").await;
    assert_eq!(top, b"Subject: three\r\nX: y\r\n\r\nl1\r\nl2\r\n");
    let (_, top) = c.multi("TOP 1 0").await;
    assert_eq!(top, b"Subject: one\r\nFrom: a@b.test\r\n\r\n");

    // DELE then RSET undoes.
    assert!(c.cmd("DELE 1").await.starts_with("+OK"));
    assert!(c.cmd("DELE 1").await.starts_with("-ERR"));
    assert!(c.cmd("RETR 1").await.starts_with("-ERR"));
    assert_eq!(
        c.cmd("STAT").await,
        format!("+OK 2 {}", total - f.messages[0].len())
    );
    assert!(c.cmd("RSET").await.starts_with("+OK"));
    assert_eq!(c.cmd("STAT").await, format!("+OK 3 {total}"));

    // DELE 2 and drop the connection without QUIT: nothing is deleted.
    assert!(c.cmd("DELE 2").await.starts_with("+OK"));
    assert!(c.cmd("NOOP").await.starts_with("+OK"));
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(f.store.list("alice@example.test", INBOX).unwrap().len(), 3);

    // New session via the alias: DELE 2 + QUIT removes it.
    let mut c = tls_client(addr).await;
    c.line().await;
    assert!(c.cmd("USER info@example.test").await.starts_with("+OK"));
    assert!(c.cmd("PASS correct horse").await.starts_with("+OK"));
    // Exclusive maildrop lock: a second session for the same user is refused.
    let mut c2 = tls_client(addr).await;
    c2.line().await;
    c2.cmd("USER alice@example.test").await;
    assert!(c2
        .cmd("PASS correct horse")
        .await
        .starts_with("-ERR [IN-USE]"));
    assert!(c.cmd("DELE 2").await.starts_with("+OK"));
    // Deletion is not applied before QUIT.
    assert_eq!(f.store.list("alice@example.test", INBOX).unwrap().len(), 3);
    let bye = c.cmd("QUIT").await;
    assert!(bye.starts_with("+OK"), "{bye}");
    let uids: Vec<u32> = f
        .store
        .list("alice@example.test", INBOX)
        .unwrap()
        .iter()
        .map(|m| m.uid)
        .collect();
    assert_eq!(uids, vec![1, 3]);
    assert_eq!(
        f.store.usage("alice@example.test").unwrap(),
        (total - f.messages[1].len()) as u64
    );

    // The lock was released: c2 can now log in and sees the renumbered maildrop.
    c2.cmd("USER alice@example.test").await;
    assert!(c2.cmd("PASS correct horse").await.starts_with("+OK"));
    assert_eq!(c2.cmd("UIDL 2").await, format!("+OK 2 {uidvalidity}.3"));
    assert!(c2.cmd("QUIT").await.starts_with("+OK"));

    // Unknown user: same answer as a bad password.
    let mut c = tls_client(addr).await;
    c.line().await;
    c.cmd("USER ghost@example.test").await;
    assert_eq!(
        c.cmd("PASS whatever").await,
        "-ERR [AUTH] invalid credentials"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_requires_stls() {
    let f = fixture();
    let addr = start(&f, false).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut c = Client {
        s: BufReader::new(tcp),
    };
    assert!(c.line().await.starts_with("+OK"));
    let (_, capa) = c.multi("CAPA").await;
    let capa = String::from_utf8(capa).unwrap();
    assert!(capa.lines().any(|l| l == "STLS"), "{capa}");
    assert!(
        !capa.lines().any(|l| l == "USER"),
        "USER not offered before TLS: {capa}"
    );
    assert_eq!(
        c.cmd("USER alice@example.test").await,
        "-ERR [AUTH] TLS required"
    );
    assert_eq!(
        c.cmd("PASS correct horse").await,
        "-ERR [AUTH] TLS required"
    );
    assert!(c.cmd("STAT").await.starts_with("-ERR"));
    assert!(c.cmd("STLS").await.starts_with("+OK"));
    let tcp = c.s.into_inner();
    let tls = connector().connect(localhost(), tcp).await.unwrap();
    let mut c = Client {
        s: BufReader::new(tls),
    };
    let (_, capa) = c.multi("CAPA").await;
    let capa = String::from_utf8(capa).unwrap();
    assert!(capa.lines().any(|l| l == "USER"), "{capa}");
    assert!(!capa.contains("STLS"));
    assert!(c.cmd("STLS").await.starts_with("-ERR"));
    assert!(c.cmd("USER alice@example.test").await.starts_with("+OK"));
    assert!(c.cmd("PASS correct horse").await.starts_with("+OK"));
    let (_, body) = c.multi("RETR 1").await;
    assert_eq!(body, f.messages[0]);
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
}

/// Commands pipelined after STLS in plaintext must not be executed inside the TLS session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stls_discards_pipelined_plaintext() {
    let f = fixture();
    let addr = start(&f, false).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut c = Client {
        s: BufReader::new(tcp),
    };
    c.line().await;
    c.s.write_all(b"STLS\r\nUSER alice@example.test\r\n")
        .await
        .unwrap();
    assert!(c.line().await.starts_with("+OK"));
    let tls = connector()
        .connect(localhost(), c.s.into_inner())
        .await
        .unwrap();
    let mut c = Client {
        s: BufReader::new(tls),
    };
    // If the injected USER had been executed, PASS would succeed.
    assert!(c.cmd("PASS correct horse").await.starts_with("-ERR"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_and_auth_failure_limit() {
    let f = fixture();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut opts = Pop3Options::new("pop.example.test", true);
    opts.idle_timeout = Duration::from_millis(300);
    opts.auth_failure_delay = Duration::from_millis(10);
    opts.max_auth_failures = 2;
    opts.store_node = Some("store-students".into());
    tokio::spawn(serve_pop3_with_options(
        listener,
        server_tls(),
        f.dir.clone(),
        f.store.clone(),
        opts,
    ));

    // Idle: the server closes the connection.
    let mut c = tls_client(addr).await;
    c.line().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut l = String::new();
    let n = c.s.read_line(&mut l).await.unwrap_or(0);
    assert_eq!(n, 0, "closed after idle timeout, got {l:?}");

    // Two failures: closed.
    let mut c = tls_client(addr).await;
    c.line().await;
    c.cmd("USER a@example.test").await;
    assert!(c.cmd("PASS x").await.starts_with("-ERR [AUTH]"));
    c.cmd("USER a@example.test").await;
    assert!(c.cmd("PASS x").await.starts_with("-ERR [AUTH]"));
    let mut l = String::new();
    assert_eq!(c.s.read_line(&mut l).await.unwrap_or(0), 0);

    // User of another store node is refused here.
    let mut c = tls_client(addr).await;
    c.line().await;
    c.cmd("USER alice@example.test").await;
    assert!(c.cmd("PASS correct horse").await.starts_with("-ERR [AUTH]"));
}

/// Python's poplib against POP3S and STLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_poplib() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("python3 not available; skipping");
        return;
    }
    let f = fixture();
    let addr_tls = start(&f, true).await;
    let addr_plain = start(&f, false).await;
    let script = r#"
import poplib, ssl, sys, json
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
out = {}
p = poplib.POP3_SSL('127.0.0.1', int(sys.argv[1]), context=ctx, timeout=20)
out['welcome'] = p.getwelcome().decode()
p.user('alice@example.test')
p.pass_('correct horse')
out['stat'] = list(p.stat())
out['list'] = [x.decode() for x in p.list()[1]]
out['uidl'] = [x.decode() for x in p.uidl()[1]]
resp, lines, octets = p.retr(1)
out['retr1'] = b'\r\n'.join(lines).decode() + '\r\n'
out['top3'] = [x.decode() for x in p.top(3, 1)[1]]
p.dele(2)
p.quit()
p = poplib.POP3('127.0.0.1', int(sys.argv[2]), timeout=20)
try:
    p.user('alice@example.test')
    out['user_before_tls'] = 'accepted'
except poplib.error_proto as e:
    out['user_before_tls'] = e.args[0].decode()
p.stls(context=ctx)
p.user('alice@example.test')
p.pass_('correct horse')
out['stat_after_stls'] = list(p.stat())
p.quit()
print(json.dumps(out))
"#;
    let output = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(addr_tls.port().to_string())
        .arg(addr_plain.port().to_string())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let total: usize = f.messages.iter().map(Vec::len).sum();
    let m = &f.messages;
    assert!(
        stdout.contains(&format!("\"stat\": [3, {total}]")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "\"list\": [\"1 {}\", \"2 {}\", \"3 {}\"]",
            m[0].len(),
            m[1].len(),
            m[2].len()
        )),
        "{stdout}"
    );
    let retr_json = String::from_utf8(m[0].clone())
        .unwrap()
        .replace("\r\n", "\\r\\n");
    assert!(
        stdout.contains(&format!("\"retr1\": \"{retr_json}\"")),
        "{stdout}"
    );
    assert!(
        stdout.contains("\"top3\": [\"Subject: three\", \"X: y\", \"\", \"l1\"]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\"user_before_tls\": \"-ERR [AUTH] TLS required\""),
        "{stdout}"
    );
    let left = total - m[1].len();
    assert!(
        stdout.contains(&format!("\"stat_after_stls\": [2, {left}]")),
        "{stdout}"
    );
    assert_eq!(f.store.list("alice@example.test", INBOX).unwrap().len(), 2);
}
