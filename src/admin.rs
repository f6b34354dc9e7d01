//! The admin listener: `/healthz` (the process answers), `/readyz` (every upstream has a
//! healthy backend), `/metrics` (Prometheus text format).

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::observability::metrics;
use crate::runtime::SharedRuntime;

pub struct AdminApp {
    shared: Arc<SharedRuntime>,
    /// One scrape at a time: the backend health gauges are reset and refilled per scrape.
    scrape: std::sync::Mutex<()>,
}

impl AdminApp {
    pub fn new(shared: Arc<SharedRuntime>) -> Self {
        AdminApp {
            shared,
            scrape: std::sync::Mutex::new(()),
        }
    }

    /// The metrics exposition, with backend health taken now.
    pub fn metrics_text(&self) -> Vec<u8> {
        let _one_scrape = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        let runtime = self.shared.load();
        metrics().set_backend_health(runtime.clusters.iter().flat_map(|c| {
            c.backend_health()
                .map(move |(addr, healthy)| (&*c.name, addr.to_string(), healthy))
        }));
        metrics().render()
    }

    /// The admin answer for a path, as status and JSON body.
    pub fn answer(&self, path: &str) -> (StatusCode, serde_json::Value) {
        let runtime = self.shared.load();
        match path {
            "/healthz" => (StatusCode::OK, serde_json::json!({"status": "ok"})),
            "/readyz" => {
                let mut upstreams = serde_json::Map::new();
                for c in &runtime.clusters {
                    upstreams.insert(
                        c.name.to_string(),
                        serde_json::json!({"healthy": c.healthy_backends(), "backends": c.backend_count()}),
                    );
                }
                let unready = runtime.unready_upstreams();
                if unready.is_empty() {
                    (
                        StatusCode::OK,
                        serde_json::json!({"status": "ready", "upstreams": upstreams}),
                    )
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        serde_json::json!({"status": "not_ready", "unready_upstreams": unready, "upstreams": upstreams}),
                    )
                }
            }
            _ => (
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not_found", "message": "admin endpoints: /healthz, /readyz, /metrics"}),
            ),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        if session.req_header().uri.path() == "/metrics" {
            let body = self.metrics_text();
            return Response::builder()
                .status(StatusCode::OK)
                .header(
                    http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )
                .header(http::header::CONTENT_LENGTH, body.len())
                .body(body)
                .unwrap_or_default();
        }
        let (status, body) = self.answer(session.req_header().uri.path());
        let body = body.to_string().into_bytes();
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .unwrap_or_default()
    }
}
