//! Senders under a fault, for the cluster tests (`tests/kafka_cluster.rs`,
//! `tests/nats_cluster.rs`): each sender takes the next event, posts it on
//! its keep-alive connection until it is answered 200 (or 202 from a bridge
//! with a spool), backing off 25 ms to 200 ms between tries, and every
//! answer is kept in a [`Tally`] for the test to judge; `/readyz` sampled
//! alongside.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use tokio::net::TcpStream;

use super::{Reply, get, metric_value, send_on};

/// How long one request may take before it counts as a socket error: more
/// than any answer the bridge gives (`--publish-timeout` bounds them).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);
/// How often `/readyz` is sampled.
pub const READYZ_EVERY: Duration = Duration::from_millis(50);

/// Event `i` of a case: a distinct objectId, hence a distinct event id.
pub fn event(case: &str, i: usize) -> String {
    format!(
        r#"{{"event":"create","time":{},"object":"ticket","objectId":"{case}-{i}","props":{{"state":"open"}}}}"#,
        1_700_000_000 + i
    )
}

/// One answer the senders got.
pub struct Answer {
    /// The event's index.
    pub event: usize,
    pub sent: Instant,
    pub answered: Instant,
    /// The status, or `None` for no answer at all (a socket error).
    pub status: Option<u16>,
    /// A 503 that carried a valid `Retry-After`.
    pub retry_after: bool,
    pub detail: String,
}

#[derive(Default)]
pub struct Tally {
    pub next: AtomicUsize,
    /// Events posted at least once.
    pub sent: AtomicUsize,
    pub acked: AtomicUsize,
    /// Connections the senders opened: one each, unless one was lost.
    pub connections: AtomicUsize,
    pub stop: AtomicBool,
    pub answers: Mutex<Vec<Answer>>,
    /// Event id of every acknowledged event -> its index.
    pub ids: Mutex<HashMap<String, usize>>,
    /// Indexes of the events answered 503 at least once, or 202: either may
    /// follow a publish that timed out and was still written, so a second
    /// copy of them is the sender's retry or the spool's replay.
    pub retried: Mutex<Vec<usize>>,
}

impl Tally {
    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::SeqCst)
    }

    /// Whether a request sent after `since` got a 200.
    pub fn acked_since(&self, since: Instant) -> bool {
        self.answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|a| a.status == Some(200) && a.sent >= since)
    }
}

/// A keep-alive connection to the bridge.
pub async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    // Ends when the sender is dropped or the bridge closes the connection.
    tokio::spawn(connection);
    Ok(sender)
}

/// Posts `body` on the sender's connection, opening one first if it has
/// none. Any failure to get an answer drops the connection: the next post
/// opens a new one, as a real sender would.
pub async fn post(
    connection: &mut Option<SendRequest<Full<Bytes>>>,
    addr: SocketAddr,
    body: Bytes,
    tally: &Tally,
) -> Result<Reply, String> {
    // The connection is put back only once a whole answer came on it.
    let mut sender = connection.take();
    // One deadline over all of it, connecting included: a sender never
    // waits unbounded, so neither does the test.
    let reply = tokio::time::timeout(REQUEST_DEADLINE, async {
        let sender = match &mut sender {
            Some(sender) => sender,
            None => {
                tally.connections.fetch_add(1, Ordering::SeqCst);
                sender.insert(connect(addr).await?)
            }
        };
        // A connection the bridge closed after its last answer is not
        // ready; that, too, is an error here: the bridge has no reason to
        // close one.
        sender
            .ready()
            .await
            .map_err(|e| format!("connection closed between requests: {e}"))?;
        let request = http::Request::builder()
            .method("POST")
            .uri("/webhooks")
            .header("host", addr.to_string())
            .header("content-type", "application/JSON")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        send_on(sender, request).await
    })
    .await
    .map_err(|_| format!("no answer within {REQUEST_DEADLINE:?}"))??;
    *connection = sender;
    Ok(reply)
}

/// Takes the next event until told to stop, and posts it until it gets a
/// 200 (or, from a bridge with a spool, a 202), 25 ms to 200 ms apart, on
/// one keep-alive connection.
pub async fn sender(addr: SocketAddr, case: &'static str, pause: Duration, tally: Arc<Tally>) {
    let mut connection = None;
    while !tally.stop.load(Ordering::SeqCst) {
        let i = tally.next.fetch_add(1, Ordering::SeqCst);
        let body = Bytes::from(event(case, i));
        let mut attempt = 0u32;
        let mut was_refused = false;
        while !tally.stop.load(Ordering::SeqCst) {
            if attempt == 0 {
                tally.sent.fetch_add(1, Ordering::SeqCst);
            }
            let sent = Instant::now();
            let reply = post(&mut connection, addr, body.clone(), &tally).await;
            let answered = Instant::now();
            let answer = match &reply {
                Ok(reply) => Answer {
                    event: i,
                    sent,
                    answered,
                    status: Some(reply.status),
                    retry_after: reply
                        .header("retry-after")
                        .is_some_and(|s| s.parse::<u64>().is_ok_and(|s| s >= 1)),
                    detail: reply.text(),
                },
                Err(e) => Answer {
                    event: i,
                    sent,
                    answered,
                    status: None,
                    retry_after: false,
                    detail: e.clone(),
                },
            };
            tally
                .answers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(answer);
            if let Ok(reply) = &reply
                && (reply.status == 200 || reply.status == 202)
            {
                if reply.status == 202 && !was_refused {
                    tally
                        .retried
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(i);
                }
                let id = reply.json()["id"].as_str().unwrap_or_default().to_owned();
                tally
                    .ids
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, i);
                tally.acked.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(pause).await;
                break;
            }
            if !was_refused && reply.is_ok_and(|r| r.status == 503) {
                was_refused = true;
                tally
                    .retried
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(i);
            }
            let backoff = Duration::from_millis(25 << attempt.min(3));
            attempt += 1;
            tokio::time::sleep(backoff).await;
        }
    }
}

/// `/readyz` every [`READYZ_EVERY`] until told to stop.
pub async fn sample_readyz(addr: SocketAddr, stop: Arc<AtomicBool>) -> Vec<(Instant, u16)> {
    let mut samples = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let status = get(addr, "/readyz").await.map_or(0, |r| r.status);
        samples.push((Instant::now(), status));
        tokio::time::sleep(READYZ_EVERY).await;
    }
    samples
}

/// Polls `check` until it holds or `limit` passes; false if it never did.
pub async fn within(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !check() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Waits until the bridge whose metrics listen on `metrics` says its spool
/// is empty (`apizee_bridge_spool_events` 0), at most `limit`: how long
/// that took, or `None` if it never did.
pub async fn spool_emptied(metrics: SocketAddr, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    loop {
        let text = get(metrics, "/metrics").await.map(|r| r.text());
        if text
            .as_ref()
            .is_ok_and(|m| metric_value(m, "apizee_bridge_spool_events") == 0.0)
        {
            return Some(started.elapsed());
        }
        if started.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `senders` senders posting `case`'s events to a bridge, and its
/// `/readyz` sampled, until [`Load::stop`].
pub struct Load {
    pub tally: Arc<Tally>,
    senders: Vec<tokio::task::JoinHandle<()>>,
    sampling: Arc<AtomicBool>,
    sampler: tokio::task::JoinHandle<Vec<(Instant, u16)>>,
    started: Instant,
}

impl Load {
    /// Each sender waits `pause` after an acknowledged event.
    pub fn start(addr: SocketAddr, case: &'static str, senders: usize, pause: Duration) -> Self {
        let tally = Arc::new(Tally::default());
        let senders = (0..senders)
            .map(|_| tokio::spawn(sender(addr, case, pause, tally.clone())))
            .collect();
        let sampling = Arc::new(AtomicBool::new(false));
        let sampler = tokio::spawn(sample_readyz(addr, sampling.clone()));
        Self {
            tally,
            senders,
            sampling,
            sampler,
            started: Instant::now(),
        }
    }

    /// Whether `count` events in all were acknowledged within `limit`.
    pub async fn reached(&self, count: usize, limit: Duration) -> bool {
        let tally = self.tally.clone();
        within(limit, move || tally.acked() >= count).await
    }

    /// Stops the senders (each ends its request in flight) and the
    /// sampler: the `/readyz` samples, and how long the load ran.
    pub async fn stop(self) -> (Vec<(Instant, u16)>, Duration) {
        self.tally.stop.store(true, Ordering::SeqCst);
        for sender in self.senders {
            sender
                .await
                .unwrap_or_else(|e| panic!("a sender failed: {e}"));
        }
        self.sampling.store(true, Ordering::SeqCst);
        let samples = self.sampler.await.unwrap_or_else(|e| panic!("{e}"));
        (samples, self.started.elapsed())
    }
}
