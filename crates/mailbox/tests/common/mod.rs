//! The mailbox tests' scratch directory: the workspace's one.
pub use palisade_testsupport::TempDir;
