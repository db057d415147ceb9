//! The SMTP session state machine: states, the command table, and the pure
//! sequencing function [`next`].
//!
//! Sequencing (which command may come when) lives here and nowhere else;
//! capability checks (is STARTTLS offered, is the SIZE acceptable) and
//! policy (hooks) live in the `session` handlers.

use palisade_smtp_proto::{Command, Reply};

use crate::hooks::Envelope;

/// Where a session is. Each variant holds exactly the data that phase has.
#[derive(Debug)]
pub enum SessionState {
    /// Banner sent, no HELO/EHLO yet (also right after STARTTLS).
    Connected,
    /// After HELO/EHLO, no transaction open.
    Greeted,
    /// After MAIL: collecting recipients.
    InTransaction { env: Envelope },
    /// DATA accepted (354 sent); the content is being read.
    ReceivingData,
    /// At least one non-LAST BDAT chunk received.
    ReceivingBdat { env: Envelope, message: Vec<u8> },
    /// QUIT or a 421: nothing more is read.
    Closing,
}

impl SessionState {
    /// Short name for trace lines.
    pub fn name(&self) -> &'static str {
        match self {
            SessionState::Connected => "connected",
            SessionState::Greeted => "greeted",
            SessionState::InTransaction { .. } => "in-transaction",
            SessionState::ReceivingData => "receiving-data",
            SessionState::ReceivingBdat { .. } => "receiving-bdat",
            SessionState::Closing => "closing",
        }
    }
}

/// What a command needs from the state before it may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Allowed in any state.
    Nothing,
    /// HELO/EHLO done, no transaction open.
    Greeting,
    /// No transaction open (HELO not required).
    NoTransaction,
    /// MAIL accepted, no BDAT chunk yet.
    Mail,
    /// MAIL and at least one RCPT accepted, no BDAT chunk yet.
    Recipients,
    /// Like `Recipients`, or a BDAT transaction already under way.
    RecipientsOrChunks,
}

/// One row of the command table.
#[derive(Clone, Copy, Debug)]
pub struct CommandSpec {
    pub verb: &'static str,
    pub needs: Needs,
    /// RFC 2920 §3.1: the client waits for this reply before sending more.
    pub ends_pipeline_group: bool,
    /// Only meaningful on a Submission listener.
    pub msa_only: bool,
}

/// The command table: the specification of sequencing.
///
/// | verb | needs | ends pipeline group | MSA only |
/// |---|---|---|---|
/// | EHLO, HELO | nothing (resets the transaction) | yes | |
/// | STARTTLS | no open transaction | yes | |
/// | AUTH | greeting, no transaction | yes | yes |
/// | MAIL | greeting, no transaction | | |
/// | RCPT | MAIL | | |
/// | DATA | MAIL + RCPT | yes | |
/// | BDAT | MAIL + RCPT, or a BDAT under way | LAST only | |
/// | RSET, NOOP, HELP, VRFY, EXPN | nothing | NOOP, VRFY, EXPN | |
/// | QUIT | nothing | yes | |
pub const COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        verb: "EHLO",
        needs: Needs::Nothing,
        ends_pipeline_group: true,
        msa_only: false,
    },
    CommandSpec {
        verb: "HELO",
        needs: Needs::Nothing,
        ends_pipeline_group: true,
        msa_only: false,
    },
    CommandSpec {
        verb: "STARTTLS",
        needs: Needs::NoTransaction,
        ends_pipeline_group: true,
        msa_only: false,
    },
    CommandSpec {
        verb: "AUTH",
        needs: Needs::Greeting,
        ends_pipeline_group: true,
        msa_only: true,
    },
    CommandSpec {
        verb: "MAIL",
        needs: Needs::Greeting,
        ends_pipeline_group: false,
        msa_only: false,
    },
    CommandSpec {
        verb: "RCPT",
        needs: Needs::Mail,
        ends_pipeline_group: false,
        msa_only: false,
    },
    CommandSpec {
        verb: "DATA",
        needs: Needs::Recipients,
        ends_pipeline_group: true,
        msa_only: false,
    },
    CommandSpec {
        verb: "BDAT",
        needs: Needs::RecipientsOrChunks,
        ends_pipeline_group: false,
        msa_only: false,
    },
    CommandSpec {
        verb: "RSET",
        needs: Needs::Nothing,
        ends_pipeline_group: false,
        msa_only: false,
    },
    CommandSpec {
        verb: "NOOP",
        needs: Needs::Nothing,
        ends_pipeline_group: true,
        msa_only: false,
    },
    CommandSpec {
        verb: "HELP",
        needs: Needs::Nothing,
        ends_pipeline_group: true,
        msa_only: false,
    },
    CommandSpec {
        verb: "VRFY",
        needs: Needs::Nothing,
        ends_pipeline_group: true,
        msa_only: false,
    },
    CommandSpec {
        verb: "EXPN",
        needs: Needs::Nothing,
        ends_pipeline_group: true,
        msa_only: false,
    },
    CommandSpec {
        verb: "QUIT",
        needs: Needs::Nothing,
        ends_pipeline_group: true,
        msa_only: false,
    },
];

/// The table row for a command; `None` for unknown verbs.
pub fn spec(cmd: &Command) -> Option<&'static CommandSpec> {
    let verb = cmd.verb();
    COMMANDS.iter().find(|c| c.verb == verb)
}

/// What an allowed command will do to the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// HELO/EHLO: to `Greeted`, dropping any transaction.
    Greet,
    /// STARTTLS: handshake, then back to `Connected`.
    Handshake,
    /// AUTH: authentication exchange (not implemented yet).
    Authenticate,
    /// MAIL: to `InTransaction`.
    BeginTransaction,
    /// RCPT: add a recipient.
    AddRecipient,
    /// DATA: to `ReceivingData`.
    ReceiveData,
    /// BDAT: receive a chunk.
    ReceiveChunk,
    /// RSET: to `Greeted` (or stay `Connected`).
    Reset,
    /// NOOP, HELP, VRFY, EXPN, unknown verbs: no state change.
    Stay,
    /// QUIT: to `Closing`.
    Close,
}

/// Pure sequencing: may `cmd` run in `state`, and what will it do?
/// Errors are `503 5.5.1` (RFC 5321 §4.1.4).
pub fn next(state: &SessionState, cmd: &Command) -> Result<Transition, Reply> {
    use SessionState as S;
    let Some(spec) = spec(cmd) else {
        return Ok(Transition::Stay);
    };
    let in_tx = matches!(state, S::InTransaction { .. } | S::ReceivingBdat { .. });
    let has_rcpts = matches!(state, S::InTransaction { env } if !env.rcpts.is_empty());
    let ok = match spec.needs {
        Needs::Nothing => Ok(()),
        Needs::NoTransaction if in_tx => Err("Transaction in progress, send RSET first"),
        Needs::NoTransaction => Ok(()),
        Needs::Greeting => match state {
            S::Connected => Err("Send HELO/EHLO first"),
            _ if in_tx => Err("Nested MAIL command"),
            _ => Ok(()),
        },
        Needs::Mail => match state {
            S::InTransaction { .. } => Ok(()),
            S::ReceivingBdat { .. } => Err("BDAT transaction in progress"),
            _ => Err("Send MAIL first"),
        },
        Needs::Recipients => match state {
            S::InTransaction { .. } if has_rcpts => Ok(()),
            S::InTransaction { .. } => Err("Send RCPT first (no valid recipients)"),
            S::ReceivingBdat { .. } => Err("DATA not allowed in a BDAT transaction"),
            _ => Err("Send MAIL first"),
        },
        Needs::RecipientsOrChunks => match state {
            S::InTransaction { .. } if has_rcpts => Ok(()),
            S::ReceivingBdat { .. } => Ok(()),
            S::InTransaction { .. } => Err("Send RCPT first (no valid recipients)"),
            _ => Err("Send MAIL first"),
        },
    };
    ok.map_err(Reply::bad_sequence)?;
    Ok(match cmd {
        Command::Helo(_) | Command::Ehlo(_) => Transition::Greet,
        Command::StartTls => Transition::Handshake,
        Command::Auth { .. } => Transition::Authenticate,
        Command::Mail { .. } => Transition::BeginTransaction,
        Command::Rcpt { .. } => Transition::AddRecipient,
        Command::Data => Transition::ReceiveData,
        Command::Bdat { .. } => Transition::ReceiveChunk,
        Command::Rset => Transition::Reset,
        Command::Quit => Transition::Close,
        Command::Noop
        | Command::Help
        | Command::Vrfy(_)
        | Command::Expn(_)
        | Command::Unknown(_) => Transition::Stay,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_smtp_proto::parse_command;

    fn tx(rcpts: usize) -> SessionState {
        let mut env = Envelope::default();
        for i in 0..rcpts {
            env.rcpts
                .push((format!("r{i}@x.example"), Default::default()));
        }
        SessionState::InTransaction { env }
    }

    fn bdat() -> SessionState {
        SessionState::ReceivingBdat {
            env: Envelope::default(),
            message: Vec::new(),
        }
    }

    #[test]
    fn sequencing_table() {
        use Transition as T;
        let cases: Vec<(&str, SessionState, &str, Result<T, u16>)> = vec![
            (
                "ehlo_first_is_fine",
                SessionState::Connected,
                "EHLO a",
                Ok(T::Greet),
            ),
            ("ehlo_mid_transaction_resets", tx(1), "EHLO a", Ok(T::Greet)),
            (
                "mail_before_helo_is_503",
                SessionState::Connected,
                "MAIL FROM:<a@b.c>",
                Err(503),
            ),
            (
                "mail_after_helo_begins",
                SessionState::Greeted,
                "MAIL FROM:<a@b.c>",
                Ok(T::BeginTransaction),
            ),
            ("nested_mail_is_503", tx(0), "MAIL FROM:<a@b.c>", Err(503)),
            (
                "rcpt_before_mail_is_503",
                SessionState::Greeted,
                "RCPT TO:<a@b.c>",
                Err(503),
            ),
            (
                "rcpt_before_helo_is_503",
                SessionState::Connected,
                "RCPT TO:<a@b.c>",
                Err(503),
            ),
            (
                "rcpt_after_mail_adds",
                tx(0),
                "RCPT TO:<a@b.c>",
                Ok(T::AddRecipient),
            ),
            (
                "rcpt_during_bdat_is_503",
                bdat(),
                "RCPT TO:<a@b.c>",
                Err(503),
            ),
            (
                "data_without_mail_is_503",
                SessionState::Greeted,
                "DATA",
                Err(503),
            ),
            ("data_without_rcpt_is_503", tx(0), "DATA", Err(503)),
            ("data_with_rcpt_receives", tx(2), "DATA", Ok(T::ReceiveData)),
            ("data_during_bdat_is_503", bdat(), "DATA", Err(503)),
            ("bdat_without_rcpt_is_503", tx(0), "BDAT 1", Err(503)),
            (
                "bdat_without_mail_is_503",
                SessionState::Greeted,
                "BDAT 1 LAST",
                Err(503),
            ),
            (
                "bdat_with_rcpt_receives",
                tx(1),
                "BDAT 1",
                Ok(T::ReceiveChunk),
            ),
            ("bdat_continues", bdat(), "BDAT 1 LAST", Ok(T::ReceiveChunk)),
            ("rset_anywhere", bdat(), "RSET", Ok(T::Reset)),
            (
                "rset_before_helo",
                SessionState::Connected,
                "RSET",
                Ok(T::Reset),
            ),
            ("noop_anywhere", tx(1), "NOOP", Ok(T::Stay)),
            (
                "vrfy_anywhere",
                SessionState::Connected,
                "VRFY x",
                Ok(T::Stay),
            ),
            ("quit_anywhere", tx(1), "QUIT", Ok(T::Close)),
            (
                "starttls_before_helo",
                SessionState::Connected,
                "STARTTLS",
                Ok(T::Handshake),
            ),
            (
                "starttls_in_transaction_is_503",
                tx(1),
                "STARTTLS",
                Err(503),
            ),
            (
                "auth_before_helo_is_503",
                SessionState::Connected,
                "AUTH PLAIN",
                Err(503),
            ),
            ("auth_in_transaction_is_503", tx(0), "AUTH PLAIN", Err(503)),
            (
                "auth_after_helo",
                SessionState::Greeted,
                "AUTH PLAIN",
                Ok(T::Authenticate),
            ),
            ("unknown_is_left_to_the_session", tx(1), "FOO", Ok(T::Stay)),
        ];
        for (name, state, line, want) in cases {
            let cmd = parse_command(line.as_bytes()).unwrap();
            let got = next(&state, &cmd).map_err(|r| {
                assert_eq!(r.enhanced.unwrap().to_string(), "5.5.1", "{name}");
                r.code
            });
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn every_known_verb_has_a_table_row() {
        for line in [
            "HELO a",
            "EHLO a",
            "MAIL FROM:<>",
            "RCPT TO:<postmaster>",
            "DATA",
            "BDAT 1",
            "RSET",
            "NOOP",
            "QUIT",
            "STARTTLS",
            "AUTH PLAIN",
            "VRFY a",
            "EXPN a",
            "HELP",
        ] {
            let cmd = parse_command(line.as_bytes()).unwrap();
            assert!(spec(&cmd).is_some(), "{line}");
        }
    }
}
