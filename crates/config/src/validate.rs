//! Whole-architecture checks: every problem is collected, none stops the
//! others from being found.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::{Config, StageKind};

type Problem = (Vec<String>, String);

fn key(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| p.to_string()).collect()
}

pub(crate) fn validate(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    check_gateway(config, &mut problems);
    check_domains(config, &mut problems);
    check_nodes(config, &mut problems);
    check_stages(config, &mut problems);
    crate::mechanisms::check(config, &mut problems);
    crate::outbound::validate(config, &mut problems);
    crate::content::validate(config, &mut problems);
    crate::state::validate(config, &mut problems);
    problems
}

fn check_gateway(config: &Config, problems: &mut Vec<Problem>) {
    let h = &config.gateway.hostname;
    if h.is_empty()
        || !h
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        problems.push((
            key(&["gateway", "hostname"]),
            format!("`{h}` is not a host name"),
        ));
    }
    if config.gateway.tls_cert.is_some() != config.gateway.tls_key.is_some() {
        problems.push((
            key(&["gateway", "tls_cert"]),
            "tls_cert and tls_key go together: set both or neither".into(),
        ));
    }
}

fn check_domains(config: &Config, problems: &mut Vec<Problem>) {
    let mut seen = BTreeMap::new();
    for (i, d) in config.domains.iter().enumerate() {
        let idx = i.to_string();
        let lower = d.name.to_ascii_lowercase();
        if lower.is_empty() || lower.contains('@') || lower.starts_with('.') {
            problems.push((
                key(&["domain", &idx, "name"]),
                format!("`{}` is not a domain", d.name),
            ));
        }
        if let Some(first) = seen.insert(lower, i) {
            problems.push((
                key(&["domain", &idx, "name"]),
                format!("domain `{}` is already listed (domain #{first})", d.name),
            ));
        }
        let Some(store) = &d.store else { continue };
        match config.node.get(store) {
            Some(n) if n.stage == StageKind::Store => {}
            Some(n) => problems.push((
                key(&["domain", &idx, "store"]),
                format!("node `{store}` is a {} node, not a store node", n.stage),
            )),
            None => problems.push((
                key(&["domain", &idx, "store"]),
                format!("no node named `{store}`"),
            )),
        }
    }
}

fn check_nodes(config: &Config, problems: &mut Vec<Problem>) {
    if config.node.is_empty() {
        problems.push((key(&["node"]), "no node is defined".into()));
    }
    let mut addresses: BTreeMap<SocketAddr, (String, &str)> = BTreeMap::new();
    for (name, node) in &config.node {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            problems.push((
                key(&["node", name]),
                "node names use letters, digits, '-' and '_' only".into(),
            ));
        }
        for (listener, addr) in node.listeners() {
            if let Some((other, other_key)) = addresses.insert(addr, (name.clone(), listener)) {
                problems.push((
                    key(&["node", name, listener]),
                    format!("{addr} is already used by node.{other}.{other_key}"),
                ));
            }
        }
        let allowed: &[&str] = match node.stage {
            StageKind::Mx => &["smtp", "metrics"],
            StageKind::Msa => &["smtp", "submission", "submissions", "metrics"],
            StageKind::Store => &["smtp", "imaps", "pop3s", "metrics"],
            _ => &["smtp", "metrics"],
        };
        for (listener, _) in node.listeners() {
            if !allowed.contains(&listener) {
                problems.push((
                    key(&["node", name, listener]),
                    format!("a {} node has no {listener} listener", node.stage),
                ));
            }
        }
        let needs_smtp = node.stage != StageKind::Msa;
        if needs_smtp && node.smtp.is_none() {
            problems.push((
                key(&["node", name, "smtp"]),
                format!("a {} node needs an smtp address", node.stage),
            ));
        }
        if node.stage == StageKind::Msa && node.submission.is_none() && node.submissions.is_none() {
            problems.push((
                key(&["node", name, "submission"]),
                "an msa node needs a submission or submissions address".into(),
            ));
        }
        if node.profile.is_some() && node.stage != StageKind::Store {
            problems.push((
                key(&["node", name, "profile"]),
                "only store nodes serve a user profile".into(),
            ));
        }
    }
}

fn check_stages(config: &Config, problems: &mut Vec<Problem>) {
    let has_nodes = |s: StageKind| config.nodes_of(s).next().is_some();
    for (&stage, st) in &config.stage {
        let name = stage.name();
        if let Some(next) = st.next {
            if next == stage {
                problems.push((
                    key(&["stage", name, "next"]),
                    "a stage cannot forward to itself".into(),
                ));
            } else if next.is_edge() {
                problems.push((
                    key(&["stage", name, "next"]),
                    format!("{next} is an entry stage; mail never flows into it"),
                ));
            } else if !has_nodes(next) {
                problems.push((
                    key(&["stage", name, "next"]),
                    format!("no node runs the {next} stage"),
                ));
            }
            if !st.relay.is_empty() {
                problems.push((
                    key(&["stage", name, "relay"]),
                    "set either `next` (a stage) or `relay` (addresses), not both".into(),
                ));
            }
        }
        if stage == StageKind::Store && (st.next.is_some() || !st.relay.is_empty()) {
            problems.push((
                key(&["stage", name, "next"]),
                "the store is the last stage: it has no next hop".into(),
            ));
        }
        if st.local_delivery && config.domains.is_empty() {
            problems.push((
                key(&["stage", name, "local_delivery"]),
                "local_delivery needs at least one [[domain]] with its store".into(),
            ));
        }
        let l = &st.limits;
        if l.max_message_size == 0 {
            problems.push((
                key(&["stage", name, "limits", "max_message_size"]),
                "must be at least 1 byte".into(),
            ));
        }
        if l.max_recipients == 0 {
            problems.push((
                key(&["stage", name, "limits", "max_recipients"]),
                "must be at least 1".into(),
            ));
        }
        if l.max_sessions == 0 {
            problems.push((
                key(&["stage", name, "limits", "max_sessions"]),
                "must be at least 1".into(),
            ));
        }
        if st.queue.concurrency == 0 {
            problems.push((
                key(&["stage", name, "queue", "concurrency"]),
                "must be at least 1".into(),
            ));
        }
        if st.queue.min_retry > st.queue.max_retry {
            problems.push((
                key(&["stage", name, "queue", "min_retry"]),
                format!(
                    "min_retry {} is longer than max_retry {}",
                    st.queue.min_retry, st.queue.max_retry
                ),
            ));
        }
    }
    // Every relaying stage that runs needs somewhere to send mail. The
    // outgoing stage may have none: it resolves MX records itself.
    for stage in StageKind::ALL {
        if !has_nodes(stage) || matches!(stage, StageKind::Store | StageKind::Outgoing) {
            continue;
        }
        let st = config.settings(stage);
        if st.next.is_none() && st.relay.is_empty() && !st.local_delivery {
            problems.push((
                key(&["stage", stage.name(), "next"]),
                format!("{stage} nodes run but the stage has no `next` stage or `relay`"),
            ));
        }
    }
}
