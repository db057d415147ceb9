use std::io;

/// Errors of the directory and the mail store.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    /// The user or alias already exists.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The referenced user (e.g. the target of an alias) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A malformed address, folder name, key or argument.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The LMDB map is full: the stage should answer 452 4.3.1 and keep the message upstream.
    #[error("storage full")]
    StorageFull,
    /// Any other LMDB error.
    #[error("lmdb: {0}")]
    Lmdb(lmdb::Error),
    /// A stored record could not be (de)serialised.
    #[error("record encoding: {0}")]
    Encoding(#[from] postcard::Error),
    /// Password hashing failed.
    #[error("password hash: {0}")]
    Hash(String),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

impl From<lmdb::Error> for MailboxError {
    fn from(e: lmdb::Error) -> Self {
        match e {
            lmdb::Error::MapFull => MailboxError::StorageFull,
            other => MailboxError::Lmdb(other),
        }
    }
}

impl MailboxError {
    /// True for errors caused by running out of space (map full / disk full).
    pub fn is_storage_full(&self) -> bool {
        match self {
            MailboxError::StorageFull => true,
            MailboxError::Io(e) => e.raw_os_error() == Some(28), // ENOSPC
            MailboxError::Lmdb(lmdb::Error::Other(code)) => *code == 28,
            _ => false,
        }
    }
}
