mod common;

use std::time::{Duration, SystemTime};

use common::TempDir;
use palisade_mailbox::{Delivery, FlagsOp, MailStore, MailboxError, DEFAULT_FOLDERS, INBOX};

fn msg(n: usize) -> Vec<u8> {
    format!("Subject: test {n}\r\nFrom: a@b.test\r\n\r\nbody {n}\r\n.leading dot\r\n").into_bytes()
}

fn stored(d: Delivery) -> u32 {
    match d {
        Delivery::Stored { uid } => uid,
        other => panic!("expected Stored, got {other:?}"),
    }
}

#[test]
fn deliver_list_fetch_delete() {
    let tmp = TempDir::new("store");
    let s = MailStore::open(tmp.path()).unwrap();
    assert!(s.folders("u@example.test").unwrap().is_empty());
    assert!(s.list("u@example.test", INBOX).unwrap().is_empty());

    let before = SystemTime::now() - Duration::from_secs(1);
    let u1 = stored(
        s.deliver("U@Example.test", "INBOX", None, &msg(1), 0)
            .unwrap(),
    );
    let u2 = stored(
        s.deliver("u@example.test", "inbox", None, &msg(2), 0)
            .unwrap(),
    );
    let u3 = stored(
        s.deliver("u@example.test", INBOX, None, &msg(3), 0)
            .unwrap(),
    );
    assert!(u1 < u2 && u2 < u3, "{u1} {u2} {u3}");
    assert_eq!(u1, 1);

    // First delivery created the default folders, INBOX first.
    let folders = s.folders("u@example.test").unwrap();
    assert_eq!(folders[0], INBOX);
    for f in DEFAULT_FOLDERS {
        assert!(folders.iter().any(|x| x == f), "missing {f} in {folders:?}");
    }
    // Delivery to another folder creates it with its own UID sequence.
    let j = stored(
        s.deliver("u@example.test", "Spam-Review", None, &msg(4), 0)
            .unwrap(),
    );
    assert_eq!(j, 1);
    assert!(s
        .folders("u@example.test")
        .unwrap()
        .contains(&"Spam-Review".to_string()));

    let list = s.list("u@example.test", INBOX).unwrap();
    assert_eq!(
        list.iter().map(|m| m.uid).collect::<Vec<_>>(),
        vec![u1, u2, u3]
    );
    assert_eq!(list[1].size, msg(2).len() as u64);
    assert!(list[0].flags.is_empty());
    assert!(list[0].internal_date >= before && list[0].internal_date <= SystemTime::now());

    assert_eq!(
        s.fetch("u@example.test", INBOX, u2).unwrap().unwrap(),
        msg(2)
    );
    assert_eq!(s.fetch("u@example.test", INBOX, 99).unwrap(), None);
    assert_eq!(s.fetch("other@example.test", INBOX, u2).unwrap(), None);

    let total: u64 = (1..=4).map(|n| msg(n).len() as u64).sum();
    assert_eq!(s.usage("u@example.test").unwrap(), total);

    // Delete frees quota; unknown UIDs ignored.
    assert_eq!(s.delete("u@example.test", INBOX, &[u2, 77]).unwrap(), 1);
    assert_eq!(s.delete("u@example.test", INBOX, &[u2]).unwrap(), 0);
    assert_eq!(
        s.usage("u@example.test").unwrap(),
        total - msg(2).len() as u64
    );
    assert_eq!(s.fetch("u@example.test", INBOX, u2).unwrap(), None);
    assert_eq!(
        s.list("u@example.test", INBOX)
            .unwrap()
            .iter()
            .map(|m| m.uid)
            .collect::<Vec<_>>(),
        vec![u1, u3]
    );
    // UIDs are never reused after a delete.
    let u4 = stored(
        s.deliver("u@example.test", INBOX, None, &msg(5), 0)
            .unwrap(),
    );
    assert!(u4 > u3);
    // UIDVALIDITY differs between folders and stays put.
    let inbox = s.folder_info("u@example.test", INBOX).unwrap().unwrap();
    let junk = s.folder_info("u@example.test", "Junk").unwrap().unwrap();
    assert_ne!(inbox.uidvalidity, junk.uidvalidity);
    assert_eq!(inbox.uidnext, u4 + 1);
    assert_eq!(inbox.messages, 3);
    assert!(s.folder_info("u@example.test", "Nope").unwrap().is_none());

    // Invalid input.
    assert!(matches!(
        s.deliver("u@example.test", "", None, b"x", 0),
        Err(MailboxError::InvalidInput(_))
    ));
}

#[test]
fn flags_copy_append_folders() {
    let tmp = TempDir::new("flags");
    let s = MailStore::open(tmp.path()).unwrap();
    let u = "f@example.test";
    let a = stored(s.deliver(u, INBOX, None, &msg(1), 0).unwrap());
    let b = stored(s.deliver(u, INBOX, None, &msg(2), 0).unwrap());
    assert_eq!(
        s.set_flags(u, INBOX, &[a, b, 99], FlagsOp::Add, &["\\Seen"])
            .unwrap(),
        2
    );
    assert_eq!(
        s.set_flags(u, INBOX, &[a], FlagsOp::Add, &["\\seen", "$Label1"])
            .unwrap(),
        1
    );
    let l = s.list(u, INBOX).unwrap();
    assert_eq!(
        l[0].flags,
        vec!["\\Seen".to_string(), "$Label1".to_string()]
    );
    assert_eq!(l[1].flags, vec!["\\Seen".to_string()]);
    s.set_flags(u, INBOX, &[a], FlagsOp::Remove, &["\\SEEN"])
        .unwrap();
    assert_eq!(
        s.list(u, INBOX).unwrap()[0].flags,
        vec!["$Label1".to_string()]
    );
    s.set_flags(u, INBOX, &[a], FlagsOp::Replace, &["\\Flagged"])
        .unwrap();
    assert_eq!(
        s.list(u, INBOX).unwrap()[0].flags,
        vec!["\\Flagged".to_string()]
    );

    let map = s.copy(u, INBOX, &[a, b], "Archive", 0).unwrap().unwrap();
    assert_eq!(map, vec![(a, 1), (b, 2)]);
    assert_eq!(s.fetch(u, "Archive", 2).unwrap().unwrap(), msg(2));
    assert_eq!(
        s.list(u, "Archive").unwrap()[0].flags,
        vec!["\\Flagged".to_string()]
    );
    let used = s.usage(u).unwrap();
    assert_eq!(used, 2 * (msg(1).len() + msg(2).len()) as u64);
    // Copy over quota copies nothing.
    assert_eq!(s.copy(u, INBOX, &[a], "Archive", used + 1).unwrap(), None);
    assert_eq!(s.usage(u).unwrap(), used);

    let sent = b"Subject: s\r\n\r\nx\r\n";
    let d = stored(s.append(u, "Sent", sent, &["\\Seen"], None, 0).unwrap());
    assert_eq!(s.list(u, "Sent").unwrap()[0].uid, d);
    assert!(!s.create_folder(u, "Archive").unwrap());
    assert!(s.create_folder(u, "Projects").unwrap());
    assert!(s.delete_folder(u, "Archive").unwrap());
    assert!(!s.delete_folder(u, "Archive").unwrap());
    assert!(s.delete_folder(u, INBOX).is_err());
    assert_eq!(s.usage(u).unwrap(), used / 2 + sent.len() as u64);
    assert!(!s.folders(u).unwrap().contains(&"Archive".to_string()));
}

#[test]
fn dedup_returns_duplicate_and_stores_nothing() {
    let tmp = TempDir::new("dedup");
    let s = MailStore::open(tmp.path()).unwrap();
    let u = "d@example.test";
    let key = "origin-token-1/d@example.test";
    stored(s.deliver(u, INBOX, Some(key), &msg(1), 0).unwrap());
    let usage = s.usage(u).unwrap();
    assert_eq!(
        s.deliver(u, INBOX, Some(key), &msg(1), 0).unwrap(),
        Delivery::Duplicate
    );
    assert_eq!(
        s.deliver(u, "Junk", Some(key), &msg(1), 0).unwrap(),
        Delivery::Duplicate
    );
    assert_eq!(s.list(u, INBOX).unwrap().len(), 1);
    assert_eq!(s.usage(u).unwrap(), usage);
    // Still a duplicate after the message was deleted (a retried upstream must not re-deliver).
    s.delete(u, INBOX, &[1]).unwrap();
    assert_eq!(
        s.deliver(u, INBOX, Some(key), &msg(1), 0).unwrap(),
        Delivery::Duplicate
    );
    // Other keys are delivered.
    stored(
        s.deliver(u, INBOX, Some("origin-token-2/d@example.test"), &msg(1), 0)
            .unwrap(),
    );
    // Pruning with a long horizon keeps them; with zero it forgets them.
    assert_eq!(s.prune_dedup(Duration::from_secs(3600)).unwrap(), 0);
    assert_eq!(
        s.deliver(u, INBOX, Some(key), &msg(1), 0).unwrap(),
        Delivery::Duplicate
    );
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(s.prune_dedup(Duration::ZERO).unwrap(), 2);
    stored(s.deliver(u, INBOX, Some(key), &msg(1), 0).unwrap());
    assert!(matches!(
        s.deliver(u, INBOX, Some(&"k".repeat(1000)), &msg(1), 0),
        Err(MailboxError::InvalidInput(_))
    ));
}

#[test]
fn quota_over_quota_and_usage() {
    let tmp = TempDir::new("quota");
    let s = MailStore::open(tmp.path()).unwrap();
    let u = "q@example.test";
    let m = vec![b'x'; 400];
    stored(s.deliver(u, INBOX, None, &m, 1000).unwrap());
    stored(s.deliver(u, INBOX, None, &m, 1000).unwrap());
    assert_eq!(s.usage(u).unwrap(), 800);
    // 800 + 400 > 1000.
    assert_eq!(
        s.deliver(u, INBOX, Some("k1"), &m, 1000).unwrap(),
        Delivery::OverQuota
    );
    assert_eq!(s.usage(u).unwrap(), 800);
    assert_eq!(s.list(u, INBOX).unwrap().len(), 2);
    // The refused delivery did not record its dedup key: a retry after freeing space works.
    // Exactly at quota is allowed.
    stored(s.deliver(u, INBOX, None, &[b'y'; 200], 1000).unwrap());
    assert_eq!(s.usage(u).unwrap(), 1000);
    assert_eq!(
        s.deliver(u, INBOX, None, b"z", 1000).unwrap(),
        Delivery::OverQuota
    );
    s.delete(u, INBOX, &[1]).unwrap();
    assert_eq!(s.usage(u).unwrap(), 600);
    stored(s.deliver(u, INBOX, Some("k1"), &m, 1000).unwrap());
    assert_eq!(s.usage(u).unwrap(), 1000);
    // 0 = unlimited.
    stored(s.deliver(u, INBOX, None, &vec![b'x'; 100_000], 0).unwrap());
    // Quota is per user.
    stored(
        s.deliver("other@example.test", INBOX, None, &m, 1000)
            .unwrap(),
    );
}

#[test]
fn reopen_keeps_everything() {
    let tmp = TempDir::new("reopen");
    let (uidvalidity, uids) = {
        let s = MailStore::open(tmp.path()).unwrap();
        for n in 0..5 {
            s.deliver("r@example.test", INBOX, Some(&format!("k{n}")), &msg(n), 0)
                .unwrap();
        }
        s.set_flags("r@example.test", INBOX, &[2], FlagsOp::Add, &["\\Seen"])
            .unwrap();
        s.delete("r@example.test", INBOX, &[3]).unwrap();
        let info = s.folder_info("r@example.test", INBOX).unwrap().unwrap();
        let uids: Vec<u32> = s
            .list("r@example.test", INBOX)
            .unwrap()
            .iter()
            .map(|m| m.uid)
            .collect();
        (info.uidvalidity, uids)
    };
    let s = MailStore::open(tmp.path()).unwrap();
    let list = s.list("r@example.test", INBOX).unwrap();
    assert_eq!(list.iter().map(|m| m.uid).collect::<Vec<_>>(), uids);
    assert_eq!(uids, vec![1, 2, 4, 5]);
    assert_eq!(list[1].flags, vec!["\\Seen".to_string()]);
    assert_eq!(
        s.fetch("r@example.test", INBOX, 5).unwrap().unwrap(),
        msg(4)
    );
    let info = s.folder_info("r@example.test", INBOX).unwrap().unwrap();
    assert_eq!(info.uidvalidity, uidvalidity);
    assert_eq!(info.uidnext, 6);
    let expected: u64 = [0, 1, 3, 4].iter().map(|&n| msg(n).len() as u64).sum();
    assert_eq!(s.usage("r@example.test").unwrap(), expected);
    assert_eq!(
        s.deliver("r@example.test", INBOX, Some("k0"), &msg(0), 0)
            .unwrap(),
        Delivery::Duplicate
    );
    assert_eq!(
        stored(
            s.deliver("r@example.test", INBOX, None, &msg(9), 0)
                .unwrap()
        ),
        6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_async_group_commit() {
    let tmp = TempDir::new("async");
    let s = MailStore::open(tmp.path()).unwrap();
    let quota = 50 * msg(0).len() as u64;
    let mut tasks = Vec::new();
    for n in 0..80usize {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            // Every key twice: the second must be a duplicate whichever batch it lands in.
            let key = format!("tok-{}", n % 40);
            s.deliver_async("g@example.test", INBOX, Some(&key), msg(0), quota)
                .await
                .unwrap()
        }));
    }
    let mut stored_n = 0;
    let mut dup = 0;
    for t in tasks {
        match t.await.unwrap() {
            Delivery::Stored { .. } => stored_n += 1,
            Delivery::Duplicate => dup += 1,
            Delivery::OverQuota => panic!("under quota"),
        }
    }
    assert_eq!((stored_n, dup), (40, 40));
    let list = s.list("g@example.test", INBOX).unwrap();
    let uids: Vec<u32> = list.iter().map(|m| m.uid).collect();
    assert_eq!(uids, (1..=40).collect::<Vec<_>>());
    // Quota checked in order inside a batch: 20 more fit, the rest are refused.
    let mut tasks = Vec::new();
    for n in 0..30usize {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.deliver_async(
                "g@example.test",
                INBOX,
                Some(&format!("more-{n}")),
                msg(0),
                quota,
            )
            .await
            .unwrap()
        }));
    }
    let mut over = 0;
    for t in tasks {
        if t.await.unwrap() == Delivery::OverQuota {
            over += 1;
        }
    }
    assert_eq!(over, 20);
    let stats = s.commit_stats();
    eprintln!("group commit: {stats:?}");
    assert_eq!(stats.deliveries, 110);
    assert!(
        stats.batches >= 1 && stats.batches < 110,
        "batched: {stats:?}"
    );
    assert_eq!(s.usage("g@example.test").unwrap(), quota);
    drop(s);
    // Everything acknowledged is on disk.
    let s = MailStore::open(tmp.path()).unwrap();
    assert_eq!(s.list("g@example.test", INBOX).unwrap().len(), 50);
}

#[test]
fn rename_move_and_change_notifications() {
    let tmp = TempDir::new("store-rename");
    let s = MailStore::open(tmp.path()).unwrap();
    let user = "r@example.test";
    let mut changes = s.subscribe_changes();
    let before = *changes.borrow_and_update();
    let u1 = stored(s.deliver(user, INBOX, None, &msg(1), 0).unwrap());
    assert!(changes.has_changed().unwrap(), "a delivery must notify");
    assert_ne!(*changes.borrow_and_update(), before);

    // Rename a folder with a sub-folder: UIDs and UIDVALIDITY are kept.
    s.create_folder(user, "Projects").unwrap();
    s.create_folder(user, "Projects/2024").unwrap();
    let p1 = stored(
        s.append(user, "Projects", &msg(2), &["\\Seen"], None, 0)
            .unwrap(),
    );
    let info = s.folder_info(user, "Projects").unwrap().unwrap();
    assert!(s.rename_folder(user, "Projects", "Archive").unwrap());
    let renamed = s.folder_info(user, "Archive").unwrap().unwrap();
    assert_eq!(renamed.uidvalidity, info.uidvalidity);
    assert_eq!(s.list(user, "Archive").unwrap()[0].uid, p1);
    assert_eq!(s.list(user, "Archive").unwrap()[0].flags, vec!["\\Seen"]);
    assert!(s.folder_info(user, "Projects").unwrap().is_none());
    assert!(s.folder_info(user, "Archive/2024").unwrap().is_some());
    assert!(s.folder_info(user, "Projects/2024").unwrap().is_none());
    assert!(!s.rename_folder(user, "Nope", "Other").unwrap());
    assert!(matches!(
        s.rename_folder(user, "Archive", "Junk"),
        Err(MailboxError::AlreadyExists(_))
    ));

    // Renaming INBOX moves its messages and leaves an empty INBOX.
    assert!(s.rename_folder(user, INBOX, "Old").unwrap());
    assert!(s.list(user, INBOX).unwrap().is_empty());
    assert_eq!(s.list(user, "Old").unwrap()[0].uid, u1);
    let u2 = stored(s.deliver(user, INBOX, None, &msg(3), 0).unwrap());
    assert!(u2 > u1, "INBOX UIDs are never reused after a rename");

    // Move is atomic copy + delete; quota usage is unchanged by a move.
    let used = s.usage(user).unwrap();
    let map = s.move_messages(user, INBOX, &[u2, 999], "Archive").unwrap();
    assert_eq!(map.len(), 1);
    assert!(s.list(user, INBOX).unwrap().is_empty());
    assert_eq!(s.fetch(user, "Archive", map[0].1).unwrap().unwrap(), msg(3));
    assert_eq!(s.usage(user).unwrap(), used);
}
