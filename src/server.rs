//! Process assembly: one config file becomes Pingora's `ServerConf`, the edge listener(s),
//! the health-check services and the admin listener.

use std::sync::Arc;
use std::time::Duration;

use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::listening::Service;

use pingora_core::services::background::background_service;

use crate::admin::AdminApp;
use crate::auth::jwks::{self, JwksRefresh};
use crate::auth::{Authenticator, JWKS_FETCH_TIMEOUT};
use crate::config::Config;
use crate::config::JwtConfig;
use crate::edge::{EdgeApp, EdgeLimits};
use crate::proxy::Gateway;
use crate::runtime::Runtime;

/// Process-level switches from the command line (Pingora's own `-d` and `-u`).
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessFlags {
    pub daemon: bool,
    pub upgrade: bool,
    pub demo: bool,
}

/// Pingora's settings, taken from the `server` section.
pub fn server_conf(cfg: &Config, flags: ProcessFlags) -> ServerConf {
    let s = &cfg.server;
    ServerConf {
        daemon: flags.daemon,
        threads: s.threads,
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        grace_period_seconds: Some(ceil_secs(s.grace_period)),
        graceful_shutdown_timeout_seconds: Some(ceil_secs(s.graceful_shutdown_timeout)),
        // One runtime per thread without stealing: fewer cross-thread wake-ups per request.
        work_stealing: false,
        ..ServerConf::default()
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Loads the first keys. A configured `jwks_url` must answer at start unless a `jwks_file`
/// can serve meanwhile (the background refresh keeps trying).
pub fn start_authenticator(jwt: &JwtConfig) -> Result<Authenticator, String> {
    let fetched = match &jwt.jwks_url {
        None => None,
        Some(url) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            match rt.block_on(jwks::fetch(url, JWKS_FETCH_TIMEOUT)) {
                Ok(doc) => Some(doc),
                Err(e) if jwt.jwks_file.is_some() => {
                    log::warn!(
                        "auth.jwt.jwks_url: {e}; serving with jwks_file until a refresh succeeds"
                    );
                    None
                }
                Err(e) => return Err(format!("auth.jwt.jwks_url: {e}")),
            }
        }
    };
    Authenticator::new(jwt, fetched.as_deref())
}

/// Builds and runs the server; returns only on a start-up failure.
pub fn run(cfg: Config, flags: ProcessFlags) -> ! {
    let conf = server_conf(&cfg, flags);
    let opt = Opt {
        upgrade: flags.upgrade,
        daemon: flags.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let auth = match &cfg.jwt {
        None => None,
        Some(jwt) => match start_authenticator(jwt) {
            Ok(a) => Some(Arc::new(a)),
            Err(e) => {
                log::error!("cannot start: {e}");
                std::process::exit(1);
            }
        },
    };
    let (runtime, mut background) = match Runtime::build(&cfg, auth.clone()) {
        Ok(built) => built,
        Err(e) => {
            log::error!("cannot start: {e}");
            std::process::exit(1);
        }
    };
    let runtime = Arc::new(runtime);
    if let Some(auth) = auth {
        let jwt = auth.config();
        if jwt.jwks_url.is_some() || jwt.jwks_file.is_some() {
            let every = jwt.jwks_refresh;
            background.push(Box::new(background_service(
                "jwks refresh",
                JwksRefresh { auth, every },
            )));
        }
    }

    // Requests per connection, idle and header deadlines are the edge's (see `edge`).
    let proxy = pingora_proxy::http_proxy(&server.configuration, Gateway::new(runtime.clone()));
    let edge = EdgeApp::new(proxy, EdgeLimits::from_config(&cfg.server));
    let mut service = Service::new("portcullis".to_string(), edge);
    for addr in &cfg.server.listen {
        service.add_tcp(&addr.to_string());
    }
    server.add_service(service);
    for bg in background {
        server.add_boxed_service(bg);
    }

    let mut admin = Service::new(
        "portcullis admin".to_string(),
        pingora_core::apps::http_app::HttpServer::new_app(AdminApp::new(runtime)),
    );
    admin.add_tcp(&cfg.server.admin_listen.to_string());
    server.add_service(admin);

    if flags.demo {
        for svc in crate::demo::services() {
            server.add_service(svc);
        }
        println!("{}", crate::demo::TRY_THESE);
    }
    server.run_forever()
}
