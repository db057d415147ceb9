mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::TempDir;
use palisade_mailbox::{Directory, MailboxError};

const CHILD_ENV: &str = "PALISADE_MAILBOX_TEST_CHILD_DIR";

#[test]
fn add_lookup_alias_verify_delete_version() {
    let tmp = TempDir::new("dir");
    let d = Directory::open(tmp.path()).unwrap();
    assert_eq!(d.version().unwrap(), 0);

    let t = Instant::now();
    d.add_user("Alice@Example.TEST", "s3cret pw", 1000, "store-staff")
        .unwrap();
    eprintln!("add_user (argon2 hash) took {:?}", t.elapsed());
    assert_eq!(d.version().unwrap(), 1);

    let u = d
        .lookup("alice@example.test")
        .unwrap()
        .expect("user exists");
    assert_eq!(u.address, "alice@example.test");
    assert_eq!(u.quota_bytes, 1000);
    assert_eq!(u.store, "store-staff");
    assert!(
        u.password_hash
            .starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{}",
        u.password_hash
    );
    assert!(!u.password_hash.contains("s3cret"));
    assert_eq!(u.version, 1);
    // Case-insensitive lookups.
    assert_eq!(
        d.lookup("ALICE@example.test").unwrap().unwrap().address,
        "alice@example.test"
    );
    assert!(d.lookup("bob@example.test").unwrap().is_none());
    assert!(d.lookup("not an address").unwrap().is_none());

    // Duplicate add.
    assert!(matches!(
        d.add_user("alice@EXAMPLE.test", "x", 0, "store-staff"),
        Err(MailboxError::AlreadyExists(_))
    ));
    assert!(matches!(
        d.add_user("no-at-sign", "x", 0, "store-staff"),
        Err(MailboxError::InvalidInput(_))
    ));
    assert_eq!(
        d.version().unwrap(),
        1,
        "failed adds do not bump the version"
    );

    // Aliases.
    d.add_alias("Postmaster@example.test", "alice@example.test")
        .unwrap();
    assert_eq!(d.version().unwrap(), 2);
    let via_alias = d.lookup("postmaster@EXAMPLE.test").unwrap().unwrap();
    assert_eq!(via_alias.address, "alice@example.test");
    assert_eq!(
        via_alias.aliases,
        vec!["postmaster@example.test".to_string()]
    );
    assert!(matches!(
        d.add_alias("postmaster@example.test", "alice@example.test"),
        Err(MailboxError::AlreadyExists(_))
    ));
    assert!(matches!(
        d.add_alias("alice@example.test", "alice@example.test"),
        Err(MailboxError::AlreadyExists(_))
    ));
    assert!(matches!(
        d.add_alias("x@example.test", "nobody@example.test"),
        Err(MailboxError::NotFound(_))
    ));
    // Adding a user whose name is an alias is refused.
    assert!(matches!(
        d.add_user("postmaster@example.test", "x", 0, "store-staff"),
        Err(MailboxError::AlreadyExists(_))
    ));

    // verify_password: good, bad, unknown, via alias.
    assert_eq!(
        d.verify_password("alice@example.test", "s3cret pw")
            .unwrap()
            .unwrap()
            .address,
        "alice@example.test"
    );
    assert!(d
        .verify_password("alice@example.test", "s3cret")
        .unwrap()
        .is_none());
    assert!(d
        .verify_password("alice@example.test", "")
        .unwrap()
        .is_none());
    assert!(d
        .verify_password("postmaster@example.test", "s3cret pw")
        .unwrap()
        .is_some());
    // Unknown users cost an argon2 verification too (timing does not reveal existence).
    let t = Instant::now();
    assert!(d
        .verify_password("alice@example.test", "wrong")
        .unwrap()
        .is_none());
    let known = t.elapsed();
    let t = Instant::now();
    assert!(d
        .verify_password("ghost@example.test", "wrong")
        .unwrap()
        .is_none());
    let unknown = t.elapsed();
    assert!(
        unknown * 3 > known,
        "unknown user verify ({unknown:?}) must cost about as much as a known one ({known:?})"
    );

    // set_password / set_quota.
    let v = d.version().unwrap();
    assert!(d.set_password("alice@example.test", "new pw").unwrap());
    assert!(d
        .verify_password("alice@example.test", "s3cret pw")
        .unwrap()
        .is_none());
    assert!(d
        .verify_password("alice@example.test", "new pw")
        .unwrap()
        .is_some());
    assert!(d.set_quota("ALICE@example.test", 5).unwrap());
    assert_eq!(
        d.lookup("alice@example.test").unwrap().unwrap().quota_bytes,
        5
    );
    assert_eq!(d.version().unwrap(), v + 2);
    assert_eq!(
        d.lookup("alice@example.test").unwrap().unwrap().version,
        v + 2
    );
    assert!(!d.set_quota("ghost@example.test", 5).unwrap());
    assert!(!d.set_password("ghost@example.test", "x").unwrap());

    // list.
    d.add_user("bob@students.example.test", "pw", 0, "store-students")
        .unwrap();
    let all = d.list().unwrap();
    let names: Vec<_> = all.iter().map(|u| u.address.as_str()).collect();
    assert_eq!(names, ["alice@example.test", "bob@students.example.test"]);

    // delete removes the user and its aliases.
    let v = d.version().unwrap();
    assert!(d.delete_user("Alice@example.test").unwrap());
    assert!(!d.delete_user("alice@example.test").unwrap());
    assert_eq!(d.version().unwrap(), v + 1);
    assert!(d.lookup("alice@example.test").unwrap().is_none());
    assert!(d.lookup("postmaster@example.test").unwrap().is_none());
    assert!(d
        .verify_password("alice@example.test", "new pw")
        .unwrap()
        .is_none());
    // The alias name is free again.
    d.add_alias("postmaster@example.test", "bob@students.example.test")
        .unwrap();
    assert_eq!(
        d.lookup("postmaster@example.test")
            .unwrap()
            .unwrap()
            .address,
        "bob@students.example.test"
    );
    assert!(d.remove_alias("postmaster@example.test").unwrap());
    assert!(d.lookup("postmaster@example.test").unwrap().is_none());
    assert!(d
        .lookup("bob@students.example.test")
        .unwrap()
        .unwrap()
        .aliases
        .is_empty());
}

#[test]
fn second_open_in_same_process_sees_changes_and_survives_reopen() {
    let tmp = TempDir::new("dir2");
    let a = Directory::open(tmp.path()).unwrap();
    let b = Directory::open(tmp.path()).unwrap();
    assert!(b.lookup("carol@example.test").unwrap().is_none());
    a.add_user("carol@example.test", "pw", 0, "store-staff")
        .unwrap();
    assert!(b.lookup("carol@example.test").unwrap().is_some());
    assert_eq!(b.version().unwrap(), 1);
    drop(a);
    drop(b);
    // Closed and reopened: the data is on disk.
    let c = Directory::open(tmp.path()).unwrap();
    assert!(c
        .verify_password("carol@example.test", "pw")
        .unwrap()
        .is_some());
    assert_eq!(c.version().unwrap(), 1);
}

/// Not a test on its own: the child half of `other_process_writes_are_visible`.
#[test]
fn child_process_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let d = Directory::open(Path::new(&dir)).unwrap();
    d.add_user("child@example.test", "child pw", 42, "store-students")
        .unwrap();
    d.set_quota("parent@example.test", 7).unwrap();
}

/// The admin CLI (another process) writes while a stage process keeps the directory open: the
/// stage must see the new commits without reopening.
#[test]
fn other_process_writes_are_visible() {
    let tmp = TempDir::new("dir3");
    let d = Directory::open(tmp.path()).unwrap();
    d.add_user("parent@example.test", "pw", 0, "store-staff")
        .unwrap();
    assert!(d.lookup("child@example.test").unwrap().is_none());

    let status = Command::new(std::env::current_exe().unwrap())
        .args(["child_process_writer", "--exact", "--test-threads=1"])
        .env(CHILD_ENV, tmp.path())
        .status()
        .unwrap();
    assert!(status.success());

    let child = d
        .lookup("child@example.test")
        .unwrap()
        .expect("written by the child");
    assert_eq!(child.quota_bytes, 42);
    assert_eq!(child.store, "store-students");
    assert_eq!(
        d.lookup("parent@example.test")
            .unwrap()
            .unwrap()
            .quota_bytes,
        7
    );
    assert_eq!(d.version().unwrap(), 3);
    assert!(d
        .verify_password("child@example.test", "child pw")
        .unwrap()
        .is_some());
    // And this process can still write after the other one.
    d.add_user("after@example.test", "pw", 0, "store-staff")
        .unwrap();
    assert_eq!(d.version().unwrap(), 4);
}

/// How an MX/MSA replica takes in a store's snapshot: that store's users
/// are replaced as a whole (deleted users and aliases disappear), other
/// stores' users are untouched, and hashes and flags are copied as sent.
#[test]
fn replica_replaces_one_stores_users() {
    let master_dir = TempDir::new("dir-master");
    let replica_dir = TempDir::new("dir-replica");
    let master = Directory::open(master_dir.path()).unwrap();
    let replica = Directory::open(replica_dir.path()).unwrap();
    master
        .add_user("ann@example.test", "password one", 0, "store-staff")
        .unwrap();
    master
        .add_user("bob@example.test", "password two", 500, "store-staff")
        .unwrap();
    master
        .add_alias("info@example.test", "ann@example.test")
        .unwrap();
    replica
        .add_user(
            "sam@students.example.test",
            "password six",
            0,
            "store-students",
        )
        .unwrap();

    let mut staff: Vec<_> = master.list().unwrap();
    staff[1].over_quota = true;
    replica.replace_store_users("store-staff", &staff).unwrap();
    assert_eq!(
        replica
            .lookup("info@example.test")
            .unwrap()
            .unwrap()
            .address,
        "ann@example.test"
    );
    assert!(
        replica
            .lookup("bob@example.test")
            .unwrap()
            .unwrap()
            .over_quota
    );
    assert!(replica
        .verify_password("ann@example.test", "password one")
        .unwrap()
        .is_some());
    assert!(replica
        .lookup("sam@students.example.test")
        .unwrap()
        .is_some());

    // Bob and the alias are gone at the source: gone in the replica too.
    let only_ann: Vec<_> = staff
        .into_iter()
        .take(1)
        .map(|mut u| {
            u.aliases.clear();
            u
        })
        .collect();
    replica
        .replace_store_users("store-staff", &only_ann)
        .unwrap();
    assert!(replica.lookup("bob@example.test").unwrap().is_none());
    assert!(replica.lookup("info@example.test").unwrap().is_none());
    assert!(replica
        .lookup("sam@students.example.test")
        .unwrap()
        .is_some());
}
