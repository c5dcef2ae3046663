//! The service's Prometheus registry: a leaf every part registers its own
//! metrics in when it is built, beside the code that records them (the HTTP
//! edge's in `http/metrics.rs`, the delivery's in `delivery.rs`, ...). A
//! part that is not configured exports nothing. Label values are enums
//! declared with their names (`named_enum!`), so they stay bounded: status
//! codes, object and event names, rejection codes, sink names and outcomes;
//! never an objectId or anything else a sender controls.

use prometheus::core::Collector;
use prometheus::{Encoder, HistogramOpts, IntGaugeVec, Opts, Registry, TextEncoder};

const NAMESPACE: &str = "apizee_bridge";

/// Broker acks on loopback take tens of microseconds; across a region,
/// milliseconds; a struggling broker, seconds up to the publish timeout.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// `apizee_bridge_build_info`'s labels and their values: the package
/// version, the git commit and the compiler, from build.rs.
const BUILD: [(&str, &str); 3] = [
    ("version", env!("CARGO_PKG_VERSION")),
    ("revision", env!("APIZEE_BRIDGE_REVISION")),
    ("rustc", env!("APIZEE_BRIDGE_RUSTC")),
];
const BUILD_LABELS: [&str; 3] = [BUILD[0].0, BUILD[1].0, BUILD[2].0];

/// A metric's name (without the `apizee_bridge_` prefix) and help.
pub(crate) fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NAMESPACE)
}

/// A latency histogram's name and help, with the buckets every latency uses.
pub(crate) fn latency_opts(name: &str, help: &str) -> HistogramOpts {
    HistogramOpts::new(name, help)
        .namespace(NAMESPACE)
        .buckets(LATENCY_BUCKETS.to_vec())
}

/// Registers a metric as it is made, so that no part can use one it did
/// not register.
pub(crate) trait Registered: Sized {
    fn registered(self, registry: &Registry) -> Result<Self, prometheus::Error>;
}

impl<T: Collector + Clone + 'static> Registered for T {
    fn registered(self, registry: &Registry) -> Result<Self, prometheus::Error> {
        registry.register(Box::new(self.clone()))?;
        Ok(self)
    }
}

/// A registry with the build's and the process's metrics, for every part
/// to register its own in.
pub fn registry() -> Result<Registry, prometheus::Error> {
    let registry = Registry::new();
    let build_info = IntGaugeVec::new(
        opts(
            "build_info",
            "Always 1; labels carry the running binary's version, git revision and compiler.",
        ),
        &BUILD_LABELS,
    )?
    .registered(&registry)?;
    build_info
        .with_label_values(&BUILD.map(|(_, value)| value))
        .set(1);
    // Unprefixed, as every Prometheus client library and exporter names
    // them, so ready-made dashboards and alerts work as they are.
    #[cfg(target_os = "linux")]
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    Ok(registry)
}

/// The Prometheus text exposition of every metric in `registry`.
pub fn render(registry: &Registry) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 * 1024);
    // Encoding into a Vec cannot fail on I/O; a failure here would be a
    // malformed metric, which registration already rules out.
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut out) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_info_names_the_version_the_revision_and_the_compiler() {
        let registry = registry().unwrap_or_else(|e| panic!("{e}"));
        let family = registry
            .gather()
            .into_iter()
            .find(|family| family.name() == "apizee_bridge_build_info")
            .unwrap_or_else(|| panic!("no build_info"));
        let [series] = family.get_metric() else {
            panic!("build_info has other than one series: {family:?}");
        };
        assert_eq!(series.get_gauge().value(), 1.0);
        let labels: std::collections::BTreeMap<&str, &str> = series
            .get_label()
            .iter()
            .map(|label| (label.name(), label.value()))
            .collect();
        assert_eq!(
            labels.keys().copied().collect::<Vec<_>>(),
            ["revision", "rustc", "version"]
        );
        assert!(labels.values().all(|value| !value.is_empty()), "{labels:?}");
        assert_eq!(labels["version"], env!("CARGO_PKG_VERSION"));
        assert!(labels["rustc"].starts_with("rustc "), "{labels:?}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_metrics_have_the_standard_unprefixed_names() {
        let registry = registry().unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8(render(&registry)).unwrap_or_default();
        for family in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
        ] {
            assert!(text.contains(&format!("\n{family} ")), "missing {family}");
        }
        assert!(!text.contains("apizee_bridge_process_"), "{text}");
    }
}
