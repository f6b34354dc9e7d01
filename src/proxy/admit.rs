//! Admission: the decision both conductors (Pingora's session and the lean HTTP/1.1 path)
//! make once a route is chosen: authenticate, then spend the route's rate-limit budget.

use std::net::IpAddr;
use std::sync::Arc;

use crate::auth::Identity;
use crate::config::AuthMode;
use crate::observability::{metrics, AuthOutcome, RateOutcome};
use crate::ratelimit::{KeyParts, RouteVerdict};
use crate::request::HeaderView;
use crate::respond::{ErrorCode, GatewayError};
use crate::runtime::{Route, Runtime};

/// What admission learned about a request, for the upstream headers, the response's
/// RateLimit-* headers and the access log; `refusal` is the answer when it was refused.
pub struct Admission {
    pub auth: AuthOutcome,
    pub identity: Option<Arc<Identity>>,
    pub rate: RateOutcome,
    pub rate_verdict: Option<RouteVerdict>,
    pub refusal: Option<GatewayError>,
}

/// Authenticates (when the route asks for it) and checks the route's limits, in that order.
pub async fn admit(
    rt: &Runtime,
    route: &Route,
    method: &http::Method,
    headers: HeaderView<'_>,
    client_ip: Option<IpAddr>,
) -> Admission {
    let mut a = Admission {
        auth: AuthOutcome::NotChecked,
        identity: None,
        rate: RateOutcome::NotChecked,
        rate_verdict: None,
        refusal: None,
    };
    if let (Some(auth), true) = (&rt.auth, route.auth != AuthMode::None) {
        match auth
            .authenticate(headers, route.auth, &route.required_scopes)
            .await
        {
            Ok(identity) => {
                a.auth = if identity.is_some() {
                    AuthOutcome::Verified
                } else {
                    AuthOutcome::Anonymous
                };
                a.identity = identity;
            }
            Err(rejection) => {
                log::debug!("auth refused: {}", rejection.reason());
                a.auth = AuthOutcome::Refused(rejection.reason());
                metrics().auth_failure(rejection.reason());
                a.refusal = Some(rejection.to_error());
                return a;
            }
        }
    }
    if !route.rate_limit.is_empty() && !is_cors_preflight(method, headers) {
        let parts = KeyParts {
            client_ip,
            headers,
            identity: a.identity.as_deref(),
            route: &route.name,
        };
        a.rate_verdict = rt.rate_limits.check_route(&route.rate_limit, &parts).await;
        a.rate = RateOutcome::Allowed;
        if a.rate_verdict.is_some_and(|v| !v.verdict.allowed) {
            a.rate = RateOutcome::Limited;
            a.refusal = Some(GatewayError::new(ErrorCode::RateLimited));
        }
    }
    a
}

/// A CORS preflight asks whether a request may be made; it does not spend the budget.
fn is_cors_preflight(method: &http::Method, headers: HeaderView<'_>) -> bool {
    method == http::Method::OPTIONS
        && headers.contains(&http::header::ACCESS_CONTROL_REQUEST_METHOD)
}
