mod common;

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use common::{body, msg, tempdir};
use palisade_queue::{
    lmdb, NewMessage, Outcome, Queue, QueueError, QueueId, QueueOptions, RcptStatus,
};

fn opts() -> QueueOptions {
    QueueOptions {
        map_size: 256 << 20,
        ..Default::default()
    }
}

/// Options whose first retry is an hour away (a recorded message is not due again).
fn slow_retry() -> QueueOptions {
    QueueOptions {
        min_retry: Duration::from_secs(3600),
        ..opts()
    }
}

/// Enqueues `m` and takes it as the delivery task would (`next_due`).
async fn enqueue_and_take(q: &Queue, m: NewMessage) -> QueueId {
    let id = q.enqueue(m).await.unwrap().id;
    assert_eq!(q.next_due().await, id);
    id
}

#[tokio::test]
async fn enqueue_envelope_body_roundtrip() {
    let dir = tempdir("roundtrip");
    let q = Queue::open(&dir, opts()).unwrap();
    assert!(q.is_empty());
    let mut m = msg(1, &["a@example.net", "b@example.net"], 5000);
    m.origin = Some("mx-1/0A1B2C3D".into());
    let expected = m.clone();
    let before = SystemTime::now();
    let e = q.enqueue(m).await.unwrap();
    assert!(!e.duplicate);
    assert_eq!(q.len(), 1);

    let env = q.envelope(e.id).unwrap().expect("envelope");
    assert_eq!(env.id, e.id);
    assert_eq!(env.origin.as_deref(), Some("mx-1/0A1B2C3D"));
    assert_eq!(env.mail_from, "sender@example.org");
    assert_eq!(env.mail_params, "BODY=8BITMIME RET=HDRS");
    assert_eq!(env.client, expected.client);
    assert_eq!(env.rcpts.len(), 2);
    assert_eq!(env.rcpts[1].address, "b@example.net");
    assert_eq!(env.rcpts[1].params, "NOTIFY=FAILURE");
    assert_eq!(env.rcpts[0].status, RcptStatus::Pending);
    assert_eq!(env.rcpts[0].last_reply, None);
    assert_eq!(env.attempts, 0);
    assert!(!env.held);
    assert_eq!(env.size, 5000);
    assert!(env.arrived >= before - Duration::from_secs(1));
    assert!(env.arrived <= SystemTime::now());

    assert_eq!(q.body(e.id).unwrap().unwrap(), expected.body);
    assert_eq!(q.with_body(e.id, |b| b.len()).unwrap(), Some(5000));
    assert_eq!(q.envelope(QueueId(e.id.0 + 1)).unwrap(), None);
    assert_eq!(q.body(QueueId(e.id.0 + 1)).unwrap(), None);

    let list = q.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0], env);

    // Due immediately, handed out exactly once.
    assert_eq!(q.try_next_due(), Some(e.id));
    assert_eq!(q.try_next_due(), None);
}

#[tokio::test]
async fn ids_unique_and_increasing_across_reopen() {
    let dir = tempdir("ids");
    let mut ids = Vec::new();
    for round in 0..3 {
        let q = Queue::open(&dir, opts()).unwrap();
        assert_eq!(q.len(), round * 20);
        for i in 0..20 {
            ids.push(q.enqueue(msg(i, &["r@example.net"], 100)).await.unwrap().id);
        }
    }
    for w in ids.windows(2) {
        assert!(w[1] > w[0], "{} !> {}", w[1], w[0]);
    }
    for id in &ids {
        let s = id.to_string();
        assert_eq!(s.len(), 12);
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()));
        assert_eq!(s.parse::<QueueId>().unwrap(), *id);
    }
    // Upper 32 bits are the enqueue time in seconds.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!((ids[0].0 >> 16).abs_diff(now) < 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_batches_concurrent_enqueues() {
    let dir = tempdir("group");
    let q = Queue::open(&dir, opts()).unwrap();
    let start = tokio::sync::Barrier::new(200);
    let start = std::sync::Arc::new(start);
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let q = q.clone();
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            q.enqueue(msg(i, &["r@example.net"], 5 * 1024))
                .await
                .unwrap()
                .id
        }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        assert!(ids.insert(t.await.unwrap()));
    }
    let stats = q.stats();
    assert_eq!(stats.enqueued, 200);
    assert_eq!(q.len(), 200);
    eprintln!("200 concurrent enqueues -> {} commits", stats.commits);
    assert!(
        stats.commits <= 50,
        "expected group commit, got {} commits",
        stats.commits
    );
    for id in ids {
        assert_eq!(q.with_body(id, |b| b.len()).unwrap(), Some(5 * 1024));
    }
}

#[tokio::test]
async fn per_recipient_state_survives_reopen() {
    let dir = tempdir("rcpt");
    let o = slow_retry();
    let id = {
        let q = Queue::open(&dir, o.clone()).unwrap();
        let id = enqueue_and_take(&q, msg(7, &["a@x.example", "b@y.example"], 1000)).await;
        let before = SystemTime::now();
        let r = q
            .record(
                id,
                vec![
                    (0, Outcome::Delivered("250 2.0.0 ok A".into())),
                    (1, Outcome::Deferred("451 4.7.1 greylisted".into())),
                ],
            )
            .await
            .unwrap();
        assert!(!r.finished);
        assert!(r.failed_now.is_empty());
        let next = r.next_attempt.expect("next attempt");
        assert!(next >= before + Duration::from_secs(3600));
        // Deferred: not due again now.
        assert_eq!(q.try_next_due(), None);
        assert_eq!(q.len(), 1);
        // Stored with µs precision.
        let env = q.envelope(id).unwrap().unwrap();
        assert!(next.duration_since(env.next_attempt).unwrap() < Duration::from_micros(1));
        id
    };
    let q = Queue::open(&dir, o).unwrap();
    let env = q.envelope(id).unwrap().unwrap();
    assert_eq!(
        env.rcpts[0].status,
        RcptStatus::Delivered {
            reply: "250 2.0.0 ok A".into()
        }
    );
    assert_eq!(env.rcpts[1].status, RcptStatus::Pending);
    assert_eq!(
        env.rcpts[1].last_reply.as_deref(),
        Some("451 4.7.1 greylisted")
    );
    assert_eq!(env.attempts, 1);
    assert!(env.next_attempt > SystemTime::now() + Duration::from_secs(3000));
    // After a restart everything not held is due immediately.
    assert_eq!(q.try_next_due(), Some(id));
    // A stale result for the delivered recipient cannot downgrade it.
    let r = q
        .record(
            id,
            vec![
                (0, Outcome::Failed("550 stale".into())),
                (1, Outcome::Delivered("250 ok B".into())),
                (9, Outcome::Delivered("out of range".into())),
            ],
        )
        .await
        .unwrap();
    assert!(r.finished);
    assert!(r.failed_now.is_empty(), "{:?}", r.failed_now);
    assert_eq!(r.next_attempt, None);
    assert_eq!(q.envelope(id).unwrap(), None);
    assert_eq!(q.body(id).unwrap(), None);
    assert_eq!(q.len(), 0);
    assert!(matches!(
        q.record(id, vec![]).await,
        Err(QueueError::NotFound)
    ));
}

#[tokio::test]
async fn backoff_grows_and_timer_wakes_next_due() {
    let dir = tempdir("backoff");
    let q = Queue::open(
        &dir,
        QueueOptions {
            min_retry: Duration::from_millis(40),
            max_retry: Duration::from_secs(60),
            ..opts()
        },
    )
    .unwrap();
    let id = q.enqueue(msg(1, &["a@x.example"], 100)).await.unwrap().id;
    let mut delays = Vec::new();
    for attempt in 1..=4u32 {
        let got = tokio::time::timeout(Duration::from_secs(5), q.next_due())
            .await
            .unwrap();
        assert_eq!(got, id);
        let now = SystemTime::now();
        let r = q
            .record(id, vec![(0, Outcome::Deferred("421 busy".into()))])
            .await
            .unwrap();
        assert!(!r.finished);
        let d = r.next_attempt.unwrap().duration_since(now).unwrap();
        let base = Duration::from_millis(40) * (1 << (attempt - 1));
        assert!(
            d >= base && d <= base * 13 / 10 + Duration::from_millis(5),
            "attempt {attempt}: {d:?}"
        );
        delays.push(d);
        // Not due before its time.
        assert_eq!(q.try_next_due(), None);
        assert_eq!(q.envelope(id).unwrap().unwrap().attempts, attempt);
    }
    for w in delays.windows(2) {
        assert!(w[1] > w[0], "{delays:?}");
    }
    // flush makes it due at once.
    q.flush();
    assert_eq!(q.try_next_due(), Some(id));
    // release_active: due again after min_retry, via the timer.
    q.release_active(id);
    assert_eq!(q.try_next_due(), None);
    let got = tokio::time::timeout(Duration::from_secs(5), q.next_due())
        .await
        .unwrap();
    assert_eq!(got, id);
}

#[tokio::test]
async fn max_age_fails_remaining_recipients() {
    let dir = tempdir("maxage");
    let q = Queue::open(
        &dir,
        QueueOptions {
            min_retry: Duration::from_millis(10),
            max_age: Duration::from_millis(300),
            ..opts()
        },
    )
    .unwrap();
    let id = q
        .enqueue(msg(1, &["a@x.example", "b@y.example", "c@z.example"], 100))
        .await
        .unwrap()
        .id;
    assert_eq!(q.next_due().await, id);
    let r = q
        .record(
            id,
            vec![
                (0, Outcome::Deferred("451 try later".into())),
                (2, Outcome::Failed("550 no such user".into())),
            ],
        )
        .await
        .unwrap();
    assert!(!r.finished);
    assert_eq!(
        r.failed_now,
        vec![("c@z.example".to_string(), "550 no such user".to_string())]
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(q.next_due().await, id);
    // Only rcpt 0 attempted; rcpt 1 (never attempted) also expires.
    let r = q
        .record(id, vec![(0, Outcome::Deferred("451 still later".into()))])
        .await
        .unwrap();
    assert!(r.finished);
    assert_eq!(r.failed_now.len(), 2, "{:?}", r.failed_now);
    assert_eq!(r.failed_now[0].0, "a@x.example");
    assert!(
        r.failed_now[0].1.contains("451 still later"),
        "{}",
        r.failed_now[0].1
    );
    assert_eq!(r.failed_now[1].0, "b@y.example");
    assert_eq!(q.len(), 0);
    assert_eq!(q.envelope(id).unwrap(), None);
}

#[tokio::test]
async fn origin_dedup() {
    let dir = tempdir("dedup");
    let o = QueueOptions {
        origin_ttl: Duration::from_millis(500),
        ..opts()
    };
    let q = Queue::open(&dir, o.clone()).unwrap();
    let with_origin = |seed, origin: &str| {
        let mut m = msg(seed, &["a@x.example"], 200);
        m.origin = Some(origin.to_string());
        m
    };
    let a = q.enqueue(with_origin(1, "mx-1/0A1B2C3D")).await.unwrap();
    assert!(!a.duplicate);
    let b = q.enqueue(with_origin(2, "mx-1/0A1B2C3D")).await.unwrap();
    assert!(b.duplicate);
    assert_eq!(b.id, a.id);
    assert_eq!(q.len(), 1);
    // Nothing new stored: the body is the first one.
    assert_eq!(q.body(a.id).unwrap().unwrap(), body(1, 200));
    let c = q.enqueue(with_origin(3, "mx-2/0A1B2C3D")).await.unwrap();
    assert!(!c.duplicate);
    assert_ne!(c.id, a.id);
    // Still a duplicate after the first copy was delivered (deleted) and
    // after a restart.
    assert!(q.delete(a.id).await.unwrap());
    drop(q);
    let q = Queue::open(&dir, o).unwrap();
    let d = q.enqueue(with_origin(4, "mx-1/0A1B2C3D")).await.unwrap();
    assert_eq!((d.id, d.duplicate), (a.id, true));
    // Concurrent duplicates in one batch: exactly one stored.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let q = q.clone();
        let m = with_origin(100 + i, "mx-3/SAME");
        tasks.push(tokio::spawn(async move { q.enqueue(m).await.unwrap() }));
    }
    let mut res = Vec::new();
    for t in tasks {
        res.push(t.await.unwrap());
    }
    assert_eq!(res.iter().filter(|e| !e.duplicate).count(), 1);
    assert!(res.iter().all(|e| e.id == res[0].id));
    // Long origins work (LMDB keys are limited to 511 bytes).
    let long = "x".repeat(2000);
    let e1 = q.enqueue(with_origin(5, &long)).await.unwrap();
    let e2 = q.enqueue(with_origin(6, &long)).await.unwrap();
    assert!(!e1.duplicate && e2.duplicate && e1.id == e2.id);
    let mut other = long.clone();
    other.push('y');
    assert!(!q.enqueue(with_origin(7, &other)).await.unwrap().duplicate);
    // After origin_ttl the origin is forgotten (and pruned lazily).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let e = q.enqueue(with_origin(8, "mx-1/0A1B2C3D")).await.unwrap();
    assert!(!e.duplicate);
    assert!(e.id > a.id);
    // This instance: d, 19 of the concurrent ones, e2.
    assert_eq!(q.stats().duplicates, 1 + 19 + 1);
    // Expired origins were pruned (the re-used one is kept with its new id).
    drop(q);
    let env = lmdb::Environment::new().set_max_dbs(16).open(&dir).unwrap();
    let count = |name: &str| {
        use lmdb::{Cursor, Transaction};
        let db = env.open_db(Some(name)).unwrap();
        let txn = env.begin_ro_txn().unwrap();
        let mut cur = txn.open_ro_cursor(db).unwrap();
        cur.iter_start().count()
    };
    assert_eq!(count("origin"), 1);
    assert_eq!(count("origin_time"), 1);
}

#[tokio::test]
async fn hold_release_delete() {
    let dir = tempdir("hold");
    let (a, b) = {
        let q = Queue::open(&dir, opts()).unwrap();
        let a = q.enqueue(msg(1, &["a@x.example"], 100)).await.unwrap().id;
        let b = q.enqueue(msg(2, &["a@x.example"], 100)).await.unwrap().id;
        assert!(q.hold(a).await.unwrap());
        assert!(!q.hold(QueueId(1)).await.unwrap());
        assert!(q.envelope(a).unwrap().unwrap().held);
        assert_eq!(q.try_next_due(), Some(b));
        assert_eq!(q.try_next_due(), None);
        assert_eq!(q.len(), 2);
        (a, b)
    };
    let q = Queue::open(&dir, opts()).unwrap();
    // Held stays held across restart; b is due again after restart.
    assert_eq!(q.try_next_due(), Some(b));
    assert_eq!(q.try_next_due(), None);
    let list = q.list().unwrap();
    assert_eq!(
        list.iter().map(|e| (e.id, e.held)).collect::<Vec<_>>(),
        vec![(a, true), (b, false)]
    );
    assert!(q.release(a).await.unwrap());
    assert!(!q.envelope(a).unwrap().unwrap().held);
    assert_eq!(q.try_next_due(), Some(a));
    assert!(q.delete(a).await.unwrap());
    assert!(!q.delete(a).await.unwrap());
    assert_eq!(q.body(a).unwrap(), None);
    assert_eq!(q.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_due_wakes_on_enqueue() {
    let dir = tempdir("wake");
    let q = Queue::open(&dir, opts()).unwrap();
    let mut workers = Vec::new();
    for _ in 0..4 {
        let q = q.clone();
        workers.push(tokio::spawn(async move { q.next_due().await }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut ids = HashSet::new();
    for i in 0..4 {
        ids.insert(q.enqueue(msg(i, &["a@x.example"], 10)).await.unwrap().id);
    }
    let mut got = HashSet::new();
    for w in workers {
        got.insert(
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(got, ids);
}

#[tokio::test]
async fn map_full_is_queue_error_full() {
    let dir = tempdir("full");
    let q = Queue::open(
        &dir,
        QueueOptions {
            map_size: 1 << 20,
            ..opts()
        },
    )
    .unwrap();
    let mut stored = Vec::new();
    let err = loop {
        let mut m = msg(stored.len() as u64, &["a@x.example"], 150 * 1024);
        m.body.resize(150 * 1024, b'x');
        match q.enqueue(m).await {
            Ok(e) => stored.push(e.id),
            Err(e) => break e,
        }
        assert!(stored.len() < 20, "map never filled");
    };
    assert!(matches!(err, QueueError::Full), "{err:?}");
    assert!(err.is_temporary());
    assert!(!stored.is_empty());
    // Everything stored before is intact; small messages still fit.
    for id in &stored {
        assert_eq!(q.with_body(*id, |b| b.len()).unwrap(), Some(150 * 1024));
    }
    assert!(q.enqueue(msg(99, &["a@x.example"], 100)).await.is_ok());
    assert!(q.delete(stored[0]).await.unwrap());
}

#[tokio::test]
async fn corrupt_records_move_to_corrupt() {
    let dir = tempdir("corrupt");
    let (good, bad, future) = {
        let q = Queue::open(&dir, opts()).unwrap();
        let good = q.enqueue(msg(1, &["a@x.example"], 100)).await.unwrap().id;
        let bad = q.enqueue(msg(2, &["a@x.example"], 100)).await.unwrap().id;
        let future = q.enqueue(msg(3, &["a@x.example"], 100)).await.unwrap().id;
        (good, bad, future)
    };
    // Damage two records behind the queue's back.
    {
        let env = lmdb::Environment::new().set_max_dbs(16).open(&dir).unwrap();
        let db = env.open_db(Some("incoming")).unwrap();
        let mut t = env.begin_rw_txn().unwrap();
        t.put(
            db,
            &bad.0.to_be_bytes(),
            &[1u8, 0xff, 0xff, 0xff],
            lmdb::WriteFlags::empty(),
        )
        .unwrap();
        // Schema 99 (postcard varint 99 = 0x63) followed by plausible bytes.
        t.put(
            db,
            &future.0.to_be_bytes(),
            &[0x63u8, 0, 0, 0],
            lmdb::WriteFlags::empty(),
        )
        .unwrap();
        lmdb::Transaction::commit(t).unwrap();
    }
    let q = Queue::open(&dir, opts()).unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q.try_next_due(), Some(good));
    assert_eq!(q.envelope(bad).unwrap(), None);
    assert_eq!(q.body(bad).unwrap(), None);
    assert_eq!(q.list().unwrap().len(), 1);
    let corrupt = q.corrupt_records().unwrap();
    let keys: Vec<&str> = corrupt.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        keys.contains(&format!("incoming/{bad}").as_str()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&format!("incoming/{future}").as_str()),
        "{keys:?}"
    );
    assert!(keys.contains(&format!("body/{bad}").as_str()), "{keys:?}");
    let raw = &corrupt
        .iter()
        .find(|(k, _)| *k == format!("incoming/{bad}"))
        .unwrap()
        .1;
    assert_eq!(raw, &vec![1u8, 0xff, 0xff, 0xff]);
    let b = &corrupt
        .iter()
        .find(|(k, _)| *k == format!("body/{bad}"))
        .unwrap()
        .1;
    assert_eq!(b, &body(2, 100));
    // New ids stay above the quarantined ones.
    let next = q.enqueue(msg(4, &["a@x.example"], 10)).await.unwrap().id;
    assert!(next > future);
}

#[tokio::test]
async fn empty_recipient_list_finishes_on_record() {
    let dir = tempdir("empty");
    let q = Queue::open(&dir, opts()).unwrap();
    let id = q
        .enqueue(NewMessage {
            body: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .id;
    assert_eq!(q.try_next_due(), Some(id));
    assert!(q.record(id, vec![]).await.unwrap().finished);
    assert!(q.is_empty());
}

#[tokio::test]
async fn reopen_in_same_process_is_refused_while_open() {
    let dir = tempdir("twice");
    let q = Queue::open(&dir, opts()).unwrap();
    assert!(matches!(Queue::open(&dir, opts()), Err(QueueError::Io(_))));
    drop(q);
    Queue::open(&dir, opts()).unwrap();
}

/// `cargo test -p palisade-queue --release -- --ignored --nocapture bench`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_enqueue_5k_50_callers() {
    let dir = tempdir("bench");
    let q = Queue::open(&dir, opts()).unwrap();
    let per = 200;
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for c in 0..50u64 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                q.enqueue(msg(c * 1000 + i, &["a@x.example"], 5 * 1024))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let el = start.elapsed();
    let n = 50 * per;
    let s = q.stats();
    eprintln!(
        "{n} enqueues of 5 KiB in {el:?}: {:.0}/s, {} commits ({:.1} per commit)",
        n as f64 / el.as_secs_f64(),
        s.commits,
        n as f64 / s.commits as f64
    );
    // Drain: next_due + record delivered.
    let start = std::time::Instant::now();
    let mut workers = Vec::new();
    for _ in 0..50 {
        let q = q.clone();
        workers.push(tokio::spawn(async move {
            while let Some(id) = q.try_next_due() {
                let _ = q.with_body(id, |b| b.len()).unwrap();
                q.record(id, vec![(0, Outcome::Delivered("250 ok".into()))])
                    .await
                    .unwrap();
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    eprintln!("drained {n} in {:?}", start.elapsed());
    assert!(q.is_empty());
}

#[tokio::test]
async fn settle_marks_delivered_mid_attempt_and_survives_reopen() {
    let dir = tempdir("settle");
    let o = slow_retry();
    let id = {
        let q = Queue::open(&dir, o.clone()).unwrap();
        let id = enqueue_and_take(&q, msg(8, &["a@fast.example", "b@slow.example"], 100)).await;
        // The fast destination answered 250; the slow one is still sending.
        let n = q
            .settle(id, vec![(0, "250 2.0.0 fast".into())])
            .await
            .unwrap();
        assert_eq!(n, 1);
        // Settling again (or out of range) changes nothing.
        let n = q
            .settle(id, vec![(0, "250 again".into()), (7, "x".into())])
            .await
            .unwrap();
        assert_eq!(n, 0);
        let env = q.envelope(id).unwrap().unwrap();
        assert_eq!(env.attempts, 0, "settle does not end the attempt");
        // Still active: not handed out a second time.
        assert_eq!(q.try_next_due(), None);
        id
        // Dropped here without `record`: the crash case.
    };
    let q = Queue::open(&dir, o).unwrap();
    let env = q.envelope(id).unwrap().unwrap();
    assert_eq!(
        env.rcpts[0].status,
        RcptStatus::Delivered {
            reply: "250 2.0.0 fast".into()
        }
    );
    assert_eq!(env.rcpts[1].status, RcptStatus::Pending);
    assert_eq!(q.try_next_due(), Some(id));
    let r = q
        .record(id, vec![(1, Outcome::Delivered("250 slow".into()))])
        .await
        .unwrap();
    assert!(r.finished);
    assert!(matches!(
        q.settle(id, vec![(0, "250".into())]).await,
        Err(QueueError::NotFound)
    ));
}

/// What the two delivery engines (forwarder, outgoing deliverer) start
/// from: the message loaded, its pending recipients grouped by route, the
/// origin token; a message deleted while due is released, not delivered.
#[tokio::test]
async fn load_due_groups_pending_recipients_and_releases_a_deleted_message() {
    let dir = tempdir("load-due");
    let q = Queue::open(&dir, slow_retry()).unwrap();
    let rcpts = [
        "a@one.example",
        "b@two.example",
        "c@one.example",
        "d@two.example",
    ];
    let id = enqueue_and_take(&q, msg(1, &rcpts, 100)).await;
    let (env, b) = q.load_due(id).expect("loaded");
    assert_eq!(b, q.body(id).unwrap().unwrap());
    assert_eq!(env.origin_or_here("mx-1"), format!("mx-1/{id}"));
    let domain = |a: &str| a.rsplit('@').next().unwrap().to_string();
    assert_eq!(
        env.pending_by(domain),
        vec![
            ("one.example".into(), vec![0, 2]),
            ("two.example".into(), vec![1, 3])
        ]
    );
    // Once b@ is delivered only d@ is left for two.example.
    q.record(id, vec![(1, Outcome::Delivered("250 ok".into()))])
        .await
        .unwrap();
    let (env, _) = q.load_due(id).expect("still queued");
    assert_eq!(
        env.pending_by(domain),
        vec![
            ("one.example".into(), vec![0, 2]),
            ("two.example".into(), vec![3])
        ]
    );

    let gone = enqueue_and_take(&q, msg(2, &["x@one.example"], 100)).await;
    assert!(q.contains(gone));
    assert!(q.delete(gone).await.unwrap());
    assert!(!q.contains(gone) && q.contains(id));
    assert!(q.load_due(gone).is_none());
}
