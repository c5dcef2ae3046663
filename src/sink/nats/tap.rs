//! `apizee-bridge tail` for NATS: a core subscription per pattern, which
//! sees every publish, JetStream's included, as it happens.

use futures_util::StreamExt;

use super::config::NatsSettings;
use crate::commands::tail::{CONNECT_TIMEOUT, Tapped};

pub async fn run(
    settings: &NatsSettings,
    patterns: &[String],
    count: Option<u64>,
    print: impl Fn(Tapped),
) -> Result<(), String> {
    let client = super::connect_once(settings, CONNECT_TIMEOUT).await?;
    let mut subscriptions = Vec::new();
    for pattern in patterns {
        subscriptions.push(
            client
                .subscribe(pattern.clone())
                .await
                .map_err(|e| format!("cannot subscribe to {pattern}: {e}"))?,
        );
    }
    // The server has the subscriptions once a round trip is done: from
    // here on, nothing published is missed.
    client.flush().await.map_err(|e| e.to_string())?;
    eprintln!(
        "apizee-bridge tail: reading {} from {}",
        patterns.join(", "),
        settings.urls.join(",")
    );
    let mut messages = futures_util::stream::select_all(subscriptions);
    let mut seen = 0;
    while count.is_none_or(|n| seen < n) {
        let Some(message) = messages.next().await else {
            return Err("the NATS connection closed".into());
        };
        let mut headers: Vec<(String, String)> = message
            .headers
            .iter()
            .flat_map(|headers| headers.iter())
            .flat_map(|(name, values)| {
                values
                    .iter()
                    .map(move |value| (name.to_string(), value.as_str().to_owned()))
            })
            .collect();
        // NATS keeps headers in no particular order: sorted, two messages
        // read alike.
        headers.sort();
        print(Tapped {
            topic: message.subject.to_string(),
            key: None,
            headers,
            payload: message.payload,
        });
        seen += 1;
    }
    Ok(())
}
