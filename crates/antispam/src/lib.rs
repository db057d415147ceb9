//! palisade-antispam
