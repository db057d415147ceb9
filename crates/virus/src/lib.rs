//! palisade-virus
