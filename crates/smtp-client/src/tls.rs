//! rustls client configurations for STARTTLS: opportunistic (any
//! certificate), verified (WebPKI roots and the server name), and DANE
//! (RFC 7672: the certificate chain matched against DNSSEC-validated TLSA
//! records).

use std::sync::{Arc, OnceLock};

use aws_lc_rs::digest;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, SignatureScheme};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// A client configuration that accepts any server certificate (encryption
/// without authentication, like Postfix's `may`/`encrypt` levels). Meant for
/// opportunistic TLS between internal stages and for tests. Signatures in the
/// handshake are still verified against the presented certificate.
///
/// One shared instance is returned so TLS session resumption works across
/// connections.
pub fn insecure_tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG.get_or_init(|| checking_config(None)).clone()
}

/// A client configuration whose certificate check is `dane` (None: any
/// certificate).
fn checking_config(dane: Option<Dane>) -> Arc<rustls::ClientConfig> {
    let provider = provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(CertCheck { provider, dane }))
        .with_no_client_auth();
    Arc::new(config)
}

/// A client configuration that verifies the server certificate against
/// `roots` and the server name (`ClientConfig::server_name`, else the IP).
pub fn verifying_tls_config(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// One TLSA record (RFC 6698 §2.1), as published at `_25._tcp.<mx host>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tlsa {
    /// 2 = DANE-TA, 3 = DANE-EE (0 and 1, the PKIX usages, are not usable
    /// for SMTP, RFC 7672 §3.1.3, and are never handed to the verifier).
    pub usage: u8,
    /// 0 = the whole certificate, 1 = its SubjectPublicKeyInfo.
    pub selector: u8,
    /// 0 = the selected data itself, 1 = its SHA-256, 2 = its SHA-512.
    pub matching: u8,
    pub data: Vec<u8>,
}

impl Tlsa {
    pub const DANE_TA: u8 = 2;
    pub const DANE_EE: u8 = 3;

    /// Whether a client can use this record for SMTP (RFC 7672 §3.1,
    /// RFC 7671 §4): DANE-TA or DANE-EE, a known selector and matching
    /// type, and a digest of the right length.
    pub fn is_usable(&self) -> bool {
        let len_ok = match self.matching {
            0 => !self.data.is_empty(),
            1 => self.data.len() == 32,
            2 => self.data.len() == 64,
            _ => false,
        };
        matches!(self.usage, Tlsa::DANE_TA | Tlsa::DANE_EE) && self.selector <= 1 && len_ok
    }

    /// Whether `cert` is the certificate (or carries the key) this record
    /// designates.
    fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        let spki;
        let selected: &[u8] = match self.selector {
            0 => cert.as_ref(),
            1 => match ParsedCertificate::try_from(cert) {
                Ok(parsed) => {
                    spki = parsed.subject_public_key_info();
                    spki.as_ref()
                }
                Err(_) => return false,
            },
            _ => return false,
        };
        match self.matching {
            0 => selected == self.data.as_slice(),
            1 => digest::digest(&digest::SHA256, selected).as_ref() == self.data.as_slice(),
            2 => digest::digest(&digest::SHA512, selected).as_ref() == self.data.as_slice(),
            _ => false,
        }
    }
}

/// A client configuration that authenticates the server by its TLSA
/// records (RFC 7672 §3): `tlsa` are the usable records of the MX host
/// `host` (the TLSA base domain, also sent as SNI, §8.1).
///
/// - DANE-EE (3): the server's own certificate (or key) must match; its
///   names, validity dates and issuer are not checked (§3.1.1): the DNSSEC
///   signature is the authentication.
/// - DANE-TA (2): a certificate the server sends in its chain must match;
///   the leaf must chain to it (validity dates checked) and be valid for
///   `host` (§3.1.2, §3.2.2).
pub fn dane_tls_config(tlsa: Vec<Tlsa>, names: Vec<String>) -> Arc<rustls::ClientConfig> {
    checking_config(Some(Dane { tlsa, names }))
}

/// The text of the verifier's error when no record matches; callers
/// recognise the failure by it (TLSRPT `tlsa-invalid`).
pub const DANE_NO_MATCH: &str = "DANE: no TLSA record matches the server certificate chain";

/// The TLSA side of a DANE connection.
#[derive(Debug)]
struct Dane {
    tlsa: Vec<Tlsa>,
    /// The names a DANE-TA leaf may be issued to: the TLSA base domain
    /// and the MX host name (RFC 7672 §3.2.2).
    names: Vec<String>,
}

impl Dane {
    /// DANE-TA: `ta` (a certificate of the presented chain matching a
    /// usage-2 record) becomes the only trust anchor of a WebPKI check of
    /// the leaf, with the certificates sent before it as intermediates.
    fn verify_ta(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        ta_index: usize,
        now: UnixTime,
        provider: &CryptoProvider,
    ) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(intermediates[ta_index].clone().into_owned())?;
        let leaf = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &leaf,
            &roots,
            &intermediates[..ta_index],
            now,
            provider.signature_verification_algorithms.all,
        )?;
        let mut mismatch = None;
        for name in &self.names {
            let name = ServerName::try_from(name.as_str())
                .map_err(|e| rustls::Error::General(format!("DANE: MX host name: {e}")))?;
            match verify_server_name(&leaf, &name) {
                Ok(()) => return Ok(()),
                Err(e) => mismatch = Some(e),
            }
        }
        Err(mismatch.unwrap_or_else(|| rustls::Error::General("DANE: no host name".into())))
    }

    /// RFC 7672 §3.1: the presented chain against the TLSA records.
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        provider: &CryptoProvider,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // RFC 7672 §3.1.1: DANE-EE, the leaf itself.
        if self
            .tlsa
            .iter()
            .any(|t| t.usage == Tlsa::DANE_EE && t.matches(end_entity))
        {
            return Ok(ServerCertVerified::assertion());
        }
        // RFC 7672 §3.1.2: DANE-TA, a certificate of the chain; the server
        // must send it (even a self-signed root), so only the presented
        // chain is searched. The first anchor that verifies wins.
        let mut ta_error = None;
        for (i, cert) in intermediates.iter().enumerate() {
            if !self
                .tlsa
                .iter()
                .any(|t| t.usage == Tlsa::DANE_TA && t.matches(cert))
            {
                continue;
            }
            match self.verify_ta(end_entity, intermediates, i, now, provider) {
                Ok(()) => return Ok(ServerCertVerified::assertion()),
                Err(e) => ta_error = Some(e),
            }
        }
        Err(ta_error.unwrap_or_else(|| rustls::Error::General(DANE_NO_MATCH.into())))
    }
}

/// The certificate check of the unverified and DANE configurations; the
/// handshake signatures are verified against the presented certificate in
/// both.
#[derive(Debug)]
struct CertCheck {
    provider: Arc<CryptoProvider>,
    /// None: any certificate (opportunistic TLS, RFC 7435).
    dane: Option<Dane>,
}

impl ServerCertVerifier for CertCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.dane {
            None => Ok(ServerCertVerified::assertion()),
            Some(dane) => dane.verify(end_entity, intermediates, now, &self.provider),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    fn sha256(data: &[u8]) -> Vec<u8> {
        digest::digest(&digest::SHA256, data).as_ref().to_vec()
    }

    fn spki(cert: &CertificateDer<'_>) -> Vec<u8> {
        ParsedCertificate::try_from(cert)
            .unwrap()
            .subject_public_key_info()
            .as_ref()
            .to_vec()
    }

    /// `names`: comma-separated, the TLSA base domain first.
    fn verifier(tlsa: Vec<Tlsa>, names: &str) -> CertCheck {
        CertCheck {
            provider: provider(),
            dane: Some(Dane {
                tlsa,
                names: names.split(',').map(str::to_string).collect(),
            }),
        }
    }

    fn check(v: &CertCheck, chain: &[CertificateDer<'static>]) -> Result<(), rustls::Error> {
        let name = ServerName::try_from("ignored.example").unwrap();
        v.verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    fn rec(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> Tlsa {
        Tlsa {
            usage,
            selector,
            matching,
            data,
        }
    }

    #[test]
    fn dane_ee_matches_the_key_or_the_certificate_whatever_its_name() {
        // A self-signed certificate for another name: DANE-EE ignores names
        // and issuers (RFC 7672 §3.1.1).
        let c = rcgen::generate_simple_self_signed(vec!["elsewhere.example".into()]).unwrap();
        let der = c.cert.der().clone();
        let spki_hash = sha256(&spki(&der));
        for tlsa in [
            rec(3, 1, 1, spki_hash.clone()),
            rec(3, 0, 1, sha256(&der)),
            rec(3, 1, 0, spki(&der)),
            rec(
                3,
                0,
                2,
                digest::digest(&digest::SHA512, &der).as_ref().to_vec(),
            ),
        ] {
            assert!(tlsa.is_usable());
            check(
                &verifier(vec![tlsa.clone()], "mx.example"),
                std::slice::from_ref(&der),
            )
            .unwrap_or_else(|e| panic!("{tlsa:?}: {e}"));
        }
        let mut wrong = spki_hash;
        wrong[0] ^= 1;
        let err = check(&verifier(vec![rec(3, 1, 1, wrong)], "mx.example"), &[der]).unwrap_err();
        assert!(err.to_string().contains(DANE_NO_MATCH), "{err}");
    }

    #[test]
    fn usable_records_are_dane_ta_or_ee_with_known_fields() {
        assert!(
            !rec(1, 1, 1, vec![0; 32]).is_usable(),
            "PKIX-EE: not for SMTP"
        );
        assert!(
            !rec(0, 0, 1, vec![0; 32]).is_usable(),
            "PKIX-TA: not for SMTP"
        );
        assert!(!rec(3, 2, 1, vec![0; 32]).is_usable(), "unknown selector");
        assert!(
            !rec(3, 1, 3, vec![0; 32]).is_usable(),
            "unknown matching type"
        );
        assert!(!rec(3, 1, 1, vec![0; 31]).is_usable(), "short SHA-256");
        assert!(
            !rec(2, 1, 2, vec![0; 32]).is_usable(),
            "SHA-512 of 32 bytes"
        );
        assert!(rec(2, 1, 2, vec![0; 64]).is_usable());
    }

    #[test]
    fn dane_ta_chains_to_the_matched_certificate_and_checks_the_name() {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["mx.example".into()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        let chain = [leaf.der().clone(), ca.der().clone()];
        let ta = rec(2, 1, 1, sha256(&spki(ca.der())));
        check(&verifier(vec![ta.clone()], "mx.example"), &chain).unwrap();
        // The name is checked for DANE-TA (RFC 7672 §3.2.2) ...
        let err = check(&verifier(vec![ta.clone()], "other.example"), &chain).unwrap_err();
        assert!(err.to_string().contains("not valid for name"), "{err}");
        // An MX alias: the leaf may name the expanded name (the TLSA base
        // domain) or the MX host name; neither matching is refused.
        check(
            &verifier(vec![ta.clone()], "real.example,mx.example"),
            &chain,
        )
        .unwrap();
        check(
            &verifier(vec![ta.clone()], "mx.example,alias.example"),
            &chain,
        )
        .unwrap();
        let err = check(&verifier(vec![ta.clone()], "a.example,b.example"), &chain).unwrap_err();
        assert!(err.to_string().contains("not valid for name"), "{err}");
        // ... and the TA must be in the presented chain.
        let err = check(&verifier(vec![ta], "mx.example"), &chain[..1]).unwrap_err();
        assert!(err.to_string().contains(DANE_NO_MATCH), "{err}");
        // A DANE-EE record of the CA does not make the leaf acceptable.
        let err = check(
            &verifier(vec![rec(3, 1, 1, sha256(&spki(ca.der())))], "mx.example"),
            &chain,
        )
        .unwrap_err();
        assert!(err.to_string().contains(DANE_NO_MATCH), "{err}");
    }
}
