//! The replica's plain-HTTP endpoints, for Prometheus and the kubelet:
//!
//! ```text
//!   GET /metrics  200 OpenMetrics text (Metrics::encode, on a blocking thread)
//!   GET /healthz  200 "ok" while the process serves at all            (livenessProbe)
//!   GET /readyz   200 "ok" | 503 "not ready: <reason>" (Health::check) (readinessProbe)
//! ```
//!
//! They live on their own listener, not on the gRPC port, because probes and scrapers speak
//! HTTP/1.1 and must keep working while the gRPC services are saturated or behind mTLS.
//! Liveness and readiness are separate on purpose: a replica that lost its leader is *not ready*
//! (the Service stops routing agents to it) but must not be restarted, which would only make the
//! election slower.

use std::fmt;
use std::future::Future;
use std::io;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// The content type of `/metrics`: OpenMetrics 1.0 text.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether the replica should receive traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// It should.
    Ready,
    /// It should not, and why (one line, for `/readyz` and the kubelet's events).
    NotReady(String),
}

/// The readiness check `/readyz` runs on every probe. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    check: Arc<dyn Fn() -> Readiness + Send + Sync>,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health").finish_non_exhaustive()
    }
}

impl Health {
    /// Readiness as `check` says; it runs on the HTTP server's task at every probe, so it must be
    /// quick (read a watch channel, not wait for Raft).
    pub fn new(check: impl Fn() -> Readiness + Send + Sync + 'static) -> Self {
        Self { check: Arc::new(check) }
    }

    /// Always ready: for tests and tools without a Raft.
    pub fn always_ready() -> Self {
        Self::new(|| Readiness::Ready)
    }

    /// Runs the check.
    pub fn check(&self) -> Readiness {
        (self.check)()
    }
}

#[derive(Debug, Clone)]
struct Endpoints {
    metrics: Metrics,
    health: Health,
}

/// The routes, for serving them elsewhere or calling them in tests.
pub fn router(metrics: Metrics, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Endpoints { metrics, health })
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown` completes, then
/// finishes the requests in flight.
///
/// # Errors
///
/// The listener fails.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(listener, router(metrics, health))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics_text(State(endpoints): State<Endpoints>) -> Response {
    // The subnet collector reads the domain state, possibly under a lock: keep it off the
    // async workers.
    let metrics = endpoints.metrics;
    match tokio::task::spawn_blocking(move || metrics.encode()).await {
        Ok(Ok(text)) => ([(CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response(),
        Ok(Err(_)) | Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "metrics could not be encoded\n").into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(endpoints): State<Endpoints>) -> Response {
    match endpoints.health.check() {
        Readiness::Ready => "ok\n".into_response(),
        Readiness::NotReady(reason) => {
            let reason = reason.replace(['\r', '\n'], " ");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {}\n", reason.trim()),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tonic::codegen::Service;

    use super::*;

    async fn get_path(router: &mut Router, path: &str) -> (StatusCode, Option<String>, String) {
        let request = Request::get(path).body(Body::empty()).unwrap_or_else(|e| panic!("{e}"));
        let response = router.call(request).await.unwrap_or_else(|e| match e {});
        let status = response.status();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (status, content_type, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn readyz_says_why_in_one_line_with_503() {
        let health = Health::new(|| Readiness::NotReady("no leader known\n(term 7)".to_owned()));
        let mut router = router(Metrics::new(), health);
        let (status, _, body) = get_path(&mut router, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: no leader known (term 7)\n");
        let (status, _, body) = get_path(&mut router, "/healthz").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "ok\n"),
            "alive even when not ready"
        );
    }

    #[tokio::test]
    async fn ready_and_metrics_answer_200() {
        let metrics = Metrics::new();
        metrics.record_exhausted("subnet");
        let mut router = router(metrics, Health::always_ready());
        let (status, _, body) = get_path(&mut router, "/readyz").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
        let (status, content_type, body) = get_path(&mut router, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some(OPENMETRICS_CONTENT_TYPE));
        assert!(body.contains("ipam_exhausted_total{what=\"subnet\"} 1\n"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        let (status, _, _) = get_path(&mut router, "/nothing-here").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
