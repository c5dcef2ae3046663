//! The flags that decide what is valid and where it goes: the topic
//! template, its prefix, and strict enum checking.

use clap::Args;

use super::cloudevents::CloudEvents;
use super::{DEFAULT_TEMPLATE, TopicTemplate};
use crate::config::ConfigError;
use crate::envelope::Rules;

/// Flags under "Validation and routing" in `--help`.
#[derive(Debug, Args)]
pub struct RouteArgs {
    /// Refuse (422) enum values the spec does not list, such as a new ticket
    /// state. By default they are published and counted in
    /// apizee_bridge_unknown_enum_values_total.
    #[arg(long, env = "APIZEE_BRIDGE_STRICT")]
    pub strict: bool,

    /// Value of {prefix} in the topic template.
    #[arg(long, env = "APIZEE_BRIDGE_TOPIC_PREFIX", default_value = "apizee")]
    pub topic_prefix: String,

    /// Topic (NATS subject) for each message. Placeholders: {prefix},
    /// {object}, {event}, {objectId}.
    #[arg(long, env = "APIZEE_BRIDGE_TOPIC_TEMPLATE", default_value = DEFAULT_TEMPLATE)]
    pub topic_template: String,
}

/// How envelopes are checked and where their messages go.
#[derive(Debug, Clone)]
pub struct Routing {
    pub template: TopicTemplate,
    pub rules: Rules,
    /// `--cloudevents`: what makes each message a CloudEvent too.
    pub cloudevents: Option<CloudEvents>,
}

impl RouteArgs {
    /// `cloudevents` is the checked "CloudEvents" group
    /// ([`super::cloudevents::CloudEventsArgs::settings`]).
    pub fn settings(self, cloudevents: Option<CloudEvents>) -> Result<Routing, ConfigError> {
        let template =
            TopicTemplate::parse(&self.topic_template, &self.topic_prefix).map_err(|e| {
                // A template that works with the default prefix is failed by the prefix.
                let flag = if TopicTemplate::parse(&self.topic_template, "apizee").is_ok() {
                    "--topic-prefix"
                } else {
                    "--topic-template"
                };
                ConfigError::new(flag, e.to_string())
            })?;
        Ok(Routing {
            rules: Rules {
                strict: self.strict,
                object_id_in_topic: template.uses_object_id(),
            },
            template,
            cloudevents,
        })
    }
}
