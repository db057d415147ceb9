//! The shipped configuration files load, and broken ones are reported with
//! file, line and key.

use std::path::{Path, PathBuf};

use palisade_config::{load, parse, NextHop, StageKind};

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

#[test]
fn local_toml_is_the_spec_architecture() {
    let c = load(&repo_file("config/local.toml")).expect("config/local.toml is valid");
    let port = |n: &str| c.node[n].smtp.unwrap().port();
    assert_eq!(port("mx-1"), 2525);
    assert_eq!(port("mx-2"), 2526);
    assert_eq!(port("antivirus-1"), 10024);
    assert_eq!(port("antispam-2"), 10125);
    assert_eq!(port("store-students"), 10127);
    assert_eq!(c.node["msa-1"].submission.unwrap().port(), 5870);
    assert_eq!(c.node["msa-2"].submissions.unwrap().port(), 4651);
    assert_eq!(c.node["store-staff"].pop3s.unwrap().port(), 9950);
    assert_eq!(c.node["store-students"].imaps.unwrap().port(), 9931);
    for stage in [
        StageKind::Mx,
        StageKind::Msa,
        StageKind::Antivirus,
        StageKind::Antispam,
        StageKind::Outgoing,
    ] {
        assert_eq!(c.nodes_of(stage).count(), 2, "{stage} is a pair");
    }
    // Flow 1 and the antispam stage's routing (SPEC §4).
    match c.next_hop(StageKind::Mx, "bob@example.test") {
        NextHop::Pool { name, addrs } => {
            assert_eq!(name, "antivirus");
            assert_eq!(addrs.len(), 2);
        }
        other => panic!("mx routes to {other:?}"),
    }
    match c.next_hop(StageKind::Antispam, "Ann@Students.Example.Test") {
        NextHop::Pool { name, .. } => assert_eq!(name, "store-students"),
        other => panic!("antispam routes a local student to {other:?}"),
    }
    match c.next_hop(StageKind::Antispam, "someone@elsewhere.test") {
        NextHop::Pool { name, .. } => assert_eq!(name, "outgoing"),
        other => panic!("antispam routes a remote recipient to {other:?}"),
    }
    assert_eq!(
        c.next_hop(StageKind::Store, "bob@example.test"),
        NextHop::LocalStore
    );
    assert_eq!(
        c.upstream_stages(StageKind::Antivirus),
        vec![StageKind::Mx, StageKind::Msa]
    );
    assert_eq!(
        c.upstream_stages(StageKind::Store),
        vec![StageKind::Antispam]
    );
}

#[test]
fn bench_toml_relays_to_the_sink() {
    let c = load(&repo_file("config/bench.toml")).expect("config/bench.toml is valid");
    assert_eq!(c.node["mx-1"].smtp.unwrap().to_string(), "127.0.0.1:2525");
    match c.next_hop(StageKind::Mx, "x@example.test") {
        NextHop::Pool { addrs, .. } => assert_eq!(addrs[0].to_string(), "127.0.0.1:2626"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_error_is_reported_with_line_and_key() {
    let text = r#"
[gateway]
hostname = "mail.example.test"

[[domain]]
name = "example.test"
store = "store-nowhere"

[stage.mx]
next = "mx"
[stage.mx.queue]
min_retry = "2h"
max_retry = "1h"

[node.mx-1]
stage = "mx"
smtp = "127.0.0.1:2525"

[node.scan-1]
stage = "antivirus"
smtp = "127.0.0.1:2525"
imaps = "127.0.0.1:9930"
"#;
    let errs = parse(Path::new("bad.toml"), text).unwrap_err().0;
    let find = |k: &str| {
        errs.iter()
            .find(|e| e.key == k)
            .unwrap_or_else(|| panic!("no error for {k}: {errs:#?}"))
    };
    assert_eq!(find("domain.0.store").line, Some(7));
    assert!(find("domain.0.store").message.contains("store-nowhere"));
    assert_eq!(find("stage.mx.next").line, Some(10));
    assert_eq!(find("stage.mx.queue.min_retry").line, Some(12));
    assert_eq!(find("node.scan-1.smtp").line, Some(21));
    assert!(find("node.scan-1.smtp").message.contains("node.mx-1.smtp"));
    assert_eq!(find("node.scan-1.imaps").line, Some(22));
    let shown = errs[0].to_string();
    assert!(shown.starts_with("bad.toml:"), "{shown}");
}

#[test]
fn syntax_and_unknown_keys_are_placed() {
    let errs = parse(Path::new("t.toml"), "[gateway]\nhostnme = \"x\"\n")
        .unwrap_err()
        .0;
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].line, Some(2));
    assert!(errs[0].message.contains("hostnme"), "{}", errs[0].message);

    let errs = parse(
        Path::new("t.toml"),
        "[node.a]\nstage = \"webmail\"\nsmtp=\"127.0.0.1:1\"\n",
    )
    .unwrap_err()
    .0;
    assert_eq!(errs[0].line, Some(2));
    assert!(errs[0].message.contains("webmail"));

    let errs = parse(
        Path::new("t.toml"),
        "[stage.mx.limits]\ngreet_pause = \"5 fortnights\"\n[node.a]\nstage=\"mx\"\nsmtp=\"127.0.0.1:1\"\n",
    )
    .unwrap_err()
    .0;
    assert_eq!(errs[0].line, Some(2));
}
