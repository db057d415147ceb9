//! The vocabulary of the methodology, shared by review, audit, the
//! renderers and the probes. Serialised as the `--format json` output, so
//! field names are part of the contract scripts rely on.

use serde::{Deserialize, Serialize};

/// The 14 faults of the paper (section IV, Table II), in its order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    AnyToAny,
    Forging,
    OpenRelay,
    Anonymous,
    DataSize,
    TrafficAmplification,
    NoCongestionControl,
    NoPrivacy,
    Spam,
    Virus,
    Fraud,
    Phishing,
    Slammer,
    MailBombing,
}

impl Fault {
    pub const ALL: [Fault; 14] = [
        Fault::AnyToAny,
        Fault::Forging,
        Fault::OpenRelay,
        Fault::Anonymous,
        Fault::DataSize,
        Fault::TrafficAmplification,
        Fault::NoCongestionControl,
        Fault::NoPrivacy,
        Fault::Spam,
        Fault::Virus,
        Fault::Fraud,
        Fault::Phishing,
        Fault::Slammer,
        Fault::MailBombing,
    ];

    /// Stable kebab-case id (`open-relay`), as in JSON and `--fault` flags.
    pub fn id(self) -> &'static str {
        match self {
            Fault::AnyToAny => "any-to-any",
            Fault::Forging => "forging",
            Fault::OpenRelay => "open-relay",
            Fault::Anonymous => "anonymous",
            Fault::DataSize => "data-size",
            Fault::TrafficAmplification => "traffic-amplification",
            Fault::NoCongestionControl => "no-congestion-control",
            Fault::NoPrivacy => "no-privacy",
            Fault::Spam => "spam",
            Fault::Virus => "virus",
            Fault::Fraud => "fraud",
            Fault::Phishing => "phishing",
            Fault::Slammer => "slammer",
            Fault::MailBombing => "mail-bombing",
        }
    }

    /// The paper's name for it (Table II's first column).
    pub fn name(self) -> &'static str {
        match self {
            Fault::AnyToAny => "any to any",
            Fault::Forging => "forging",
            Fault::OpenRelay => "open relay",
            Fault::Anonymous => "anonymous",
            Fault::DataSize => "data size set by sender",
            Fault::TrafficAmplification => "traffic amplification",
            Fault::NoCongestionControl => "no congestion control",
            Fault::NoPrivacy => "no privacy",
            Fault::Spam => "SPAM",
            Fault::Virus => "virus",
            Fault::Fraud => "fraud",
            Fault::Phishing => "phishing",
            Fault::Slammer => "slammer",
            Fault::MailBombing => "mail bombing",
        }
    }

    pub fn from_id(id: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.id() == id)
    }
}

/// Dependability and security attributes (Avizienis et al., the paper's
/// figure 4 rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attribute {
    Availability,
    Reliability,
    Integrity,
    Confidentiality,
    Authenticity,
    Accountability,
    NonRepudiation,
}

/// How a mechanism answers a fault (figure 5's icons).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Coverage {
    /// Square: the mechanism alone is a full solution.
    Full,
    /// Rhomboid: a full solution together with the other `Group` mechanisms of the fault.
    Group,
    /// Circle: mitigation only.
    Mitigation,
}

/// What an active test found (step 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The defense is there and acted as it should.
    Working,
    /// The defense is configured or claimed but the fault got through.
    NotWorking,
    /// No defense: the fault got through and nothing claims to stop it.
    Absent,
    /// Not run (no credentials, not applicable, unreachable, or unsafe here).
    NotTested,
}

impl Verdict {
    /// A tested fault that is not protected (exit status 1).
    pub fn is_failure(self) -> bool {
        matches!(self, Verdict::NotWorking | Verdict::Absent)
    }
}

/// One line of an SMTP/IMAP conversation kept as evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// `C` (we sent it), `S` (the server said it) or `*` (a note: connect, timeout, close).
    pub dir: char,
    pub text: String,
}

/// The verdict of one probe on one fault (and the mechanism it exercised).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Finding {
    pub fault: Fault,
    /// Table I number of the mechanism exercised, when there is one.
    pub mechanism: Option<u8>,
    /// Stable probe id (`open-relay-percent-hack`).
    pub probe: String,
    /// One line for people: what was tried.
    pub title: String,
    pub verdict: Verdict,
    /// Why this verdict (the reply that decided it).
    pub detail: String,
    pub transcript: Vec<Line>,
}
