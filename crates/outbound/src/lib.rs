//! palisade-outbound
