//! What `apizee-bridge redrive` reads from a broker: dead letters and where
//! each is kept, so that it can be skipped (Kafka) or removed (NATS) later.

use bytes::Bytes;

/// A dead letter as the broker keeps it.
pub struct Stored {
    /// Where it is: a stream sequence, or `partition:offset`.
    pub position: Position,
    pub payload: Bytes,
    /// Its `apizee-rejection-reason` header, when it has one.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Position {
    Sequence(u64),
    Offset { partition: i32, offset: i64 },
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position::Sequence(n) => write!(f, "seq {n}"),
            Position::Offset { partition, offset } => write!(f, "{partition}:{offset}"),
        }
    }
}
