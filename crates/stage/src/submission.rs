//! The MSA's hooks (stage B): authenticated submission that cannot be
//! abused (Table I: DM2 submission, DM4 SMTP AUTH, DM14 TLS).
//!
//! Wraps the relay intake (upstream checks, recipient checks, queueing)
//! and adds what only submission needs: credentials checked against the
//! local directory replica (so submission works while a store is down),
//! a brute-force throttle per client IP and per account that never tells
//! whether an account exists (counted in the policy-state backend, so a
//! pair of MSAs shares it: guessing on the other node gains nothing), and
//! the fraud defence that a user sends only
//! as an address they own (553 5.7.1).

use std::sync::Arc;
use std::time::Duration;

use palisade_config::{SubmissionSettings, TypoGuardMode};
use palisade_policy::state::{Events, SharedState};
use palisade_smtp_proto::{MailParams, RcptParams, Reply};
use palisade_smtp_server::{Envelope, Hooks, SessionInfo};
use tracing::{info, warn};

use crate::intake::RelayIntake;
use crate::replica::Replica;
use crate::typo::TypoGuard;

pub struct SubmissionIntake {
    pub relay: Arc<RelayIntake>,
    pub replica: Arc<Replica>,
    pub settings: SubmissionSettings,
    pub typo: Option<TypoGuard>,
    /// Recent failed AUTH attempts by `ip:…` and `user:…` key.
    failures: Events,
}

impl SubmissionIntake {
    pub fn new(
        relay: Arc<RelayIntake>,
        replica: Arc<Replica>,
        settings: SubmissionSettings,
        typo: Option<TypoGuard>,
    ) -> Self {
        let state = relay.policy.as_ref().map(|p| p.state().clone());
        SubmissionIntake {
            failures: Events::new("DM4", state.unwrap_or_else(SharedState::embedded)),
            relay,
            replica,
            settings,
            typo,
        }
    }

    fn window(&self) -> Duration {
        self.settings.auth_failure_window.duration()
    }

    /// Failures of `key` within the window.
    async fn recent_failures(&self, key: &str) -> u32 {
        self.failures.count(key, self.window()).await
    }

    async fn record_failure(&self, keys: &[&str]) {
        for k in keys {
            self.failures.record(k, self.window()).await;
        }
    }

    fn count(&self, action: &str) {
        self.relay.ctx.metrics.inc(
            "palisade_auth_total",
            "SMTP AUTH attempts at the MSA by outcome.",
            &[("result", action)],
        );
    }

    /// Whether the authenticated user owns `address` (it is the user's
    /// address or one of their aliases).
    fn owns(&self, user: &str, address: &str) -> bool {
        matches!(self.replica.lookup(address), Ok(Some(u)) if u.address.eq_ignore_ascii_case(user))
    }
}

fn invalid_credentials() -> Reply {
    Reply::enhanced(535, (5, 7, 8), "Authentication credentials invalid")
}

impl Hooks for SubmissionIntake {
    async fn on_connect(&self, s: &SessionInfo) -> Result<(), Reply> {
        self.relay.on_connect(s).await
    }

    fn on_close(&self, s: &SessionInfo) {
        self.relay.on_close(s)
    }

    async fn on_helo(&self, s: &SessionInfo, name: &str) -> Result<(), Reply> {
        self.relay.on_helo(s, name).await
    }

    async fn on_auth(&self, s: &SessionInfo, user: &str, password: &str) -> Result<String, Reply> {
        let ip_key = format!("ip:{}", s.peer.ip());
        let user_key = format!("user:{}", user.to_ascii_lowercase());
        let max = self.settings.auth_max_failures;
        // Past the limit the attempt is not even checked: guessing gets
        // nothing, and the answer is the same whether the account exists.
        if self.recent_failures(&ip_key).await >= max
            || self.recent_failures(&user_key).await >= max
        {
            warn!(
                "session {} from {}: AUTH throttled (too many failures)",
                s.id, s.peer
            );
            self.count("throttled");
            return Err(Reply::enhanced(
                421,
                (4, 7, 0),
                "Too many failed authentication attempts; try again later",
            ));
        }
        let replica = self.replica.clone();
        let (u, p) = (user.to_string(), password.to_string());
        let checked = tokio::task::spawn_blocking(move || replica.verify_password(&u, &p)).await;
        match checked {
            Ok(Ok(Some(found))) => {
                self.count("success");
                Ok(found.address)
            }
            Ok(Err(e)) => {
                warn!("AUTH check for {user} failed: {e}");
                self.count("error");
                Err(Reply::enhanced(
                    454,
                    (4, 7, 0),
                    "Temporary authentication failure",
                ))
            }
            Ok(Ok(None)) | Err(_) => {
                self.record_failure(&[&ip_key, &user_key]).await;
                info!("session {} from {}: AUTH failed for {user}", s.id, s.peer);
                self.count("failure");
                tokio::time::sleep(self.settings.auth_failure_delay.duration()).await;
                Err(invalid_credentials())
            }
        }
    }

    async fn on_mail(&self, s: &SessionInfo, from: &str, params: &MailParams) -> Result<(), Reply> {
        let Some(user) = &s.auth_user else {
            return Err(Reply::enhanced(530, (5, 7, 0), "Authentication required"));
        };
        if !from.is_empty() && !self.owns(user, from) {
            self.count("sender-mismatch");
            info!(
                "session {} from {}: {user} may not send as <{from}>",
                s.id, s.peer
            );
            return Err(Reply::enhanced(
                553,
                (5, 7, 1),
                format!("<{from}>: Sender address not owned by user {user}"),
            ));
        }
        self.relay.on_mail(s, from, params).await
    }

    async fn on_rcpt(
        &self,
        s: &SessionInfo,
        env: &Envelope,
        to: &str,
        p: &RcptParams,
    ) -> Result<(), Reply> {
        let domain = to.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        let remote = self.relay.ctx.config.local_domain(to).is_none();
        if let (Some(guard), true) = (&self.typo, remote) {
            if let Some(meant) = guard.suggestion(domain).await {
                self.count("typo");
                let local = to.rsplit_once('@').map(|(l, _)| l).unwrap_or(to);
                info!(
                    "session {} from {}: <{to}> looks like a typo of {meant}",
                    s.id, s.peer
                );
                if self.settings.typo_guard == TypoGuardMode::Reject {
                    return Err(Reply::enhanced(
                        550,
                        (5, 1, 2),
                        format!("<{to}>: domain {domain} has no mail server; did you mean <{local}@{meant}>?"),
                    ));
                }
            }
        }
        self.relay.on_rcpt(s, env, to, p).await?;
        if let (Some(guard), true) = (&self.typo, remote) {
            guard.used(domain);
        }
        Ok(())
    }

    async fn on_message(&self, s: &SessionInfo, env: Envelope, message: Vec<u8>) -> Reply {
        if self.settings.check_header_from {
            if let Some(user) = &s.auth_user {
                for from in header_from_addresses(&message) {
                    if !self.owns(user, &from) {
                        self.count("header-from-mismatch");
                        return Reply::enhanced(
                            553,
                            (5, 7, 1),
                            format!("From: <{from}> is not an address of user {user}"),
                        );
                    }
                }
            }
        }
        self.relay.on_message(s, env, message).await
    }
}

/// The addresses in the From: header field (unfolded), e.g. from
/// `From: "Ann" <ann@example.test>, bob@example.test`.
pub fn header_from_addresses(message: &[u8]) -> Vec<String> {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(message.len());
    let head = String::from_utf8_lossy(&message[..end]);
    let mut value: Option<String> = None;
    for line in head.split("\r\n") {
        match &mut value {
            Some(v) if line.starts_with([' ', '\t']) => v.push_str(line),
            Some(_) => break,
            None => {
                if let Some((name, rest)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("from") {
                        value = Some(rest.to_string());
                    }
                }
            }
        }
    }
    let Some(value) = value else {
        return Vec::new();
    };
    // Drop quoted display names and comments, then take each mailbox.
    let mut plain = String::new();
    let (mut quoted, mut comment) = (false, 0u32);
    for c in value.chars() {
        match c {
            '"' if comment == 0 => quoted = !quoted,
            '(' if !quoted => comment += 1,
            ')' if !quoted && comment > 0 => comment -= 1,
            _ if quoted || comment > 0 => {}
            _ => plain.push(c),
        }
    }
    plain
        .split(',')
        .filter_map(|part| {
            let part = part.trim();
            let addr = match (part.find('<'), part.rfind('>')) {
                (Some(a), Some(b)) if a < b => &part[a + 1..b],
                _ => part,
            };
            let addr = addr.trim();
            addr.contains('@').then(|| addr.to_ascii_lowercase())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::header_from_addresses;

    #[test]
    fn from_header_addresses() {
        let m = b"Subject: x\r\nFrom: \"Doe, Ann\" <Ann@Example.test>,\r\n bob@example.test (Bob)\r\nTo: c@d\r\n\r\nFrom: evil@x\r\n";
        assert_eq!(
            header_from_addresses(m),
            vec!["ann@example.test", "bob@example.test"]
        );
        assert!(header_from_addresses(b"Subject: none\r\n\r\n").is_empty());
    }
}
