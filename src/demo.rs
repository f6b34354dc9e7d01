//! `portcullis --demo`: small JSON services (users, orders, catalog) on loopback, for trying
//! the gateway with nothing else installed. Not used outside the demo.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::{HttpServer, ServeHttp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::services::listening::Service;

/// One demo service: answers JSON naming itself and echoing what it was asked.
pub struct DemoService {
    name: &'static str,
    instance: u16,
}

#[async_trait]
impl ServeHttp for DemoService {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let body = if path == "/health" {
            serde_json::json!({"status": "ok"})
        } else {
            let id = path.rsplit('/').next().unwrap_or("");
            let data = match self.name {
                "users" => serde_json::json!({"id": id, "name": format!("user {id}")}),
                "orders" => serde_json::json!([{"id": 1, "total": 42.5}, {"id": 2, "total": 7.0}]),
                _ => {
                    serde_json::json!([{"sku": "tea", "price": 3.2}, {"sku": "cake", "price": 4.1}])
                }
            };
            serde_json::json!({
                "service": self.name,
                "instance": self.instance,
                "method": req.method.as_str(),
                "path": req.uri.to_string(),
                "request_id": req.headers.get("x-request-id").and_then(|v| v.to_str().ok()),
                "data": data,
            })
        };
        let body = body.to_string().into_bytes();
        Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .unwrap_or_default()
    }
}

/// The demo services and the addresses `conf/demo.yaml` expects them on.
pub fn services() -> Vec<Service<HttpServer<DemoService>>> {
    [
        ("users", 1, 18101),
        ("users", 2, 18102),
        ("orders", 1, 18103),
        ("catalog", 1, 18104),
    ]
    .into_iter()
    .map(|(name, instance, port)| {
        let mut svc = Service::new(
            format!("demo {name} {instance}"),
            HttpServer::new_app(DemoService { name, instance }),
        );
        svc.add_tcp(&format!("127.0.0.1:{port}"));
        svc
    })
    .collect()
}

pub const TRY_THESE: &str = r#"
portcullis demo: gateway on http://127.0.0.1:8080, admin on http://127.0.0.1:9091
  curl -i http://127.0.0.1:8080/api/users/7          # prefix route, /api stripped, round robin over 2 instances
  curl -i http://127.0.0.1:8080/api/orders/7         # {param} template route
  curl -i -X DELETE http://127.0.0.1:8080/api/orders/7   # 405 with Allow
  curl -i http://127.0.0.1:8080/catalog              # exact route
  curl -i http://127.0.0.1:8080/nope                 # 404, JSON error
  curl -i http://127.0.0.1:9091/readyz               # readiness
Ctrl-C stops it.
"#;
