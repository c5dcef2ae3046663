//! The Kafka sink's flags, turned into [`KafkaSettings`].

use std::time::Duration;

use clap::Args;

use crate::config::{ConfigError, Secret};
use crate::sink::SinkContext;

/// Flags under "Kafka (--sink kafka)" in `--help`.
#[derive(Debug, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap brokers, comma-separated host:port.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_KAFKA_BROKERS",
        value_name = "HOST:PORT,...",
        default_value = "127.0.0.1:9092"
    )]
    pub kafka_brokers: String,

    /// Any librdkafka producer property, as key=value; repeat the flag, or
    /// separate with ';' in the env var. Applied after the bridge's defaults
    /// (acks=all, enable.idempotence=true, compression.type=none, linger.ms=0,
    /// message.timeout.ms=--publish-timeout, reconnect.backoff.max.ms=1000), so
    /// it can override them.
    /// Examples: security.protocol=SASL_SSL, sasl.mechanisms=SCRAM-SHA-512.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_KAFKA_OPTION",
        value_name = "KEY=VALUE",
        value_delimiter = ';',
        hide_env_values = true
    )]
    pub kafka_option: Vec<String>,

    /// At start-up, create every topic the template can produce (one per
    /// object type and event with the default template) and the dead-letter
    /// topic; existing topics are left alone. /readyz stays 503
    /// until done.
    #[arg(long, env = "APIZEE_BRIDGE_KAFKA_CREATE_TOPICS")]
    pub kafka_create_topics: bool,

    /// Partitions of topics made by --kafka-create-topics.
    #[arg(long, env = "APIZEE_BRIDGE_KAFKA_PARTITIONS", default_value_t = 3)]
    pub kafka_partitions: i32,

    /// Replication factor of topics made by --kafka-create-topics.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_KAFKA_REPLICATION_FACTOR",
        default_value_t = 3
    )]
    pub kafka_replication_factor: i32,
}

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    /// A topic the template produces, when one is known in advance: the
    /// readiness probe asks for its metadata rather than for every topic in
    /// the cluster.
    pub probe_topic: Option<String>,
    pub options: Vec<KafkaOption>,
    pub create_topics: Option<TopicCreation>,
    pub publish_timeout: Duration,
}

/// One `--kafka-option`. The value may be a password, so it is a [`Secret`].
#[derive(Debug, Clone)]
pub struct KafkaOption {
    pub key: String,
    pub value: Secret,
}

#[derive(Debug, Clone)]
pub struct TopicCreation {
    pub topics: Vec<String>,
    pub partitions: i32,
    pub replication_factor: i32,
}

impl KafkaArgs {
    pub fn settings(self, context: &SinkContext<'_>) -> Result<KafkaSettings, ConfigError> {
        let (template, dead_letter_topic) = (context.template, context.dead_letter_topic);
        let brokers = &self.kafka_brokers;
        let (partitions, replication_factor) =
            (self.kafka_partitions, self.kafka_replication_factor);
        if brokers.split(',').all(|b| b.trim().is_empty()) {
            return Err(ConfigError::new("--kafka-brokers", "names no broker"));
        }
        let options = self
            .kafka_option
            .iter()
            .filter(|o| !o.trim().is_empty())
            .map(|option| match option.split_once('=') {
                Some((key, value)) if !key.trim().is_empty() => Ok(KafkaOption {
                    key: key.trim().to_owned(),
                    value: Secret::new(value.to_owned()),
                }),
                // The text may hold a password: name the flag, not the value.
                _ => Err(ConfigError::new(
                    "--kafka-option",
                    "expected KEY=VALUE, such as security.protocol=SASL_SSL",
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let create_topics = if self.kafka_create_topics {
            if partitions < 1 {
                return Err(ConfigError::new("--kafka-partitions", "must be at least 1"));
            }
            if replication_factor < 1 {
                return Err(ConfigError::new(
                    "--kafka-replication-factor",
                    "must be at least 1",
                ));
            }
            let mut topics = template.all_topics().ok_or_else(|| {
                ConfigError::new(
                    "--kafka-create-topics",
                    format!(
                        "the topic template {template} uses {{objectId}}, so its topics cannot be \
                     known in advance"
                    ),
                )
            })?;
            // Dead letters are lost on a cluster that does not create topics on
            // demand unless their topic is made with the others.
            if let Some(dead_letter) = dead_letter_topic
                && !topics.iter().any(|t| t == dead_letter)
            {
                topics.push(dead_letter.to_owned());
            }
            Some(TopicCreation {
                topics,
                partitions,
                replication_factor,
            })
        } else {
            None
        };
        Ok(KafkaSettings {
            probe_topic: template
                .all_topics()
                .and_then(|topics| topics.into_iter().next()),
            brokers: brokers
                .split(',')
                .map(str::trim)
                .filter(|b| !b.is_empty())
                .collect::<Vec<_>>()
                .join(","),
            options,
            create_topics,
            publish_timeout: context.publish_timeout,
        })
    }
}
