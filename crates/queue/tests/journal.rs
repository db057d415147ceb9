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
