//! The runtime's error: a message naming what was wrong.

/// A run-time failure (bad sizes, bad mask data, a thread that cannot
/// start); the message says what was expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RtError(pub String);

impl RtError {
    pub fn new(message: impl Into<String>) -> RtError {
        RtError(message.into())
    }
}
