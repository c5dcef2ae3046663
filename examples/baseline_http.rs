//! HTTP ceiling for `benches/load.sh`: reads the body, parses it into a
//! `serde_json::Value`, answers 200. No broker: the most any webhook
//! receiver on this machine can answer with hyper and serde_json.
//!
//! `cargo run --release --example baseline_http -- --listen 127.0.0.1:8081`

#[path = "support/baseline.rs"]
mod baseline;

#[tokio::main]
async fn main() {
    let listen = baseline::required_flag("--listen")
        .parse()
        .unwrap_or_else(|e| panic!("--listen: {e}"));
    baseline::serve(listen, |_body, _value| std::future::ready(Ok(()))).await;
}
