//! Validate-and-route, the pure middle of every webhook, per object type:
//! `envelope::parse` then `route::build_message`, called as
//! `src/http/handler.rs` calls them (default rules, default topic template,
//! a `Bytes` body, `SystemTime::now()` per request). Also each step alone.
//!
//! `cargo bench --bench envelope`; the load benchmark is `benches/load.sh`.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use apizee_bridge::envelope::{self, Rules};
use apizee_bridge::route::{self, DEFAULT_TEMPLATE, TopicTemplate};
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// One realistic body per object type, from the test samples (the two
/// from the platform's specification included), as the platform sends
/// them: pretty-printed.
const BODIES: [(&str, &[u8]); 5] = [
    (
        "ticket",
        include_bytes!("../tests/samples/spec-ticket.json"),
    ),
    (
        "conversation",
        include_bytes!("../tests/samples/spec-conversation.json"),
    ),
    (
        "media",
        include_bytes!("../tests/samples/valid/media-create-parent-nested.json"),
    ),
    (
        "smsmessage",
        include_bytes!("../tests/samples/valid/smsmessage-delete-extra-props.json"),
    ),
    (
        "conversationevent",
        include_bytes!("../tests/samples/valid/conversationevent-create.json"),
    ),
];

fn template() -> TopicTemplate {
    TopicTemplate::parse(DEFAULT_TEMPLATE, "apizee").unwrap_or_else(|e| panic!("{e}"))
}

fn validate_and_route(c: &mut Criterion) {
    let rules = Rules::default();
    let template = template();
    let mut group = c.benchmark_group("validate_and_route");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (object, body) in BODIES {
        let body = Bytes::from_static(body);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(object, |b| {
            b.iter(|| {
                let envelope = envelope::parse(black_box(&body), rules)
                    .unwrap_or_else(|e| panic!("{object}: {e}"));
                route::build_message(&envelope, body.clone(), &template, None, SystemTime::now())
                    .unwrap_or_else(|e| panic!("{object}: {e}"))
            })
        });
    }
    group.finish();
}

fn parse_only(c: &mut Criterion) {
    let rules = Rules::default();
    let mut group = c.benchmark_group("parse");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (object, body) in BODIES {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(object, |b| {
            b.iter(|| envelope::parse(black_box(body), rules))
        });
    }
    group.finish();
}

fn route_only(c: &mut Criterion) {
    let template = template();
    let mut group = c.benchmark_group("build_message");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (object, body) in BODIES {
        let body = Bytes::from_static(body);
        let envelope =
            envelope::parse(&body, Rules::default()).unwrap_or_else(|e| panic!("{object}: {e}"));
        group.bench_function(object, |b| {
            b.iter(|| {
                route::build_message(
                    black_box(&envelope),
                    body.clone(),
                    &template,
                    None,
                    SystemTime::now(),
                )
            })
        });
    }
    group.finish();
}

/// Hostile nesting, refused at serde_json's recursion limit: the time to
/// refuse must not grow with the body (the unit tests check the refusal,
/// this measures its cost; a body of --max-body-bytes is the worst case).
fn deep_nesting(c: &mut Criterion) {
    let rules = Rules::default();
    let mut group = c.benchmark_group("refuse_deep_nesting");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (name, body) in [
        ("100k_unclosed_brackets", "[".repeat(100_000)),
        (
            "100k_balanced_brackets",
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
        ),
        ("40k_unclosed_objects", r#"{"a":"#.repeat(40_000)),
    ] {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| assert!(envelope::parse(black_box(body.as_bytes()), rules).is_err()))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    validate_and_route,
    parse_only,
    route_only,
    deep_nesting
);
criterion_main!(benches);
