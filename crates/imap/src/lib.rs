//! palisade-imap
