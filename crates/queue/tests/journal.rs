//! The conservation journal rides the queue's transactions
//! (src/journal.rs): accepted with the enqueue, forwarded/failed with the
//! recorded results, deleted with the admin delete; kept across reopen.

mod common;

use std::time::{Duration, SystemTime};

use common::{msg, tempdir};
use palisade_queue::{JournalEntry, JournalEvent, Outcome, Queue, QueueOptions};

fn with_message_id(mut m: palisade_queue::NewMessage, mid: &str) -> palisade_queue::NewMessage {
    let mut body = format!("Message-ID: <{mid}>\r\n").into_bytes();
    body.extend_from_slice(&m.body);
    m.body = body;
    m
}

fn events(entries: &[JournalEntry]) -> Vec<(JournalEvent, Vec<String>)> {
    entries.iter().map(|e| (e.event, e.rcpts.clone())).collect()
}

#[tokio::test]
async fn journal_follows_the_queue_operations_and_survives_reopen() {
    let dir = tempdir("journal");
    let start = SystemTime::now();
    {
        let q = Queue::open(&dir, QueueOptions::default()).unwrap();
        let mut m = with_message_id(msg(1, &["a@x.test", "b@x.test"], 200), "one@test");
        m.origin = Some("mx-1/00000000000A".into());
        let id = q.enqueue(m).await.unwrap().id;
        assert_eq!(q.next_due().await, id);
        q.record(
            id,
            vec![
                (
                    0,
                    Outcome::Delivered("relay=av[127.0.0.1:1] 250 Ok: queued as AB".into()),
                ),
                (1, Outcome::Failed("550 5.1.1 no".into())),
            ],
        )
        .await
        .unwrap();
        let other = q
            .enqueue(with_message_id(msg(2, &["c@x.test"], 100), "two@test"))
            .await
            .unwrap()
            .id;
        assert!(q.delete(other).await.unwrap());
        q.journal(vec![JournalEntry::new(JournalEvent::Quarantined, "Q9")])
            .await
            .unwrap();

        let j = q.journal_for_message("<one@test>").unwrap();
        assert_eq!(
            events(&j),
            vec![
                (
                    JournalEvent::Accepted,
                    vec!["a@x.test".into(), "b@x.test".into()]
                ),
                (JournalEvent::Forwarded, vec!["a@x.test".into()]),
                (JournalEvent::Failed, vec!["b@x.test".into()]),
            ]
        );
        assert!(j.iter().all(|e| e.id == id.to_string()));
        assert_eq!(j[0].message_id.as_deref(), Some("one@test"));
        assert_eq!(j[0].origin.as_deref(), Some("mx-1/00000000000A"));
        assert!(j[1].detail.ends_with("queued as AB"));
        assert!(!q.contains(id), "finished message left the queue");
        let two = q.journal_for_message("two@test").unwrap();
        assert_eq!(
            events(&two).into_iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![JournalEvent::Accepted, JournalEvent::Deleted]
        );
    }
    let q = Queue::open(&dir, QueueOptions::default()).unwrap();
    let all = q.journal_since(start, 100).unwrap();
    assert_eq!(all.len(), 6, "{all:?}");
    assert!(all.windows(2).all(|w| w[0].time_us < w[1].time_us));
    assert_eq!(all[5].event, JournalEvent::Quarantined);
    let later = q
        .journal_since(SystemTime::now() + Duration::from_secs(60), 100)
        .unwrap();
    assert!(later.is_empty());
    // Appending after reopen continues the sequence.
    q.journal(vec![JournalEntry::new(JournalEvent::Deleted, "Z")])
        .await
        .unwrap();
    let again = q.journal_since(start, 100).unwrap();
    assert!(again[6].time_us > again[5].time_us);
}

#[tokio::test]
async fn journal_off_writes_nothing() {
    let dir = tempdir("journal-off");
    let q = Queue::open(
        &dir,
        QueueOptions {
            journal_ttl: None,
            ..QueueOptions::default()
        },
    )
    .unwrap();
    q.enqueue(with_message_id(msg(1, &["a@x.test"], 100), "m@t"))
        .await
        .unwrap();
    assert!(q.journal_for_message("m@t").unwrap().is_empty());
}

/// The journal's cost on the enqueue path (docs/probe.md, "Cost"): the
/// same concurrent enqueue load with the journal on and off, interleaved
/// rounds; prints medians, asserts nothing about speed. Run with
/// `cargo test --release -p palisade-queue --test journal -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn journal_cost_on_enqueue() {
    const N: usize = 2000;
    const SESSIONS: usize = 50;
    let mut on = Vec::new();
    let mut off = Vec::new();
    for round in 0..3 {
        for journal in [true, false] {
            let dir = tempdir(&format!("journal-cost-{journal}-{round}"));
            let opts = QueueOptions {
                journal_ttl: journal.then_some(Duration::from_secs(86400)),
                ..QueueOptions::default()
            };
            let q = Queue::open(&dir, opts).unwrap();
            let t = std::time::Instant::now();
            let mut tasks = Vec::new();
            for s in 0..SESSIONS {
                let q = q.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0..N / SESSIONS {
                        let seed = (s * N + i) as u64;
                        let m =
                            with_message_id(msg(seed, &["a@x.test"], 5000), &format!("{seed}@t"));
                        q.enqueue(m).await.unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let rate = N as f64 / t.elapsed().as_secs_f64();
            if journal {
                on.push(rate)
            } else {
                off.push(rate)
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (on, off) = (median(&mut on), median(&mut off));
    println!(
        "enqueue, {SESSIONS} concurrent, 5 KB: journal on {on:.0} msg/s, off {off:.0} msg/s, ratio {:.3}",
        on / off
    );
}
