//! Crash safety: a child process (this test binary re-executed with an env
//! var) enqueues in a loop and prints each id after `enqueue` returned; the
//! parent kills it with SIGKILL mid-stream, reopens the queue and checks that
//! every printed message is present and intact (invariant Q1), that ids stay
//! unique and increasing across crashes (Q7) and that origins survive (Q8).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{body, msg, tempdir};
use palisade_queue::{Queue, QueueId, QueueOptions, QueueReader};
use rand::Rng;

const CHILD_ENV: &str = "PALISADE_QUEUE_CRASH_CHILD";
const READER_ENV: &str = "PALISADE_QUEUE_READER_CHILD";

fn opts() -> QueueOptions {
    QueueOptions {
        map_size: 1 << 30,
        ..Default::default()
    }
}

fn body_len(seed: u64) -> usize {
    100 + (seed as usize * 7919) % 20_000
}

fn origin(seed: u64) -> String {
    format!("crash/{seed}")
}

/// Child side: a no-op unless the env var is set.
#[test]
fn child_enqueue_loop() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let round: u64 = std::env::var("PALISADE_QUEUE_CRASH_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // libtest printed "test child_enqueue_loop ... " without a newline.
    println!();
    rt.block_on(async move {
        let q = Queue::open(std::path::Path::new(&dir), opts()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut tasks = Vec::new();
        for t in 0..16u64 {
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let seed = round * 100_000_000 + t * 1_000_000 + i;
                    i += 1;
                    let mut m = msg(seed, &["a@x.example", "b@y.example"], body_len(seed));
                    m.origin = Some(origin(seed));
                    let e = q.enqueue(m).await.unwrap();
                    assert!(!e.duplicate);
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ENQ {} {seed}", e.id).unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn sigkill_mid_stream_loses_nothing_acknowledged() {
    let dir = tempdir("crash");
    let exe = std::env::current_exe().unwrap();
    let mut all: Vec<(QueueId, u64)> = Vec::new();
    let mut prev_max = QueueId(0);
    let mut rng = rand::thread_rng();
    for round in 1..=3u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "child_enqueue_loop",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &dir)
            .env("PALISADE_QUEUE_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let kill_after = rng.gen_range(100..1500);
        let pid = child.id() as libc::pid_t;
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut printed = Vec::new();
        let mut killed = false;
        while let Some(Ok(line)) = lines.next() {
            if let Some(rest) = line.strip_prefix("ENQ ") {
                let mut parts = rest.split(' ');
                let id: QueueId = parts.next().unwrap().parse().unwrap();
                let seed: u64 = parts.next().unwrap().parse().unwrap();
                printed.push((id, seed));
            }
            if !killed && printed.len() >= kill_after {
                // SAFETY: plain syscall on our own child's pid.
                assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
                killed = true;
            }
        }
        let status = child.wait().unwrap();
        assert!(killed, "child ended before being killed: {status:?}");
        assert!(!status.success());
        assert!(printed.len() >= kill_after);
        eprintln!(
            "round {round}: killed after {} acknowledged enqueues",
            printed.len()
        );

        let q = Queue::open(&dir, opts()).unwrap();
        for (id, seed) in &printed {
            assert!(
                *id > prev_max,
                "id {id} not above previous rounds' {prev_max}"
            );
            let env = q
                .envelope(*id)
                .unwrap()
                .unwrap_or_else(|| panic!("acknowledged message {id} lost"));
            assert_eq!(env.origin.as_deref(), Some(origin(*seed).as_str()));
            assert_eq!(env.size as usize, body_len(*seed));
            let ok = q
                .with_body(*id, |b| b == body(*seed, body_len(*seed)).as_slice())
                .unwrap();
            assert_eq!(ok, Some(true), "body of {id} damaged or missing");
        }
        // Origins committed with the messages: a re-send is a duplicate.
        let (id, seed) = printed[printed.len() / 2];
        let mut again = msg(seed, &["a@x.example"], 10);
        again.origin = Some(origin(seed));
        let e = q.enqueue(again).await_blocking();
        assert!(e.duplicate);
        assert_eq!(e.id, id);
        // Nothing corrupt, and no torn records.
        assert!(q.corrupt_records().unwrap().is_empty());
        assert_eq!(q.list().unwrap().len(), q.len());
        prev_max = q.list().unwrap().iter().map(|e| e.id).max().unwrap();
        all.extend(printed);
        drop(q);
    }
    let mut ids: Vec<QueueId> = all.iter().map(|(id, _)| *id).collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "duplicate ids");
}

/// Child side of the multi-process reader test.
#[test]
fn child_reader() {
    let Ok(dir) = std::env::var(READER_ENV) else {
        return;
    };
    let r = QueueReader::open(std::path::Path::new(&dir)).unwrap();
    let list = r.list().unwrap();
    let held = list.iter().filter(|e| e.held).count();
    let first = list[0].id;
    let len = r.with_body(first, |b| b.len()).unwrap().unwrap();
    println!(
        "\nLIST {} {} {} {}",
        r.len().unwrap(),
        list.len(),
        held,
        len
    );
}

#[test]
fn readonly_listing_from_second_process_while_running() {
    let dir = tempdir("reader");
    let q = Queue::open(&dir, opts()).unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            q.enqueue(msg(i, &["a@x.example"], 1234))
                .await_blocking()
                .id,
        );
    }
    assert!(tokio_block(q.hold(ids[2])).unwrap());
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_reader", "--nocapture", "--test-threads=1"])
        .env(READER_ENV, &dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("LIST "))
        .expect(&stdout);
    assert_eq!(line, "LIST 5 5 1 1234");
    // The running queue is unaffected and keeps working.
    let e = q.enqueue(msg(9, &["a@x.example"], 10)).await_blocking();
    assert!(e.id > ids[4]);
    assert_eq!(q.len(), 6);
}

fn tokio_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

trait AwaitBlocking {
    fn await_blocking(self) -> palisade_queue::Enqueued;
}

impl<F> AwaitBlocking for F
where
    F: std::future::Future<Output = Result<palisade_queue::Enqueued, palisade_queue::QueueError>>,
{
    fn await_blocking(self) -> palisade_queue::Enqueued {
        tokio_block(self).unwrap()
    }
}
