//! The IMAP server over TLS with a real rustls client: the RFC 3501 command set, IDLE,
//! STARTTLS mode and authentication failures.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use palisade_imap::{serve_imap, ImapOptions};
use palisade_mailbox::{Directory, MailStore, INBOX};
use palisade_testsupport::tls::{connector, localhost, server_config as server_tls};
use palisade_testsupport::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

struct Client<S> {
    s: BufReader<S>,
    n: u32,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// One response line, with any literals it carries inlined.
    async fn line(&mut self) -> String {
        let mut out = Vec::new();
        loop {
            let mut l = Vec::new();
            let n = tokio::time::timeout(Duration::from_secs(20), self.s.read_until(b'\n', &mut l))
                .await
                .expect("server answers")
                .unwrap();
            assert!(
                n > 0,
                "connection closed; so far: {}",
                String::from_utf8_lossy(&out)
            );
            assert!(l.ends_with(b"\r\n"), "CRLF line ending: {l:?}");
            l.truncate(l.len() - 2);
            let literal = l
                .iter()
                .rposition(|&b| b == b'{')
                .filter(|_| l.ends_with(b"}"))
                .and_then(|p| {
                    std::str::from_utf8(&l[p + 1..l.len() - 1])
                        .ok()?
                        .parse::<usize>()
                        .ok()
                });
            out.extend_from_slice(&l);
            match literal {
                Some(len) => {
                    out.extend_from_slice(b"\r\n");
                    let mut data = vec![0; len];
                    self.s.read_exact(&mut data).await.unwrap();
                    out.extend_from_slice(&data);
                }
                None => return String::from_utf8_lossy(&out).into_owned(),
            }
        }
    }

    async fn send(&mut self, raw: &str) {
        self.s.write_all(raw.as_bytes()).await.unwrap();
        self.s.flush().await.unwrap();
    }

    /// Sends a tagged command; returns (untagged lines, tagged status line).
    async fn cmd(&mut self, c: &str) -> (Vec<String>, String) {
        self.n += 1;
        let tag = format!("t{}", self.n);
        self.send(&format!("{tag} {c}\r\n")).await;
        let mut lines = Vec::new();
        loop {
            let l = self.line().await;
            if let Some(status) = l.strip_prefix(&format!("{tag} ")) {
                return (lines, status.to_string());
            }
            lines.push(l);
        }
    }

    async fn ok(&mut self, c: &str) -> Vec<String> {
        let (lines, status) = self.cmd(c).await;
        assert!(status.starts_with("OK"), "{c}: {status} after {lines:?}");
        lines
    }
}

async fn tls_client(addr: SocketAddr) -> Client<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector().connect(localhost(), tcp).await.unwrap();
    let mut c = Client {
        s: BufReader::new(tls),
        n: 0,
    };
    let greeting = c.line().await;
    assert!(
        greeting.starts_with("* OK [CAPABILITY IMAP4rev1"),
        "{greeting}"
    );
    assert!(greeting.contains("AUTH=PLAIN"), "{greeting}");
    c
}

struct Fixture {
    _tmp: TempDir,
    dir: Directory,
    store: MailStore,
}

const ALICE: &str = "alice@example.test";
const PASSWORD: &str = "correct horse";

fn message(n: usize, subject: &str) -> Vec<u8> {
    format!(
        "From: Bob <bob@example.org>\r\nTo: Alice <alice@example.test>\r\nSubject: {subject}\r\nDate: Tue, 2 Jan 2024 10:00:00 +0000\r\nMessage-ID: <m{n}@example.org>\r\n\r\nbody of message {n}\r\nsecond line\r\n"
    )
    .into_bytes()
}

fn fixture() -> Fixture {
    let tmp = TempDir::new("imap");
    let dir = Directory::open(&tmp.0.join("directory")).unwrap();
    let store = MailStore::open(&tmp.0.join("store")).unwrap();
    dir.add_user(ALICE, PASSWORD, 10 * 1024 * 1024, "store-staff")
        .unwrap();
    dir.add_user("carol@example.test", "other pass", 0, "store-students")
        .unwrap();
    for (i, s) in ["hello world", "lunch plans", "quarterly report"]
        .iter()
        .enumerate()
    {
        store
            .deliver(ALICE, INBOX, None, &message(i + 1, s), 0)
            .unwrap();
    }
    Fixture {
        _tmp: tmp,
        dir,
        store,
    }
}

async fn start(f: &Fixture, implicit_tls: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut options = ImapOptions::new("imap.example.test", implicit_tls);
    options.store_node = Some("store-staff".into());
    options.auth_failure_delay = Duration::from_millis(300);
    tokio::spawn(serve_imap(
        listener,
        server_tls(),
        options,
        f.dir.clone(),
        f.store.clone(),
    ));
    addr
}

fn find<'a>(lines: &'a [String], needle: &str) -> &'a String {
    lines
        .iter()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in {lines:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_failures_are_delayed_and_identical() {
    let f = fixture();
    let addr = start(&f, true).await;
    let mut c = tls_client(addr).await;
    for user in [ALICE, "nobody@example.test"] {
        let t0 = Instant::now();
        let (_, status) = c.cmd(&format!("LOGIN {user} \"wrong\"")).await;
        assert_eq!(
            status, "NO [AUTHENTICATIONFAILED] invalid credentials",
            "{user}"
        );
        assert!(
            t0.elapsed() >= Duration::from_millis(300),
            "failure is delayed"
        );
    }
    // Third failure closes the connection.
    let (lines, status) = c
        .cmd("AUTHENTICATE PLAIN AGFsaWNlQGV4YW1wbGUudGVzdAB4eA==")
        .await;
    assert!(
        status.starts_with("NO [AUTHENTICATIONFAILED]"),
        "{status} {lines:?}"
    );
    let bye = c.line().await;
    assert!(bye.starts_with("* BYE"), "{bye}");

    // AUTHENTICATE PLAIN with a continuation; a user of another store node is refused.
    let mut c = tls_client(addr).await;
    c.send("a1 AUTHENTICATE PLAIN\r\n").await;
    assert_eq!(c.line().await, "+ ");
    c.send("AGNhcm9sQGV4YW1wbGUudGVzdABvdGhlciBwYXNz\r\n").await; // \0carol@..\0other pass
    assert!(c.line().await.starts_with("a1 NO [UNAVAILABLE]"));
    c.send("a2 AUTHENTICATE PLAIN\r\n").await;
    assert_eq!(c.line().await, "+ ");
    c.send("AGFsaWNlQGV4YW1wbGUudGVzdABjb3JyZWN0IGhvcnNl\r\n")
        .await; // \0alice@..\0correct horse
    let ok = c.line().await;
    assert!(ok.starts_with("a2 OK"), "{ok}");
    assert!(!ok.contains("AUTH=PLAIN"), "no AUTH after login: {ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_set_over_tls() {
    let f = fixture();
    let addr = start(&f, true).await;
    let mut c = tls_client(addr).await;
    let caps = c.ok("CAPABILITY").await;
    for cap in [
        "IMAP4rev1",
        "IDLE",
        "MOVE",
        "QUOTA",
        "UNSELECT",
        "AUTH=PLAIN",
    ] {
        assert!(caps[0].contains(cap), "{cap} in {caps:?}");
    }
    let (_, status) = c.cmd("SELECT INBOX").await;
    assert!(status.starts_with("BAD"), "SELECT before login: {status}");
    c.ok(&format!("LOGIN {ALICE} \"{PASSWORD}\"")).await;

    // LIST with special-use attributes; CREATE / RENAME / DELETE.
    let list = c.ok("LIST \"\" \"*\"").await;
    for name in ["INBOX", "Junk", "Sent", "Drafts", "Trash"] {
        assert!(
            list.iter().any(|l| l.ends_with(&format!("\"/\" {name}"))),
            "{name} in {list:?}"
        );
    }
    assert!(find(&list, " Junk").contains("\\Junk"));
    c.ok("CREATE Projects").await;
    let (_, status) = c.cmd("CREATE Projects").await;
    assert!(status.starts_with("NO [ALREADYEXISTS]"), "{status}");
    c.ok("RENAME Projects Archive").await;
    c.ok("CREATE \"Old Stuff\"").await;
    c.ok("DELETE \"Old Stuff\"").await;
    let list = c.ok("LIST \"\" %").await;
    assert!(list.iter().any(|l| l.ends_with(" Archive")), "{list:?}");
    assert!(
        !list
            .iter()
            .any(|l| l.contains("Projects") || l.contains("Old Stuff")),
        "{list:?}"
    );
    assert_eq!(
        c.ok("LIST \"\" \"\"").await,
        vec!["* LIST (\\Noselect) \"/\" \"\""]
    );
    assert!(c.ok("LSUB \"\" *").await.len() >= 6);

    // STATUS and SELECT.
    let status = c.ok("STATUS INBOX (MESSAGES UNSEEN UIDNEXT)").await;
    assert_eq!(
        status,
        vec!["* STATUS INBOX (MESSAGES 3 UNSEEN 3 UIDNEXT 4)"]
    );
    let sel = c.cmd("SELECT INBOX").await;
    assert!(sel.1.starts_with("OK [READ-WRITE]"), "{sel:?}");
    assert!(sel.0.contains(&"* 3 EXISTS".to_string()), "{sel:?}");
    assert!(sel.0.contains(&"* 3 RECENT".to_string()), "{sel:?}");
    find(&sel.0, "[UIDVALIDITY ");
    find(&sel.0, "[UIDNEXT 4]");
    find(&sel.0, "[PERMANENTFLAGS (");

    // FETCH index items, ENVELOPE, BODYSTRUCTURE, header fields; PEEK does not set \Seen.
    let lines = c.ok("FETCH 1:* (FLAGS UID RFC822.SIZE)").await;
    assert_eq!(lines.len(), 3);
    let size = message(1, "hello world").len();
    assert_eq!(
        lines[0],
        format!("* 1 FETCH (FLAGS (\\Recent) UID 1 RFC822.SIZE {size})")
    );
    let lines = c
        .ok("UID FETCH 2 (ENVELOPE BODYSTRUCTURE INTERNALDATE)")
        .await;
    assert!(lines[0].starts_with("* 2 FETCH (UID 2 ENVELOPE (\"Tue, 2 Jan 2024 10:00:00 +0000\" \"lunch plans\" ((\"Bob\" NIL \"bob\" \"example.org\"))"), "{lines:?}");
    assert!(
        lines[0].contains(
            "BODYSTRUCTURE (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 32 2"
        ),
        "{lines:?}"
    );
    let lines = c.ok("FETCH 2 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])").await;
    assert_eq!(
        lines[0],
        "* 2 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {24}\r\nSubject: lunch plans\r\n\r\n)"
    );
    let lines = c.ok("FETCH 2 (FLAGS)").await;
    assert_eq!(
        lines[0], "* 2 FETCH (FLAGS (\\Recent))",
        "PEEK leaves \\Seen alone"
    );
    let lines = c.ok("FETCH 2 BODY[TEXT]").await;
    assert_eq!(lines[0], "* 2 FETCH (BODY[TEXT] {32}\r\nbody of message 2\r\nsecond line\r\n FLAGS (\\Seen \\Recent))");
    let lines = c.ok("FETCH 3 (BODY.PEEK[]<0.4>)").await;
    assert_eq!(lines[0], "* 3 FETCH (BODY[]<0> {4}\r\nFrom)");
    let lines = c.ok("FETCH 3 (BODY.PEEK[HEADER])").await;
    assert!(lines[0].ends_with("<m3@example.org>\r\n\r\n)"), "{lines:?}");

    // STORE and SEARCH.
    let lines = c.ok("STORE 1 +FLAGS (\\Flagged)").await;
    assert_eq!(lines, vec!["* 1 FETCH (FLAGS (\\Flagged \\Recent))"]);
    assert!(c.ok("STORE 3 +FLAGS.SILENT (\\Seen)").await.is_empty());
    assert_eq!(c.ok("SEARCH FLAGGED").await, vec!["* SEARCH 1"]);
    assert_eq!(c.ok("SEARCH UNSEEN").await, vec!["* SEARCH 1"]);
    assert_eq!(c.ok("SEARCH SEEN").await, vec!["* SEARCH 2 3"]);
    assert_eq!(c.ok("SEARCH SUBJECT lunch").await, vec!["* SEARCH 2"]);
    assert_eq!(
        c.ok("SEARCH OR FROM nobody BODY \"message 3\"").await,
        vec!["* SEARCH 3"]
    );
    assert_eq!(
        c.ok("SEARCH NOT SUBJECT report TO alice").await,
        vec!["* SEARCH 1 2"]
    );
    assert_eq!(
        c.ok("SEARCH LARGER 10 SINCE 1-Jan-2000").await,
        vec!["* SEARCH 1 2 3"]
    );
    assert_eq!(c.ok("SEARCH BEFORE 1-Jan-2000").await, vec!["* SEARCH"]);
    assert_eq!(c.ok("UID SEARCH 2:3 SEEN").await, vec!["* SEARCH 2 3"]);

    // COPY, MOVE (EXPUNGE responses), STORE \Deleted + EXPUNGE (descending order).
    c.ok("COPY 1 Archive").await;
    let (_, status) = c.cmd("COPY 1 Nowhere").await;
    assert!(status.starts_with("NO [TRYCREATE]"), "{status}");
    let lines = c.ok("UID MOVE 2 Archive").await;
    assert_eq!(lines, vec!["* 2 EXPUNGE"]);
    let status = c.ok("STATUS Archive (MESSAGES)").await;
    assert_eq!(status, vec!["* STATUS Archive (MESSAGES 2)"]);
    let lines = c
        .ok("APPEND INBOX (\\Seen) {18}\r\nSubject: x\r\n\r\nhi\r\n")
        .await;
    assert!(
        lines.contains(&"* 3 EXISTS".to_string()),
        "APPEND shows up: {lines:?}"
    );
    c.ok("STORE 1:* +FLAGS.SILENT (\\Deleted)").await;
    let lines = c.ok("EXPUNGE").await;
    assert_eq!(lines, vec!["* 3 EXPUNGE", "* 2 EXPUNGE", "* 1 EXPUNGE"]);
    assert_eq!(f.store.list(ALICE, INBOX).unwrap().len(), 0);

    // QUOTA from the directory.
    let lines = c.ok("GETQUOTAROOT INBOX").await;
    assert_eq!(lines[0], "* QUOTAROOT INBOX \"\"");
    let used = f.store.usage(ALICE).unwrap().div_ceil(1024);
    assert_eq!(lines[1], format!("* QUOTA \"\" (STORAGE {used} 10240)"));

    // EXAMINE is read-only; CLOSE; LOGOUT.
    let sel = c.cmd("EXAMINE Archive").await;
    assert!(sel.1.starts_with("OK [READ-ONLY]"), "{sel:?}");
    let (_, status) = c.cmd("STORE 1 +FLAGS (\\Deleted)").await;
    assert!(status.starts_with("NO [READ-ONLY]"), "{status}");
    let lines = c.ok("FETCH 1 BODY[]").await;
    assert!(
        !lines[0].contains("\\Seen"),
        "EXAMINE never sets \\Seen: {lines:?}"
    );
    c.ok("CLOSE").await;
    let (lines, _) = c.cmd("LOGOUT").await;
    assert_eq!(lines, vec!["* BYE logging out"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_reports_a_delivery_at_once() {
    let f = fixture();
    let addr = start(&f, true).await;
    let mut c = tls_client(addr).await;
    c.ok(&format!("LOGIN {ALICE} \"{PASSWORD}\"")).await;
    c.ok("SELECT INBOX").await;
    c.send("i1 IDLE\r\n").await;
    assert_eq!(c.line().await, "+ idling");
    let store = f.store.clone();
    let t0 = Instant::now();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        store
            .deliver_async(ALICE, INBOX, None, message(4, "new"), 0)
            .await
            .unwrap();
    });
    assert_eq!(c.line().await, "* 4 EXISTS");
    assert_eq!(c.line().await, "* 4 RECENT");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // Flag changes by another session show up too.
    f.store
        .set_flags(
            ALICE,
            INBOX,
            &[1],
            palisade_mailbox::FlagsOp::Add,
            &["\\Answered"],
        )
        .unwrap();
    assert_eq!(c.line().await, "* 1 FETCH (FLAGS (\\Answered \\Recent))");
    c.send("DONE\r\n").await;
    assert_eq!(c.line().await, "i1 OK IDLE terminated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_mode_refuses_plaintext_login() {
    let f = fixture();
    let addr = start(&f, false).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut c = Client {
        s: BufReader::new(tcp),
        n: 0,
    };
    let greeting = c.line().await;
    assert!(
        greeting.contains("STARTTLS") && greeting.contains("LOGINDISABLED"),
        "{greeting}"
    );
    assert!(!greeting.contains("AUTH=PLAIN"), "{greeting}");
    let (_, status) = c.cmd(&format!("LOGIN {ALICE} \"{PASSWORD}\"")).await;
    assert!(status.starts_with("NO [PRIVACYREQUIRED]"), "{status}");
    let (_, status) = c
        .cmd("AUTHENTICATE PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABjb3JyZWN0IGhvcnNl")
        .await;
    assert!(status.starts_with("NO [PRIVACYREQUIRED]"), "{status}");
    // A command pipelined after STARTTLS in plaintext must be discarded, not run under TLS.
    c.send("s1 STARTTLS\r\ns2 NOOP\r\n").await;
    assert_eq!(c.line().await, "s1 OK begin TLS negotiation now");
    let tcp = c.s.into_inner();
    let tls = connector().connect(localhost(), tcp).await.unwrap();
    let mut c = Client {
        s: BufReader::new(tls),
        n: 10,
    };
    let caps = c.ok("CAPABILITY").await;
    assert!(
        caps[0].contains("AUTH=PLAIN") && !caps[0].contains("LOGINDISABLED"),
        "{caps:?}"
    );
    c.ok(&format!("LOGIN {ALICE} \"{PASSWORD}\"")).await;
    let sel = c.ok("SELECT INBOX").await;
    assert!(sel.contains(&"* 3 EXISTS".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_mailbox_fetch_and_recent_is_per_session() {
    let f = fixture();
    for i in 0..997 {
        f.store
            .deliver(ALICE, INBOX, None, &message(i + 4, "bulk"), 0)
            .unwrap();
    }
    let addr = start(&f, true).await;
    let mut a = tls_client(addr).await;
    a.ok(&format!("LOGIN {ALICE} \"{PASSWORD}\"")).await;
    let sel = a.ok("SELECT INBOX").await;
    assert!(sel.contains(&"* 1000 EXISTS".to_string()));
    let t0 = Instant::now();
    let lines = a.ok("FETCH 1:* (FLAGS UID RFC822.SIZE)").await;
    assert_eq!(lines.len(), 1000);
    assert!(
        lines[999].starts_with("* 1000 FETCH (FLAGS (\\Recent) UID 1000 RFC822.SIZE "),
        "{}",
        lines[999]
    );
    eprintln!("FETCH of 1000 index items: {:?}", t0.elapsed());
    // A second session does not see the same messages as \Recent.
    let mut b = tls_client(addr).await;
    b.ok(&format!("LOGIN {ALICE} \"{PASSWORD}\"")).await;
    let sel = b.ok("SELECT INBOX").await;
    assert!(sel.contains(&"* 0 RECENT".to_string()), "{sel:?}");
}
