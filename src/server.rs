//! Process assembly: one config file becomes Pingora's `ServerConf`, the edge listener(s),
//! the background services (health checks, sweeper, key refresh, reload control, readiness,
//! access log writer) and the admin listener.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use tokio::sync::Notify;

use crate::admin::AdminApp;
use crate::auth::jwks::JwksRefresh;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::config::JwtConfig;
use crate::edge::EdgeApp;
use crate::lifecycle::{self, Control, Readiness, Signals};
use crate::observability::AccessLog;
use crate::proxy::h1::LeanProxy;
use crate::proxy::Gateway;
use crate::ratelimit::Sweeper;
use crate::runtime::{Runtime, SharedRuntime};
use crate::upstream::HealthChecks;

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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(lifecycle::load_authenticator(jwt))
}

fn fail_start(e: impl std::fmt::Display) -> ! {
    log::error!("cannot start: {e}");
    std::process::exit(1)
}

/// Builds and runs the server; returns only on a start-up failure.
pub fn run(cfg: Config, config_path: PathBuf, flags: ProcessFlags) -> ! {
    // Reloads and upgrades re-read the file after a daemon has moved to /. Absolute, but
    // symlinks are not resolved: a repointed link (a mounted ConfigMap) is followed.
    let config_path = std::path::absolute(&config_path).unwrap_or(config_path);
    let conf = server_conf(&cfg, flags);
    let opt = Opt {
        upgrade: flags.upgrade,
        daemon: flags.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);

    let auth = cfg
        .jwt
        .as_ref()
        .map(|jwt| Arc::new(start_authenticator(jwt).unwrap_or_else(|e| fail_start(e))));
    let runtime = Runtime::build(&cfg, auth, None).unwrap_or_else(|e| fail_start(e));
    let shared = Arc::new(SharedRuntime::new(runtime));
    let access_log = match AccessLog::open(&cfg.server.access_log) {
        Ok(None) => None,
        Ok(Some((log, writer))) => {
            server.add_service(background_service("access log", writer));
            Some(Arc::new(log))
        }
        Err(e) => fail_start(e),
    };
    // Only now take the listening sockets (from the old process, with `-u`): a successor that
    // cannot start (keys, access log file) exits before the old process hands anything over,
    // and the old one keeps serving.
    server.bootstrap();

    // Requests per connection, idle and header deadlines are the edge's (see `edge`).
    let proxy = pingora_proxy::http_proxy(
        &server.configuration,
        Gateway::new(shared.clone(), access_log.clone()),
    );
    let lean = LeanProxy::new(shared.clone(), access_log.clone());
    let edge = EdgeApp::new(proxy, lean, shared.clone());
    let mut service = Service::new("portcullis".to_string(), edge);
    // Pingora's default is a 64 KiB read buffer per client connection, allocated at accept
    // and held while the connection idles; the edge reads heads into its own buffers.
    let buffers = L4BufferSettings::new(
        cfg.server.connection_read_buffer_bytes,
        cfg.server.connection_write_buffer_bytes,
    );
    for addr in &cfg.server.listen {
        service.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(buffers));
    }
    server.add_service(service);

    server.add_service(background_service(
        "health checks",
        HealthChecks {
            shared: shared.clone(),
        },
    ));
    server.add_service(background_service(
        "rate limit sweeper",
        Sweeper {
            shared: shared.clone(),
        },
    ));
    server.add_service(background_service(
        "jwks refresh",
        JwksRefresh {
            shared: shared.clone(),
        },
    ));
    let upgrade = Arc::new(Notify::new());
    server.add_service(background_service(
        "control",
        Control::new(
            config_path,
            shared.clone(),
            access_log,
            upgrade.clone(),
            cfg.server.clone(),
            flags.daemon,
        ),
    ));
    server.add_service(background_service(
        "readiness",
        Readiness {
            listen: cfg.server.listen[0],
            pid_file: cfg.server.pid_file.clone(),
            write_pid_file: !flags.daemon,
        },
    ));

    let mut admin = Service::new(
        "portcullis admin".to_string(),
        pingora_core::apps::http_app::HttpServer::new_app(AdminApp::new(shared)),
    );
    admin.add_tcp(&cfg.server.admin_listen.to_string());
    server.add_service(admin);

    if flags.demo {
        for svc in crate::demo::services() {
            server.add_service(svc);
        }
        println!("{}", crate::demo::TRY_THESE);
    }
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals { upgrade }),
    });
    std::process::exit(0)
}
