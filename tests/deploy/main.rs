//! What deploy/ ships, run with the real programs: the image (podman),
//! the load-balanced topology (HAProxy, two replicas, Prometheus), the
//! Helm chart and the Kubernetes manifests rendered from it (helm, kubectl
//! kustomize, kubernetes-validate), alerts
//! and dashboard (promtool, Prometheus), the systemd unit, the compose file.

#[path = "../support/mod.rs"]
mod support;

mod compose;
mod helm;
mod image;
mod kubernetes;
mod monitoring;
mod systemd;
mod topology;
