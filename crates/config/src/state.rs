//! `[gateway.state]`: where the per-client state of the defense mechanisms
//! lives (issue 9), and the PROXY protocol settings of an edge stage's
//! listeners (`[stage.mx] proxy_protocol`, `trusted_proxies`).
//!
//! The embedded backend (each node's own memory and LMDB) is the default;
//! `backend = "redis"` shares greylisting, rate limits, spamtrap hits,
//! bad-RCPT counts and AUTH failures between the nodes of a pair or a site.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{Config, Seconds, StageKind};

type Problem = (Vec<String>, String);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    /// Each node keeps its own state (memory, LMDB under its data dir).
    #[default]
    Embedded,
    /// Shared through Redis (or Valkey) at `url`.
    Redis,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateSettings {
    pub backend: StateBackend,
    /// `redis://[user:password@]host:port/db` (or `rediss://`, `unix://`).
    pub url: String,
    /// Prepended to every key, so one Redis can serve several sites.
    pub key_prefix: String,
    /// Connect and reply timeout of one Redis command: past it the
    /// mechanism uses its local state for that decision.
    pub timeout: Seconds,
    /// After a failure, Redis is not asked again for this long (every
    /// decision meanwhile is local and costs nothing).
    pub retry_after: Seconds,
    /// DM10 with Redis: a session's connection slot lives this long
    /// without its node's heartbeat (renewed every third of it). A node
    /// killed with sessions open frees their slots after it.
    pub connection_lease: Seconds,
}

impl Default for StateSettings {
    fn default() -> Self {
        StateSettings {
            backend: StateBackend::Embedded,
            url: "redis://127.0.0.1:6379/0".into(),
            key_prefix: "palisade:".into(),
            timeout: Seconds(0.05),
            retry_after: Seconds(1.0),
            connection_lease: Seconds(30.0),
        }
    }
}

pub(crate) fn validate(config: &Config, problems: &mut Vec<Problem>) {
    let s = &config.gateway.state;
    let at = |k: &str| vec!["gateway".to_string(), "state".into(), k.into()];
    if s.backend == StateBackend::Redis {
        let scheme_ok = ["redis://", "rediss://", "unix://", "redis+unix://"]
            .iter()
            .any(|p| s.url.starts_with(p));
        if !scheme_ok {
            problems.push((at("url"), format!("`{}` is not a redis:// URL", s.url)));
        }
    }
    if !(s.timeout.0 > 0.0 && s.timeout.0 <= 5.0) {
        problems.push((
            at("timeout"),
            format!(
                "{} must be above 0 and at most 5s: a dead Redis must cost milliseconds",
                s.timeout
            ),
        ));
    }
    if s.retry_after.0 <= 0.0 {
        problems.push((at("retry_after"), "must be above 0".into()));
    }
    if s.connection_lease.0 < 1.0 {
        problems.push((
            at("connection_lease"),
            "must be at least 1s (the heartbeat renews it every third)".into(),
        ));
    }
    for (&stage, st) in &config.stage {
        let at = |k: &str| vec!["stage".to_string(), stage.name().into(), k.into()];
        let edge = matches!(stage, StageKind::Mx | StageKind::Msa);
        if st.proxy_protocol && !edge {
            problems.push((
                at("proxy_protocol"),
                "PROXY protocol is for the MX and MSA listeners only".into(),
            ));
        }
        if st.proxy_protocol && st.trusted_proxies.is_empty() {
            problems.push((
                at("trusted_proxies"),
                "proxy_protocol needs the load balancers' addresses in trusted_proxies".into(),
            ));
        }
        if !st.proxy_protocol && !st.trusted_proxies.is_empty() {
            problems.push((
                at("trusted_proxies"),
                "trusted_proxies has no effect without proxy_protocol = true".into(),
            ));
        }
        if st.proxy_header_timeout.0 <= 0.0 {
            problems.push((at("proxy_header_timeout"), "must be above 0".into()));
        }
    }
}

/// The proxies of a stage, as the listener needs them.
pub fn trusted_proxies(st: &crate::StageSettings) -> Vec<IpAddr> {
    if st.proxy_protocol {
        st.trusted_proxies.clone()
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    const BASE: &str = "[gateway]\nhostname = \"mx.example.test\"\n[node.mx-1]\nstage = \"mx\"\nsmtp = \"127.0.0.1:2525\"\n\
                        [stage.mx]\nrelay = [\"127.0.0.1:2626\"]\n";

    fn errors(extra: &str) -> Vec<String> {
        crate::test_errors(&format!("{BASE}{extra}"))
    }

    #[test]
    fn redis_backend_and_proxy_settings_are_checked() {
        assert!(errors("").is_empty());
        let ok = "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.5\"]\n\
                  [gateway.state]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6379/0\"\n";
        assert!(errors(ok).is_empty(), "{:?}", errors(ok));
        let e = errors(
            "proxy_protocol = true\n\
             [gateway.state]\nbackend = \"redis\"\nurl = \"http://x\"\ntimeout = \"10s\"\n\
             [stage.antivirus]\nproxy_protocol = true\ntrusted_proxies = [\"127.0.0.5\"]\n",
        );
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(e.iter().any(|m| m.contains("gateway.state.url")));
        assert!(e.iter().any(|m| m.contains("gateway.state.timeout")));
        assert!(e.iter().any(|m| m.contains("stage.mx.trusted_proxies")));
        assert!(e
            .iter()
            .any(|m| m.contains("stage.antivirus.proxy_protocol")));
        assert!(!errors("[gateway.state]\nbackend = \"memcached\"\n").is_empty());
    }
}
