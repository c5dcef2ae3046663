//! `apizee-bridge check` for NATS: connect and authenticate as serving
//! would, then find JetStream and the stream that will store every subject
//! the bridge publishes to, the dead-letter subject included.

use std::time::Duration;

use async_nats::jetstream;

use super::config::NatsSettings;
use super::stream::{self, Finding as Stream};
use crate::route::subject_matches;
use crate::sink::check::{Finding, Topics};

pub async fn run(settings: &NatsSettings, topics: &Topics<'_>, within: Duration) -> Vec<Finding> {
    let client = match super::connect_once(settings, within).await {
        Ok(client) => client,
        Err(e) => return vec![Finding::fail("nats", e)],
    };
    let info = client.server_info();
    let mut findings = vec![Finding::ok(
        "nats",
        format!(
            "connected to {}:{} (nats-server {}{})",
            info.host,
            info.port,
            info.version,
            // A server without a name is named by its id: noise here.
            if info.server_name.is_empty() || info.server_name == info.server_id {
                String::new()
            } else {
                format!(", {}", info.server_name)
            }
        ),
    )];
    if !settings.jetstream {
        findings.push(Finding::warn(
            "jetstream",
            "off: core NATS answers once the server has the message, but only subscribers \
             and streams already capturing the subject keep it; set --nats-jetstream",
        ));
        return findings;
    }
    let js = jetstream::ContextBuilder::new()
        .timeout(within)
        .build(client.clone());
    match js.query_account().await {
        Ok(account) => findings.push(Finding::ok(
            "jetstream",
            format!("enabled ({} streams in the account)", account.streams),
        )),
        Err(e) => {
            findings.push(Finding::fail(
                "jetstream",
                format!(
                    "not available: {e}; run nats-server with -js, or give the account \
                     JetStream"
                ),
            ));
            return findings;
        }
    }
    let subjects: Vec<String> = match &topics.all {
        Some(all) => all.clone(),
        // The topics hold the objectId: only the stream's filter is known.
        None => settings
            .stream
            .as_ref()
            .map(|s| vec![s.subjects[0].clone()])
            .unwrap_or_default(),
    };
    match &settings.stream {
        Some(managed) => match stream::check(&js, &managed.name, within).await {
            Stream::Missing => findings.push(Finding::ok(
                format!("stream {}", managed.name),
                format!(
                    "missing; serving creates it with subjects {:?}",
                    managed.subjects
                ),
            )),
            Stream::Usable { subjects: captured } => findings.extend(captures(
                &format!("stream {}", managed.name),
                &captured,
                &subjects,
                topics.dead_letter,
            )),
            Stream::NoLeader => findings.push(Finding::fail(
                format!("stream {}", managed.name),
                "has no leader (an election, or too few servers of its cluster up)",
            )),
            Stream::Unavailable(reason) | Stream::CannotCreate(reason) => {
                findings.push(Finding::fail(format!("stream {}", managed.name), reason))
            }
        },
        None => {
            let all = subjects
                .iter()
                .map(String::as_str)
                .chain(topics.dead_letter);
            let mut missing = Vec::new();
            let mut streams = Vec::new();
            for subject in all {
                match js.stream_by_subject(subject).await {
                    Ok(name) if !streams.contains(&name) => streams.push(name),
                    Ok(_) => {}
                    Err(_) => missing.push(subject.to_owned()),
                }
            }
            if missing.is_empty() {
                findings.push(Finding::ok(
                    "streams",
                    format!("every subject is captured, by {}", streams.join(", ")),
                ));
            } else {
                findings.push(Finding::fail(
                    "streams",
                    format!(
                        "no stream captures {}: publishes there get 503; create a stream \
                         for them, or let the bridge make one with --nats-stream",
                        missing.join(", ")
                    ),
                ));
            }
        }
    }
    findings
}

/// Whether an existing stream captures every subject; serving leaves an
/// existing stream as it is, so a gap stays one.
fn captures(
    what: &str,
    captured: &[String],
    subjects: &[String],
    dead_letter: Option<&str>,
) -> Vec<Finding> {
    let covered = |subject: &str| captured.iter().any(|f| subject_matches(f, subject));
    let missing: Vec<&str> = subjects
        .iter()
        .map(String::as_str)
        .filter(|s| !covered(s))
        .collect();
    let mut findings = Vec::new();
    if missing.is_empty() {
        findings.push(Finding::ok(
            what,
            format!(
                "exists and captures every subject ({})",
                captured.join(", ")
            ),
        ));
    } else {
        findings.push(Finding::fail(
            what,
            format!(
                "exists but does not capture {}: publishes there get 503; add the subjects \
                 to the stream (the bridge leaves an existing stream as it is)",
                missing.join(", ")
            ),
        ));
    }
    if let Some(dead_letter) = dead_letter.filter(|d| !covered(d)) {
        findings.push(Finding::fail(
            what,
            format!(
                "does not capture the dead-letter subject {dead_letter}: dead letters would \
                 be lost; add it to the stream's subjects"
            ),
        ));
    }
    findings
}
