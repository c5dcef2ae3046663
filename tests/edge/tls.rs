//! TLS on the webhook listener: HTTP/1.1 and HTTP/2 by ALPN, client
//! certificates, reloads (changed files, SIGHUP, broken replacements), and
//! start-up errors. Certificates are made here with rcgen; the bridge runs
//! in-process with a memory sink, or as the binary where a signal or an
//! exit code is the point.

use std::sync::Arc;
use std::time::Duration;

use crate::support::answers::assert_error;
use crate::support::process::{BridgeProcess, run};
use crate::support::tls::*;
use crate::support::*;
use apizee_bridge::sink::memory::{Behaviour, MemorySink};
use bytes::Bytes;
use http::Version;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TICKET_CREATE: &str = include_str!("../samples/valid/ticket-create.json");

const FAILED_RELOADS: &str = r#"apizee_bridge_tls_reloads_total{result="failure"}"#;
const SUCCESSFUL_RELOADS: &str = r#"apizee_bridge_tls_reloads_total{result="success"}"#;
const HANDSHAKE_FAILURES: &str = "apizee_bridge_tls_handshake_failures_total";

/// A PKI with the server certificate installed, and a bridge serving it.
/// The reload handle of a bridge started with [`tls::start_bridge`].
fn bridge_tls(bridge: &Bridge) -> &apizee_bridge::tls::ServerTls {
    bridge
        .tls
        .as_deref()
        .unwrap_or_else(|| panic!("the bridge serves no TLS"))
}

async fn tls_bridge(extra: &[&str]) -> (Pki, Issued, Bridge, Arc<MemorySink>) {
    let pki = Pki::new("apizee-bridge test CA");
    let server = pki.server("bridge-one");
    let mut args = pki.install(&server);
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sink = Arc::new(MemorySink::new());
    let bridge = tls::start_bridge(&args, sink.clone()).await;
    (pki, server, bridge, sink)
}

#[tokio::test]
async fn https_http1_post_of_a_valid_webhook_is_200() {
    let (pki, server, bridge, sink) = tls_bridge(&[]).await;
    let mut connection = TlsConnection::open(bridge.addr, client_config(&pki.ca_der(), None, H1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(connection.server_certificate, server.der);
    let (version, reply) = connection
        .post(TICKET_CREATE)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(version, Version::HTTP_11);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["topic"], "apizee.ticket.create");
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0].payload,
        Bytes::from_static(TICKET_CREATE.as_bytes())
    );
    // Keep-alive: a second request on the same connection.
    let (_, reply) = connection
        .post(SPEC_TICKET)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test]
async fn http2_is_negotiated_by_alpn_and_answers_like_http1() {
    let (pki, _server, bridge, sink) = tls_bridge(&[]).await;
    let mut connection =
        TlsConnection::open(bridge.addr, client_config(&pki.ca_der(), None, H2_AND_H1))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let (version, reply) = connection
        .post(TICKET_CREATE)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(version, Version::HTTP_2);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(sink.messages().len(), 1);

    let (version, reply) = connection
        .post(r#"{"event":"upsert","time":1,"object":"ticket","objectId":1,"props":{}}"#)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(version, Version::HTTP_2);
    assert_error(&reply, 422, "invalid_envelope", "invalid over HTTP/2");
    let (_, reply) = connection.post("{").await.unwrap_or_else(|e| panic!("{e}"));
    assert_error(&reply, 400, "malformed_json", "malformed over HTTP/2");
    let (_, reply) = connection
        .request("GET", "/readyz", Bytes::new())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(sink.messages().len(), 1, "refused bodies were published");
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_no_webhook_through() {
    let (_pki, _server, bridge, sink) = tls_bridge(&[]).await;
    let answer = request(
        bridge.addr,
        "POST",
        "/webhooks",
        &[("content-type", "application/json")],
        Bytes::from(TICKET_CREATE),
    )
    .await;
    assert!(
        !matches!(&answer, Ok(reply) if reply.status < 300),
        "plain HTTP answered {answer:?}"
    );
    assert!(sink.messages().is_empty());
    let metrics_addr = bridge.metrics_addr;
    wait_until("the failed handshake to be counted", async || {
        matches!(get(metrics_addr, "/metrics").await,
            Ok(r) if metric_value(&r.text(), HANDSHAKE_FAILURES) >= 1.0)
    })
    .await;
}

#[tokio::test]
async fn a_stalled_handshake_is_dropped_after_the_header_read_timeout() {
    let (pki, _server, bridge, _sink) =
        tls_bridge(&["--header-read-timeout", "300ms", "--max-connections", "1"]).await;
    let mut stalled = TcpStream::connect(bridge.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // A few bytes of a ClientHello, then nothing.
    stalled
        .write_all(&[0x16, 0x03, 0x01])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut buffer)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the stalled connection was not closed: {read:?}"
    );
    // Its --max-connections slot is free again.
    let (_, reply) = post_once(
        bridge.addr,
        client_config(&pki.ca_der(), None, H1),
        TICKET_CREATE,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_header_read_timeout() {
    let (pki, _server, bridge, _sink) = tls_bridge(&["--header-read-timeout", "300ms"]).await;
    let mut connection =
        TlsConnection::open(bridge.addr, client_config(&pki.ca_der(), None, H2_AND_H1))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let (version, reply) = connection
        .post(TICKET_CREATE)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((version, reply.status), (Version::HTTP_2, 200));
    assert!(
        connection.closed_within(Duration::from_secs(10)).await,
        "an idle HTTP/2 connection stayed open"
    );
}

#[tokio::test]
async fn shutdown_drains_http2_requests_in_flight() {
    let (pki, _server, bridge, sink) = tls_bridge(&[]).await;
    sink.set_behaviour(Behaviour::Delay(Duration::from_millis(500)));
    let config = client_config(&pki.ca_der(), None, H2_AND_H1);
    let addr = bridge.addr;
    let in_flight = tokio::spawn(post_once(addr, config, TICKET_CREATE));
    let metrics_addr = bridge.metrics_addr;
    wait_until("the request to be in flight", async || {
        matches!(get(metrics_addr, "/metrics").await,
            Ok(r) if r.text().contains("apizee_bridge_requests_in_flight 1"))
    })
    .await;
    bridge.stop().await;
    let (version, reply) = in_flight
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((version, reply.status), (Version::HTTP_2, 200));
    assert_eq!(sink.messages().len(), 1);
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
}

#[tokio::test]
async fn client_ca_admits_only_clients_with_a_certificate_it_signed() {
    let pki = Pki::new("apizee-bridge test CA");
    let server = pki.server("bridge-one");
    let client = pki.client("apizee-platform");
    let stranger = Pki::new("some other CA").client("apizee-platform");
    let ca = pki.write("client-ca.pem", &pki.ca_pem());
    let mut args = pki.install(&server);
    args.extend(["--tls-client-ca".to_owned(), ca.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sink = Arc::new(MemorySink::new());
    let bridge = tls::start_bridge(&args, sink.clone()).await;

    for (who, identity) in [
        ("no client certificate", None),
        ("another CA's", Some(&stranger)),
    ] {
        for alpn in [H1, H2_AND_H1] {
            let answer = post_once(
                bridge.addr,
                client_config(&pki.ca_der(), identity, alpn),
                TICKET_CREATE,
            )
            .await;
            assert!(answer.is_err(), "{who}: {answer:?}");
        }
    }
    assert!(sink.messages().is_empty());
    let metrics_addr = bridge.metrics_addr;
    wait_until("the refused handshakes to be counted", async || {
        matches!(get(metrics_addr, "/metrics").await,
            Ok(r) if metric_value(&r.text(), HANDSHAKE_FAILURES) >= 4.0)
    })
    .await;

    for alpn in [H1, H2_AND_H1] {
        let (_, reply) = post_once(
            bridge.addr,
            client_config(&pki.ca_der(), Some(&client), alpn),
            TICKET_CREATE,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(sink.messages().len(), 2);
}

/// Kubernetes mounts a Secret as `..data -> ..2024_01_01_xxx/` and swaps
/// that symlink: the files' paths never change, their contents do.
#[tokio::test]
async fn changed_files_reach_new_connections_and_open_ones_keep_working() {
    let pki = Pki::new("apizee-bridge test CA");
    let first = pki.server("bridge-one");
    let second = pki.server("bridge-two");
    let mount = pki.path("secret");
    for (version, issued) in [("v1", &first), ("v2", &second)] {
        let dir = mount.join(version);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join("tls.crt"), &issued.cert_pem).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join("tls.key"), &issued.key_pem).unwrap_or_else(|e| panic!("{e}"));
    }
    let data = mount.join("..data");
    std::os::unix::fs::symlink("v1", &data).unwrap_or_else(|e| panic!("{e}"));
    for file in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{file}"), mount.join(file))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let cert = mount.join("tls.crt").display().to_string();
    let key = mount.join("tls.key").display().to_string();
    let sink = Arc::new(MemorySink::new());
    let bridge = tls::start_bridge(
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-reload-interval",
            "50ms",
        ],
        sink.clone(),
    )
    .await;
    let config = client_config(&pki.ca_der(), None, H1);
    let mut kept = TlsConnection::open(bridge.addr, config.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(kept.server_certificate, first.der);
    let (_, reply) = kept
        .post(TICKET_CREATE)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reply.status, 200);

    // The swap: a new symlink renamed over the old one, atomically.
    let next = mount.join("..data_tmp");
    std::os::unix::fs::symlink("v2", &next).unwrap_or_else(|e| panic!("{e}"));
    std::fs::rename(&next, &data).unwrap_or_else(|e| panic!("{e}"));
    wait_for_certificate(
        bridge.addr,
        &config,
        &second.der,
        "new connections to get the new certificate",
    )
    .await;

    // The connection opened before the reload is untouched.
    let (_, reply) = kept
        .post(SPEC_TICKET)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let metrics = bridge.metrics().await;
    assert!(
        metric_value(&metrics, SUCCESSFUL_RELOADS) >= 1.0,
        "{metrics}"
    );
    assert_eq!(metric_value(&metrics, FAILED_RELOADS), 0.0, "{metrics}");
}

#[tokio::test]
async fn a_broken_replacement_is_refused_and_the_old_certificate_stays() {
    let (pki, server, bridge, _sink) = tls_bridge(&["--tls-reload-interval", "50ms"]).await;
    let config = client_config(&pki.ca_der(), None, H2_AND_H1);
    let metrics_addr = bridge.metrics_addr;
    let failures_reach = |count: f64| async move {
        wait_until("the failed reload to be counted", async || {
            matches!(get(metrics_addr, "/metrics").await,
                Ok(r) if metric_value(&r.text(), FAILED_RELOADS) >= count)
        })
        .await;
    };

    // Not PEM at all.
    pki.write("cert.pem", "this is not a certificate\n");
    failures_reach(1.0).await;
    let mut connection = TlsConnection::open(bridge.addr, config.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(connection.server_certificate, server.der);
    let (_, reply) = connection
        .post(TICKET_CREATE)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reply.status, 200);

    // A valid certificate with somebody else's key.
    let other = pki.server("bridge-two");
    pki.write("cert.pem", &server.cert_pem);
    pki.write("key.pem", &other.key_pem);
    failures_reach(2.0).await;
    let connection = TlsConnection::open(bridge.addr, config.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(connection.server_certificate, server.der);

    // The same broken files are not retried at every poll.
    let metrics = bridge.metrics().await;
    let failures = metric_value(&metrics, FAILED_RELOADS);
    assert!(bridge_tls(&bridge).reload_if_changed().is_none());
    assert_eq!(
        metric_value(&bridge.metrics().await, FAILED_RELOADS),
        failures
    );

    // Fixed files are picked up again.
    pki.write("cert.pem", &other.cert_pem);
    wait_for_certificate(bridge.addr, &config, &other.der, "the fixed files to load").await;
}

#[tokio::test]
async fn the_reload_entry_point_swaps_the_certificate_in_process() {
    // Polling effectively off: only an explicit reload changes anything.
    let (pki, server, bridge, _sink) = tls_bridge(&["--tls-reload-interval", "1h"]).await;
    let config = client_config(&pki.ca_der(), None, H1);
    let next = pki.server("bridge-two");
    pki.install(&next);
    let connection = TlsConnection::open(bridge.addr, config.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(connection.server_certificate, server.der);
    bridge_tls(&bridge)
        .reload()
        .unwrap_or_else(|e| panic!("{e}"));
    let connection = TlsConnection::open(bridge.addr, config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(connection.server_certificate, next.der);
}

#[tokio::test]
async fn tls_metrics_are_exported_and_documented() {
    let (_pki, _server, bridge, _sink) = tls_bridge(&[]).await;
    let metrics = bridge.metrics().await;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .unwrap_or_else(|e| panic!("README.md: {e}"));
    for series in [SUCCESSFUL_RELOADS, FAILED_RELOADS, HANDSHAKE_FAILURES] {
        assert!(
            metrics.contains(&format!("{series} 0")),
            "{series} not at 0:\n{metrics}"
        );
    }
    for name in [
        "apizee_bridge_tls_reloads_total",
        "apizee_bridge_tls_handshake_failures_total",
    ] {
        assert!(
            readme.contains(&format!("| `{name}` |")),
            "README lacks {name}"
        );
    }
}

#[tokio::test]
async fn sighup_reloads_the_certificate_of_the_running_binary() {
    let pki = Pki::new("apizee-bridge test CA");
    let first = pki.server("bridge-one");
    let second = pki.server("bridge-two");
    let mut args = pki.install(&first);
    // Polling effectively off: only SIGHUP can reload.
    args.extend(["--tls-reload-interval".to_owned(), "1h".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut process = BridgeProcess::spawn(&args);
    let config = client_config(&pki.ca_der(), None, H2_AND_H1);
    let addr = process.addr;
    wait_until(
        "the binary to serve TLS",
        async || match TlsConnection::open(addr, config.clone()).await {
            Ok(mut connection) => matches!(
                connection.request("GET", "/readyz", Bytes::new()).await,
                Ok((_, reply)) if reply.status == 200
            ),
            Err(_) => false,
        },
    )
    .await;

    pki.install(&second);
    let connection = TlsConnection::open(addr, config.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        connection.server_certificate, first.der,
        "reloaded without SIGHUP"
    );
    process.signal("HUP");
    wait_for_certificate(
        addr,
        &config,
        &second.der,
        "SIGHUP to reload the certificate",
    )
    .await;
    let (version, reply) = post_once(addr, config, TICKET_CREATE)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((version, reply.status), (Version::HTTP_2, 200));

    process.signal("TERM");
    let status = process.wait_exit().await;
    assert_eq!(status.code(), Some(0), "exit status {status}");
    let stderr = process.stderr_lines().join("\n");
    assert!(stderr.contains("SIGHUP received"), "{stderr}");
    assert!(stderr.contains("TLS certificate reloaded"), "{stderr}");
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
}

#[test]
fn bad_tls_flags_exit_2_with_one_line_naming_the_flag() {
    let pki = Pki::new("apizee-bridge test CA");
    let server = pki.server("bridge-one");
    let other = pki.server("bridge-two");
    let cert = pki
        .write("cert.pem", &server.cert_pem)
        .display()
        .to_string();
    let key = pki.write("key.pem", &server.key_pem).display().to_string();
    let other_key = pki
        .write("other-key.pem", &other.key_pem)
        .display()
        .to_string();
    let not_pem = pki.write("not-pem.txt", "hello\n").display().to_string();
    let missing = pki.path("missing.pem").display().to_string();
    let truncated = pki
        .write("truncated.pem", &server.key_pem[..server.key_pem.len() / 2])
        .display()
        .to_string();
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (vec!["--tls-cert", &cert], "--tls-cert", "needs --tls-key"),
        (vec!["--tls-key", &key], "--tls-key", "needs --tls-cert"),
        (
            vec!["--tls-client-ca", &cert],
            "--tls-client-ca",
            "needs --tls-cert",
        ),
        (
            vec!["--tls-cert", &cert, "--tls-key", &other_key],
            "--tls-key",
            "does not match the certificate",
        ),
        (
            vec!["--tls-cert", &not_pem, "--tls-key", &key],
            "--tls-cert",
            "holds no PEM certificate",
        ),
        (
            vec!["--tls-cert", &cert, "--tls-key", &not_pem],
            "--tls-key",
            "holds no PEM private key",
        ),
        (
            vec!["--tls-cert", &cert, "--tls-key", &truncated],
            "--tls-key",
            "is not valid PEM",
        ),
        (
            vec!["--tls-cert", &key, "--tls-key", &key],
            "--tls-cert",
            "holds no PEM certificate",
        ),
        (
            vec!["--tls-cert", &missing, "--tls-key", &key],
            "--tls-cert",
            "cannot be read",
        ),
        (
            vec![
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--tls-client-ca",
                &not_pem,
            ],
            "--tls-client-ca",
            "holds no PEM certificate",
        ),
        (
            vec![
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--tls-reload-interval",
                "0s",
            ],
            "--tls-reload-interval",
            "must be more than 0",
        ),
    ];
    let key_body: Vec<&str> = server
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    for (args, flag, reason) in cases {
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        let output = run(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
        assert!(!stderr.contains("PRIVATE KEY"), "{args:?}: {stderr}");
        for line in &key_body {
            assert!(!stderr.contains(line), "key material printed: {stderr}");
        }
    }
}
