//! palisade-antivirus
