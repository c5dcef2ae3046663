//! The webhook listener's access checks end to end: HTTP Basic, HMAC
//! signatures with a timestamp, the source allow-list behind a trusted
//! proxy, and the User-Agent filter. Every refusal is a 401 or 403 that
//! does not say which check failed, is counted by reason, and publishes
//! nothing.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::support::answers::{assert_error, bridge_with};
use crate::support::*;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use ring::hmac;

async fn post(bridge: &Bridge, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut all = vec![("content-type", "application/JSON")];
    all.extend_from_slice(headers);
    bridge
        .request(
            "POST",
            "/webhooks",
            &all,
            Bytes::copy_from_slice(body.as_bytes()),
        )
        .await
}

/// A refusal: the same JSON answer whichever check failed, 401
/// `unauthorized` or 403 `forbidden`.
fn assert_refused(reply: &Reply, status: u16, case: &str) {
    let code = if status == 401 {
        "unauthorized"
    } else {
        "forbidden"
    };
    assert_error(reply, status, code, case);
}

fn auth_failures(metrics: &str, reason: &str) -> f64 {
    metric_value(
        metrics,
        &format!("apizee_bridge_auth_failures_total{{reason=\"{reason}\"}}"),
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn hex_mac(key: &str, message: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes());
    hmac::sign(&key, message)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn basic_auth_with_a_challenge_on_401() {
    let (bridge, sink) = bridge_with(&["--basic-auth", "apizee:correct horse"]).await;
    let good = format!("Basic {}", STANDARD.encode("apizee:correct horse"));
    let wrong = format!("Basic {}", STANDARD.encode("apizee:battery staple"));

    let refused = post(&bridge, &[("authorization", &wrong)], SPEC_TICKET).await;
    assert_refused(&refused, 401, "wrong password");
    assert_eq!(
        refused.header("www-authenticate"),
        Some(r#"Basic realm="apizee-bridge", charset="UTF-8""#)
    );
    assert_refused(
        &post(&bridge, &[], SPEC_TICKET).await,
        401,
        "no credentials",
    );
    assert!(sink.messages().is_empty());

    let accepted = post(&bridge, &[("authorization", &good)], SPEC_TICKET).await;
    assert_eq!(accepted.status, 200, "{}", accepted.text());
    assert_eq!(sink.messages().len(), 1);
    assert_eq!(auth_failures(&bridge.metrics().await, "basic_auth"), 2.0);
}

#[tokio::test]
async fn hmac_signature_with_timestamp_covers_the_exact_body() {
    let (bridge, sink) = bridge_with(&[
        "--hmac-secret",
        "old-key,new-key",
        "--hmac-header",
        "X-Hub-Signature-256",
        "--hmac-timestamp-header",
        "X-Signature-Timestamp",
        "--hmac-tolerance",
        "5m",
    ])
    .await;
    let sign = |key: &str, ts: u64, body: &str| {
        format!("sha256={}", hex_mac(key, format!("{ts}.{body}").as_bytes()))
    };
    let ts = now();
    let ts_text = ts.to_string();

    for key in ["old-key", "new-key"] {
        let signature = sign(key, ts, SPEC_TICKET);
        let reply = post(
            &bridge,
            &[
                ("x-hub-signature-256", &signature),
                ("x-signature-timestamp", &ts_text),
            ],
            SPEC_TICKET,
        )
        .await;
        assert_eq!(reply.status, 200, "{key}: {}", reply.text());
    }
    assert_eq!(sink.messages().len(), 2);

    // One changed byte in the body, same signature.
    let signature = sign("new-key", ts, SPEC_TICKET);
    let tampered = SPEC_TICKET.replacen("100", "101", 1);
    assert_ne!(tampered, SPEC_TICKET);
    let reply = post(
        &bridge,
        &[
            ("x-hub-signature-256", &signature),
            ("x-signature-timestamp", &ts_text),
        ],
        &tampered,
    )
    .await;
    assert_refused(&reply, 401, "tampered body");

    // A correctly signed request, replayed after the tolerance.
    let old = ts - 600;
    let replayed = post(
        &bridge,
        &[
            ("x-hub-signature-256", &sign("new-key", old, SPEC_TICKET)),
            ("x-signature-timestamp", &old.to_string()),
        ],
        SPEC_TICKET,
    )
    .await;
    assert_refused(&replayed, 401, "replayed");
    // Both 401s read the same: the sender cannot tell which check failed.
    assert_eq!(reply.body, replayed.body);

    // A wrong signature on an invalid body is a 401, not a 422: an
    // unauthenticated sender learns nothing about what the endpoint expects.
    let unsigned = post(
        &bridge,
        &[
            ("x-hub-signature-256", "sha256=00"),
            ("x-signature-timestamp", &ts_text),
        ],
        "{\"not\":\"an envelope\"}",
    )
    .await;
    assert_refused(&unsigned, 401, "a wrong signature on an invalid body");

    assert_eq!(sink.messages().len(), 2, "nothing more was published");
    let metrics = bridge.metrics().await;
    assert_eq!(auth_failures(&metrics, "signature"), 2.0);
    assert_eq!(auth_failures(&metrics, "timestamp"), 1.0);
}

#[tokio::test]
async fn allow_list_trusts_forwarded_for_only_from_trusted_proxies() {
    // The test connects from 127.0.0.1.
    let (direct, sink) = bridge_with(&["--allow-cidr", "203.0.113.0/24"]).await;
    // Without a trusted proxy, X-Forwarded-For is anyone's to write.
    let forged = post(&direct, &[("x-forwarded-for", "203.0.113.5")], SPEC_TICKET).await;
    assert_refused(&forged, 403, "forged forwarded-for");
    assert!(sink.messages().is_empty());
    assert_eq!(
        auth_failures(&direct.metrics().await, "source_not_allowed"),
        1.0
    );

    let (proxied, sink) = bridge_with(&[
        "--allow-cidr",
        "203.0.113.0/24",
        "--trusted-proxy",
        "127.0.0.0/8",
    ])
    .await;
    let through_proxy = post(
        &proxied,
        &[("x-forwarded-for", "203.0.113.5, 127.0.0.2")],
        SPEC_TICKET,
    )
    .await;
    assert_eq!(through_proxy.status, 200, "{}", through_proxy.text());
    // A client that prepends an allowed address to its own gains nothing.
    let prepended = post(
        &proxied,
        &[("x-forwarded-for", "203.0.113.5, 198.51.100.7")],
        SPEC_TICKET,
    )
    .await;
    assert_refused(&prepended, 403, "prepended address");
    // The proxy itself is not a client in the allow-list.
    assert_refused(
        &post(&proxied, &[], SPEC_TICKET).await,
        403,
        "the proxy itself",
    );
    assert_eq!(sink.messages().len(), 1);

    let (local, sink) = bridge_with(&["--allow-cidr", "127.0.0.0/8,::1"]).await;
    assert_eq!(post(&local, &[], SPEC_TICKET).await.status, 200);
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn user_agent_filter_and_checks_combined() {
    let (bridge, sink) = bridge_with(&[
        "--require-user-agent",
        "Cloud Apizee",
        "--auth-header",
        "X-Apizee-Secret",
        "--auth-token",
        "s3cret",
        "--allow-cidr",
        "127.0.0.1",
    ])
    .await;
    let no_agent = post(&bridge, &[("x-apizee-secret", "s3cret")], SPEC_TICKET).await;
    assert_refused(&no_agent, 403, "no agent");
    let wrong_secret = post(
        &bridge,
        &[("user-agent", "Cloud Apizee"), ("x-apizee-secret", "nope")],
        SPEC_TICKET,
    )
    .await;
    assert_refused(&wrong_secret, 401, "wrong secret");
    assert!(wrong_secret.header("www-authenticate").is_none());
    assert!(sink.messages().is_empty());

    let accepted = post(
        &bridge,
        &[
            ("user-agent", "Cloud Apizee"),
            ("x-apizee-secret", "s3cret"),
        ],
        SPEC_TICKET,
    )
    .await;
    assert_eq!(accepted.status, 200, "{}", accepted.text());
    assert_eq!(sink.messages().len(), 1);

    let metrics = bridge.metrics().await;
    assert_eq!(auth_failures(&metrics, "user_agent"), 1.0);
    assert_eq!(auth_failures(&metrics, "shared_secret"), 1.0);
    assert_eq!(
        metric_value(
            &metrics,
            "apizee_bridge_rejections_total{reason=\"forbidden\"}"
        ),
        1.0
    );
    // Every reason is exported from the start, at 0 until it happens.
    assert!(
        metrics.contains("apizee_bridge_auth_failures_total{reason=\"basic_auth\"} 0"),
        "{metrics}"
    );
}
