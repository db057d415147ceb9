//! palisade-spam
