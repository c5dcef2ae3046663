//! `apizee-bridge tail` for NATS: a core subscription per pattern, which
//! sees every publish, JetStream's included, as it happens.

use futures_util::StreamExt;

use super::config::NatsSettings;
use crate::sink::tap::{CONNECT_TIMEOUT, Tapped};

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
    // `flush` only writes the SUBs to the socket. The server handles a
    // connection's operations in order, so once a probe published after them
    // comes back, it routes to every pattern: from here on, nothing
    // published is missed (saying "reading" earlier lost a test's message).
    let probe = client.new_inbox();
    let mut echo = client
        .subscribe(probe.clone())
        .await
        .map_err(|e| format!("cannot subscribe to {probe}: {e}"))?;
    client
        .publish(probe.clone(), bytes::Bytes::new())
        .await
        .map_err(|e| e.to_string())?;
    client.flush().await.map_err(|e| e.to_string())?;
    tokio::time::timeout(CONNECT_TIMEOUT, echo.next())
        .await
        .map_err(|_| {
            format!("nats-server did not confirm the subscriptions within {CONNECT_TIMEOUT:?}")
        })?
        .ok_or("the NATS connection closed")?;
    drop(echo);
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
        // A pattern such as `>` also matched the probe.
        if message.subject.as_str() == probe {
            continue;
        }
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
