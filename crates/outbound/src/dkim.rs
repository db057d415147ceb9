//! DKIM signing (RFC 6376, RFC 8463) of mail leaving through stage F, and
//! key management for `palisade dkim keygen|rotate`.
//!
//! Rotation (`palisade dkim rotate`, docs/outgoing.md): the CLI makes the
//! new key, waits until its record is published in DNS, then rewrites the
//! configuration (the new key signs, the old one gets `retire_after`) and
//! has the outgoing nodes reload it: the deliverer rebuilds its
//! [`DkimSigners`] from the new file on SIGHUP, no restart. A retiring key
//! never signs; its record stays in DNS for the grace period so mail
//! signed with it just before the switch still verifies.
//!
//! A domain may also list several signing keys: the signer uses the
//! *last* listed key whose public key is found published at
//! `<selector>._domainkey.<domain>` (checked at start, at each reload and
//! every [`REVERIFY_EVERY`]); until then the first key keeps signing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::RwLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::signature::KeyPair;
use base64::Engine;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use palisade_config::DkimKey;
use rustls_pki_types::{pem::PemObject, PrivateKeyDer};
use tracing::{info, warn};

use crate::resolve::DnsResolver;

/// How often published keys are looked up again.
pub const REVERIFY_EVERY: Duration = Duration::from_secs(600);

/// Headers covered by the signature (RFC 6376 §5.4.1's recommendation).
const SIGNED_HEADERS: [&str; 12] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Rsa,
    Ed25519,
}

impl Algorithm {
    /// The `k=` tag of the DNS record.
    pub fn dns_tag(self) -> &'static str {
        match self {
            Algorithm::Rsa => "rsa",
            Algorithm::Ed25519 => "ed25519",
        }
    }
}

enum KeyKind {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

struct LoadedKey {
    selector: String,
    /// base64 of the public key as published in `p=`.
    public_b64: String,
    kind: KeyKind,
}

/// Every configured key, by domain, and which one signs now.
pub struct DkimSigners {
    by_domain: HashMap<String, Vec<LoadedKey>>,
    /// Index into `by_domain[d]` of the key that signs.
    active: RwLock<HashMap<String, usize>>,
}

/// A private key file (PEM) and what it is.
pub struct PrivateKey {
    pub algorithm: Algorithm,
    pkcs8_or_pkcs1: PrivateKeyDer<'static>,
}

impl PrivateKey {
    pub fn from_pem(pem: &[u8]) -> Result<PrivateKey> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| anyhow!("not a PEM key: {e}"))?;
        let algorithm = match &der {
            PrivateKeyDer::Pkcs1(_) => Algorithm::Rsa,
            PrivateKeyDer::Pkcs8(p) => {
                if Ed25519Key::from_pkcs8_maybe_unchecked_der(p.secret_pkcs8_der()).is_ok() {
                    Algorithm::Ed25519
                } else {
                    Algorithm::Rsa
                }
            }
            _ => bail!("unsupported key type (use RSA or Ed25519)"),
        };
        Ok(PrivateKey {
            algorithm,
            pkcs8_or_pkcs1: der,
        })
    }

    /// The base64 `p=` value: SubjectPublicKeyInfo for RSA, the raw 32
    /// bytes for Ed25519 (RFC 8463).
    pub fn public_b64(&self) -> Result<String> {
        let raw = match (&self.pkcs8_or_pkcs1, self.algorithm) {
            (PrivateKeyDer::Pkcs8(p), Algorithm::Ed25519) => {
                Ed25519Key::from_pkcs8_maybe_unchecked_der(p.secret_pkcs8_der())
                    .map_err(|e| anyhow!("{e}"))?
                    .public_key()
            }
            (der, Algorithm::Rsa) => {
                let kp = match der {
                    PrivateKeyDer::Pkcs1(d) => {
                        aws_lc_rs::rsa::KeyPair::from_der(d.secret_pkcs1_der())
                    }
                    PrivateKeyDer::Pkcs8(d) => {
                        aws_lc_rs::rsa::KeyPair::from_pkcs8(d.secret_pkcs8_der())
                    }
                    _ => bail!("unsupported RSA key encoding"),
                }
                .map_err(|e| anyhow!("bad RSA key: {e}"))?;
                let spki: PublicKeyX509Der = kp
                    .public_key()
                    .as_der()
                    .map_err(|_| anyhow!("cannot encode RSA public key"))?;
                spki.as_ref().to_vec()
            }
            _ => bail!("unsupported key encoding"),
        };
        Ok(base64::engine::general_purpose::STANDARD.encode(raw))
    }

    /// The TXT record to publish at `<selector>._domainkey.<domain>`.
    pub fn txt_record(&self) -> Result<String> {
        Ok(format!(
            "v=DKIM1; k={}; p={}",
            self.algorithm.dns_tag(),
            self.public_b64()?
        ))
    }

    fn signer(&self, domain: &str, selector: &str) -> Result<KeyKind> {
        Ok(match self.algorithm {
            Algorithm::Rsa => KeyKind::Rsa(canon(
                DkimSigner::from_key(
                    RsaKey::<Sha256>::from_key_der(self.pkcs8_or_pkcs1.clone_key())
                        .map_err(|e| anyhow!("{e}"))?,
                )
                .domain(domain)
                .selector(selector)
                .headers(SIGNED_HEADERS),
            )),
            Algorithm::Ed25519 => {
                let PrivateKeyDer::Pkcs8(p) = &self.pkcs8_or_pkcs1 else {
                    bail!("Ed25519 keys are PKCS#8");
                };
                KeyKind::Ed25519(canon(
                    DkimSigner::from_key(
                        Ed25519Key::from_pkcs8_maybe_unchecked_der(p.secret_pkcs8_der())
                            .map_err(|e| anyhow!("{e}"))?,
                    )
                    .domain(domain)
                    .selector(selector)
                    .headers(SIGNED_HEADERS),
                ))
            }
        })
    }
}

fn canon<T: mail_auth::common::crypto::SigningKey>(s: DkimSigner<T, Done>) -> DkimSigner<T, Done> {
    s.header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

/// A new private key as PEM (PKCS#8): RSA-2048 or Ed25519.
pub fn generate_key(algorithm: Algorithm) -> Result<String> {
    let der: Vec<u8> = match algorithm {
        Algorithm::Rsa => {
            let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(|_| anyhow!("RSA key generation failed"))?;
            let d: Pkcs8V1Der = kp.as_der().map_err(|_| anyhow!("cannot encode RSA key"))?;
            d.as_ref().to_vec()
        }
        Algorithm::Ed25519 => Ed25519Key::generate_pkcs8().map_err(|e| anyhow!("{e}"))?,
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ascii"));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok(pem)
}

/// Does this TXT record publish the public key `public_b64`?
pub fn record_publishes(txt: &str, public_b64: &str) -> bool {
    txt.split(';').any(|tag| {
        let tag = tag.trim();
        tag.strip_prefix("p=")
            .map(|p| p.split_whitespace().collect::<String>() == public_b64)
            .unwrap_or(false)
    })
}

impl DkimSigners {
    /// Loads every configured key; a key that cannot be read is an error
    /// (a stage must not start signing with a silently missing key).
    pub fn load(keys: &[DkimKey]) -> Result<DkimSigners> {
        let mut by_domain: HashMap<String, Vec<LoadedKey>> = HashMap::new();
        // A retiring key's file may already be gone: it is never read.
        for k in keys.iter().filter(|k| k.signs()) {
            let pem =
                std::fs::read(&k.key).with_context(|| format!("DKIM key {}", k.key.display()))?;
            let pk = PrivateKey::from_pem(&pem)
                .with_context(|| format!("DKIM key {}", k.key.display()))?;
            let domain = k.domain.to_ascii_lowercase();
            by_domain
                .entry(domain.clone())
                .or_default()
                .push(LoadedKey {
                    selector: k.selector.clone(),
                    public_b64: pk.public_b64()?,
                    kind: pk.signer(&domain, &k.selector)?,
                });
        }
        // Until DNS says otherwise, the first key of each domain signs
        // (the one in service before any rotation).
        let active = by_domain.keys().map(|d| (d.clone(), 0)).collect();
        Ok(DkimSigners {
            by_domain,
            active: RwLock::new(active),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }

    /// `domain=selector` of every domain's signing key, for the log.
    pub fn describe(&self) -> String {
        let mut all: Vec<String> = self
            .by_domain
            .keys()
            .filter_map(|d| Some(format!("{d}={}", self.active_selector(d)?)))
            .collect();
        all.sort();
        all.join(" ")
    }

    /// The selector that signs for `domain` now.
    pub fn active_selector(&self, domain: &str) -> Option<String> {
        let i = *self.active.read().unwrap().get(domain)?;
        Some(self.by_domain.get(domain)?[i].selector.clone())
    }

    /// Picks, for every domain, the last key whose record is published.
    /// A DNS failure keeps the current choice.
    pub async fn verify_published(&self, dns: &DnsResolver) {
        for (domain, keys) in &self.by_domain {
            let mut choice = None;
            for (i, k) in keys.iter().enumerate() {
                let name = format!("{}._domainkey.{domain}", k.selector);
                match dns.txt(&name).await {
                    Ok(txts) if txts.iter().any(|t| record_publishes(t, &k.public_b64)) => {
                        choice = Some(i);
                    }
                    Ok(_) => {
                        if keys.len() > 1 {
                            info!("DKIM {domain}: selector {} not (yet) published", k.selector);
                        } else {
                            warn!("DKIM {domain}: selector {} is not published in DNS; signing anyway", k.selector);
                        }
                    }
                    Err(e) => {
                        warn!("DKIM {domain}: cannot check selector {}: {e}", k.selector);
                        choice = None;
                        break;
                    }
                }
            }
            if let Some(i) = choice {
                let mut active = self.active.write().unwrap();
                if active.get(domain) != Some(&i) {
                    info!("DKIM {domain}: signing with selector {}", keys[i].selector);
                }
                active.insert(domain.clone(), i);
            }
        }
    }

    /// The `DKIM-Signature:` header (with CRLF) for `message`, signed for
    /// `domain`; None when we hold no key for it.
    pub fn sign(&self, domain: &str, message: &[u8]) -> Option<Result<String>> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let keys = self.by_domain.get(&domain)?;
        let i = *self.active.read().unwrap().get(&domain)?;
        let sig = match &keys[i].kind {
            KeyKind::Rsa(s) => s.sign(message),
            KeyKind::Ed25519(s) => s.sign(message),
        };
        Some(
            sig.map(|s| s.to_header())
                .map_err(|e| anyhow!("DKIM signing for {domain} failed: {e}")),
        )
    }
}

/// Does the TXT data found at `<selector>._domainkey.<domain>` publish
/// exactly `key`? One DKIM record (RFC 6376 §3.6.2.2: several make the
/// verifier's choice arbitrary), of the key's type (`k=`, default rsa),
/// with its public key in `p=`. The error says what is there instead.
pub fn check_published(txts: &[String], key: &PrivateKey) -> Result<(), String> {
    let dkim: Vec<&String> = txts
        .iter()
        .filter(|t| {
            let first = t.split(';').next().unwrap_or("").trim();
            first.replace(' ', "") == "v=DKIM1" || t.contains("p=")
        })
        .collect();
    let record = match dkim.as_slice() {
        [] => return Err("no DKIM record is published there".into()),
        [one] => one,
        many => {
            return Err(format!(
                "{} DKIM records are published there; keep only the new one",
                many.len()
            ))
        }
    };
    let tag = |name: &str| {
        record.split(';').find_map(|t| {
            let (k, v) = t.split_once('=')?;
            (k.trim() == name).then(|| v.split_whitespace().collect::<String>())
        })
    };
    let k = tag("k").unwrap_or_else(|| "rsa".into());
    if k != key.algorithm.dns_tag() {
        return Err(format!(
            "the record is for a k={k} key, the new key is {}",
            key.algorithm.dns_tag()
        ));
    }
    let want = key.public_b64().map_err(|e| e.to_string())?;
    match tag("p") {
        Some(p) if p == want => Ok(()),
        Some(p) if p.is_empty() => Err("the record is revoked (empty p=)".into()),
        Some(p) => Err(format!(
            "the record publishes another key (p={}...), not the new one (p={}...)",
            &p[..p.len().min(24)],
            &want[..want.len().min(24)]
        )),
        None => Err("the record has no p= tag".into()),
    }
}

/// The domain of the message's `From:` header (the DMARC-aligned
/// identity a signature must match), if it has one.
pub fn from_domain(message: &[u8]) -> Option<String> {
    let head_end = find(message, b"\r\n\r\n").unwrap_or(message.len());
    let head = String::from_utf8_lossy(&message[..head_end]);
    let mut value: Option<String> = None;
    for line in head.split("\r\n") {
        if let Some(v) = value.as_mut() {
            if line.starts_with([' ', '\t']) {
                v.push_str(line);
                continue;
            }
            break;
        }
        if line.len() > 5 && line[..5].eq_ignore_ascii_case("from:") {
            value = Some(line[5..].to_string());
        }
    }
    let v = value?;
    let addr = match (v.rfind('<'), v.rfind('>')) {
        (Some(a), Some(b)) if a < b => v[a + 1..b].to_string(),
        _ => v.trim().to_string(),
    };
    let domain = addr.rsplit_once('@')?.1.trim().trim_end_matches('.');
    (!domain.is_empty()).then(|| domain.to_ascii_lowercase())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Loads a key file and writes nothing: for `palisade dkim` to print the
/// record of an existing key.
pub fn txt_record_of(path: &Path) -> Result<String> {
    let pem = std::fs::read(path).with_context(|| path.display().to_string())?;
    PrivateKey::from_pem(&pem)?.txt_record()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_domain_reads_display_names_and_folding() {
        let m = b"Subject: x\r\nFrom: \"Ann\"\r\n <ann@Example.TEST>\r\nTo: b@c\r\n\r\nbody";
        assert_eq!(from_domain(m).as_deref(), Some("example.test"));
        assert_eq!(from_domain(b"From: a@b.c\r\n\r\n").as_deref(), Some("b.c"));
        assert_eq!(from_domain(b"To: a@b.c\r\n\r\n"), None);
    }

    #[test]
    fn generated_keys_load_and_publish_a_record() {
        for alg in [Algorithm::Ed25519, Algorithm::Rsa] {
            let pem = generate_key(alg).unwrap();
            let k = PrivateKey::from_pem(pem.as_bytes()).unwrap();
            assert_eq!(k.algorithm, alg);
            let rec = k.txt_record().unwrap();
            assert!(rec.starts_with(&format!("v=DKIM1; k={};", alg.dns_tag())));
            assert!(record_publishes(&rec, &k.public_b64().unwrap()));
            assert!(!record_publishes(
                "v=DKIM1; p=AAAA",
                &k.public_b64().unwrap()
            ));
        }
    }

    #[test]
    fn check_published_wants_exactly_the_new_key() {
        let new =
            PrivateKey::from_pem(generate_key(Algorithm::Ed25519).unwrap().as_bytes()).unwrap();
        let other =
            PrivateKey::from_pem(generate_key(Algorithm::Ed25519).unwrap().as_bytes()).unwrap();
        let rec = new.txt_record().unwrap();
        assert_eq!(check_published(std::slice::from_ref(&rec), &new), Ok(()));
        // Unrelated TXT data at the name does not count as a DKIM record.
        assert_eq!(
            check_published(&["google-site-verification=x".into(), rec.clone()], &new),
            Ok(())
        );
        let missing = check_published(&[], &new).unwrap_err();
        assert!(missing.contains("no DKIM record"), "{missing}");
        let wrong = check_published(&[other.txt_record().unwrap()], &new).unwrap_err();
        assert!(wrong.contains("another key"), "{wrong}");
        let two = check_published(&[rec.clone(), other.txt_record().unwrap()], &new).unwrap_err();
        assert!(two.contains("2 DKIM records"), "{two}");
        let ktype = check_published(&[rec.replace("k=ed25519", "k=rsa")], &new).unwrap_err();
        assert!(ktype.contains("k=rsa"), "{ktype}");
        let revoked = check_published(&["v=DKIM1; k=ed25519; p=".into()], &new).unwrap_err();
        assert!(revoked.contains("revoked"), "{revoked}");
    }
}
