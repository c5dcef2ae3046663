//! The librdkafka errors the bridge knows, in one table: what each means to
//! the sender (the [`PublishError`] it becomes) and to the producer (whether
//! it must be replaced). The same table names the series of
//! `apizee_bridge_kafka_delivery_errors_total` that exist at 0 from start-up,
//! so a dashboard or an alert on one of them sees a series before the first
//! error; a code outside the table still gets its series, by name, when it
//! first happens (bounded: [`RDKafkaErrorCode`] is a fixed enum).

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::sink::PublishError;

/// What a librdkafka error means for the webhook that got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meaning {
    /// No acknowledgement in time; the message may still be written. 503,
    /// and with a spool, 202.
    Timeout,
    /// No broker to send to. 503, and with a spool, 202.
    NotConnected,
    /// The cluster, or the producer's own queue in front of it, cannot take
    /// messages for a while (no leader, too few in-sync replicas, a full
    /// queue): nothing about this message. 503, and with a spool, 202.
    Unavailable,
    /// The cluster refused this message and would refuse it again (too
    /// large, no such topic, not allowed). 503, never spooled.
    Refused,
    /// The idempotent producer can no longer produce (fenced, or a broken
    /// sequence): 503, and the producer is replaced by a new one.
    ProducerUnusable,
}

/// Every error code the bridge knows. librdkafka retries most broker errors
/// itself until `message.timeout.ms` (leader changes, too few in-sync
/// replicas, timed-out requests) and then reports `MessageTimedOut`; they
/// are here too, for a producer that a `--kafka-option` lets report them.
pub const KNOWN: &[(RDKafkaErrorCode, Meaning)] = &[
    (RDKafkaErrorCode::MessageTimedOut, Meaning::Timeout),
    (RDKafkaErrorCode::RequestTimedOut, Meaning::Timeout),
    (RDKafkaErrorCode::OperationTimedOut, Meaning::Timeout),
    (RDKafkaErrorCode::AllBrokersDown, Meaning::NotConnected),
    (
        RDKafkaErrorCode::BrokerTransportFailure,
        Meaning::NotConnected,
    ),
    (RDKafkaErrorCode::NetworkException, Meaning::NotConnected),
    (RDKafkaErrorCode::QueueFull, Meaning::Unavailable),
    (RDKafkaErrorCode::LeaderNotAvailable, Meaning::Unavailable),
    (
        RDKafkaErrorCode::NotLeaderForPartition,
        Meaning::Unavailable,
    ),
    (RDKafkaErrorCode::NotEnoughReplicas, Meaning::Unavailable),
    (
        RDKafkaErrorCode::NotEnoughReplicasAfterAppend,
        Meaning::Unavailable,
    ),
    (RDKafkaErrorCode::KafkaStorageError, Meaning::Unavailable),
    (RDKafkaErrorCode::UnknownTopicOrPartition, Meaning::Refused),
    (RDKafkaErrorCode::UnknownTopic, Meaning::Refused),
    (RDKafkaErrorCode::TopicAuthorizationFailed, Meaning::Refused),
    (RDKafkaErrorCode::MessageSizeTooLarge, Meaning::Refused),
    (RDKafkaErrorCode::InvalidRecord, Meaning::Refused),
    (RDKafkaErrorCode::ProducerFenced, Meaning::ProducerUnusable),
    (
        RDKafkaErrorCode::InvalidProducerEpoch,
        Meaning::ProducerUnusable,
    ),
    (
        RDKafkaErrorCode::UnknownProducerId,
        Meaning::ProducerUnusable,
    ),
    (
        RDKafkaErrorCode::InvalidProducerIdMapping,
        Meaning::ProducerUnusable,
    ),
    (
        RDKafkaErrorCode::OutOfOrderSequenceNumber,
        Meaning::ProducerUnusable,
    ),
    (RDKafkaErrorCode::Fatal, Meaning::ProducerUnusable),
];

/// The label of an error without a librdkafka code (a cancelled delivery).
pub const NO_CODE: &str = "Unknown";

/// The position of `code` in [`KNOWN`], and what it means.
pub fn lookup(code: RDKafkaErrorCode) -> Option<(usize, Meaning)> {
    KNOWN
        .iter()
        .enumerate()
        .find_map(|(i, &(known, meaning))| (known == code).then_some((i, meaning)))
}

/// The `error` label of a code: the variant's name, as librdkafka's own
/// error name is not stable across versions.
pub fn label(code: Option<RDKafkaErrorCode>) -> String {
    code.map_or_else(|| NO_CODE.to_owned(), |code| format!("{code:?}"))
}

/// What an error of `meaning` (`None`: a code outside the table) answers.
pub fn publish_error(
    meaning: Option<Meaning>,
    error: &KafkaError,
    publish_timeout: Duration,
) -> PublishError {
    match meaning {
        Some(Meaning::Timeout) => PublishError::Timeout(publish_timeout),
        Some(Meaning::NotConnected) => PublishError::NotConnected,
        Some(Meaning::Unavailable) => PublishError::Unavailable(error.to_string()),
        Some(Meaning::Refused) => PublishError::Refused(error.to_string()),
        Some(Meaning::ProducerUnusable) | None => PublishError::Failed(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(code: RDKafkaErrorCode) -> KafkaError {
        KafkaError::MessageProduction(code)
    }

    fn answer(code: RDKafkaErrorCode) -> PublishError {
        let meaning = lookup(code).map(|(_, meaning)| meaning);
        publish_error(meaning, &error(code), Duration::from_secs(5))
    }

    #[test]
    fn each_code_is_in_the_table_once() {
        for (i, &(code, meaning)) in KNOWN.iter().enumerate() {
            assert_eq!(lookup(code), Some((i, meaning)), "{code:?} is listed twice");
        }
    }

    #[test]
    fn what_says_nothing_about_the_message_is_transient() {
        // Transient errors are spooled; a refusal would be refused again.
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::LeaderNotAvailable,
        ] {
            assert!(answer(code).is_transient(), "{code:?}: {:?}", answer(code));
        }
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::ProducerFenced,
            RDKafkaErrorCode::InconsistentGroupProtocol,
        ] {
            assert!(!answer(code).is_transient(), "{code:?}: {:?}", answer(code));
        }
    }

    #[test]
    fn a_timeout_names_the_publish_timeout() {
        assert_eq!(
            answer(RDKafkaErrorCode::MessageTimedOut),
            PublishError::Timeout(Duration::from_secs(5))
        );
        assert_eq!(
            answer(RDKafkaErrorCode::BrokerTransportFailure),
            PublishError::NotConnected
        );
    }

    #[test]
    fn labels_are_the_variant_names() {
        assert_eq!(
            label(Some(RDKafkaErrorCode::MessageSizeTooLarge)),
            "MessageSizeTooLarge"
        );
        assert_eq!(label(None), NO_CODE);
    }
}
