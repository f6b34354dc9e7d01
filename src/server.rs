//! Process assembly: one config file becomes Pingora's `ServerConf`, the edge listener(s),
//! the health-check services and the admin listener.

use std::sync::Arc;
use std::time::Duration;

use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::listening::Service;

use crate::admin::AdminApp;
use crate::config::Config;
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

    let (runtime, background) = Runtime::build(&cfg);
    let runtime = Arc::new(runtime);

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
