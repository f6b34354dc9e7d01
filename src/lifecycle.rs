//! The process's life after start: SIGHUP reloads the config, SIGUSR2 upgrades the binary
//! in place (Pingora's socket hand-over), readiness goes to systemd and the pid file.
//!
//! Pingora owns SIGTERM (graceful stop), SIGINT (fast stop) and SIGQUIT (hand the listening
//! sockets to a process started with `-u`). [`Signals`] keeps those meanings and adds one
//! way in: [`Control`] asks for the hand-over itself once it has started its successor, so
//! that `kill -USR2` (or `systemctl kill -s USR2`) is the whole upgrade, and the successor is
//! a child of the running service: under systemd it stays in the unit's cgroup and takes
//! over as its main process (`MAINPID=`, `NotifyAccess=all`).

use std::ffi::OsString;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora_core::services::background::BackgroundService;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::Notify;

use crate::auth::Authenticator;
use crate::config::{self, Config, ServerConfig};
use crate::observability::{metrics, AccessLog};
use crate::runtime::{Runtime, SharedRuntime};

/// How long an upgrade waits for the successor to listen on `upgrade_sock`.
const SUCCESSOR_START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long readiness waits for the proxy listener to accept.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Installs handlers for SIGHUP and SIGUSR2 right away: until the control service listens,
/// they are ignored rather than ending the process (their default action).
pub fn claim_signals() {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        for kind in [SignalKind::hangup(), SignalKind::user_defined2()] {
            if let Err(e) = signal(kind) {
                log::warn!("cannot install a signal handler: {e}");
            }
        }
    });
}

fn listen(kind: SignalKind, name: &str) -> Option<Signal> {
    match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            log::error!("cannot listen for {name}: {e}");
            None
        }
    }
}

async fn next(s: &mut Option<Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Pingora's shutdown signals, plus an upgrade asked for from inside the process.
pub struct Signals {
    pub upgrade: Arc<Notify>,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let mut quit = listen(SignalKind::quit(), "SIGQUIT");
        let mut term = listen(SignalKind::terminate(), "SIGTERM");
        let mut int = listen(SignalKind::interrupt(), "SIGINT");
        tokio::select! {
            _ = next(&mut quit) => ShutdownSignal::GracefulUpgrade,
            _ = self.upgrade.notified() => ShutdownSignal::GracefulUpgrade,
            _ = next(&mut term) => ShutdownSignal::GracefulTerminate,
            _ = next(&mut int) => ShutdownSignal::FastShutdown,
        }
    }
}

/// Server settings that need new sockets, threads or files: a reload reports a change to
/// them and keeps the running values; a binary upgrade (or restart) applies them.
pub fn settings_needing_upgrade(running: &ServerConfig, new: &ServerConfig) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name: &'static str, same: bool| {
        if !same {
            changed.push(name);
        }
    };
    check("server.listen", running.listen == new.listen);
    check(
        "server.admin_listen",
        running.admin_listen == new.admin_listen,
    );
    check("server.threads", running.threads == new.threads);
    check("server.pid_file", running.pid_file == new.pid_file);
    check(
        "server.upgrade_sock",
        running.upgrade_sock == new.upgrade_sock,
    );
    check(
        "server.grace_period",
        running.grace_period == new.grace_period,
    );
    check(
        "server.graceful_shutdown_timeout",
        running.graceful_shutdown_timeout == new.graceful_shutdown_timeout,
    );
    check("server.access_log", running.access_log == new.access_log);
    check(
        "server.connection_read_buffer_bytes",
        running.connection_read_buffer_bytes == new.connection_read_buffer_bytes,
    );
    check(
        "server.connection_write_buffer_bytes",
        running.connection_write_buffer_bytes == new.connection_write_buffer_bytes,
    );
    changed
}

/// Loads an authenticator's first keys, fetching a `jwks_url` (see `server::start_authenticator`).
pub async fn load_authenticator(jwt: &crate::config::JwtConfig) -> Result<Authenticator, String> {
    let fetched = match &jwt.jwks_url {
        None => None,
        Some(url) => match crate::auth::jwks::fetch(url, crate::auth::JWKS_FETCH_TIMEOUT).await {
            Ok(doc) => Some(doc),
            Err(e) if jwt.jwks_file.is_some() => {
                log::warn!(
                    "auth.jwt.jwks_url: {e}; serving with jwks_file until a refresh succeeds"
                );
                None
            }
            Err(e) => return Err(format!("auth.jwt.jwks_url: {e}")),
        },
    };
    Authenticator::new(jwt, fetched.as_deref())
}

/// Reloads and upgrades on signal; see the module comment.
pub struct Control {
    pub config_path: PathBuf,
    pub shared: Arc<SharedRuntime>,
    pub access_log: Option<Arc<AccessLog>>,
    /// Tells [`Signals`] to hand the sockets over.
    pub upgrade: Arc<Notify>,
    /// The server settings this process runs with (fixed until it is replaced).
    pub running: ServerConfig,
    /// The executable and arguments (`-c FILE [-d] -u`) to start the successor with.
    pub exe: Option<PathBuf>,
    pub args: Vec<OsString>,
}

impl Control {
    pub fn new(
        config_path: PathBuf,
        shared: Arc<SharedRuntime>,
        access_log: Option<Arc<AccessLog>>,
        upgrade: Arc<Notify>,
        running: ServerConfig,
        daemon: bool,
    ) -> Control {
        // The successor gets the config by absolute path: a daemon's working directory is /.
        let mut args: Vec<OsString> = vec!["-c".into(), config_path.clone().into_os_string()];
        if daemon {
            args.push("-d".into());
        }
        args.push("-u".into());
        Control {
            config_path,
            shared,
            access_log,
            upgrade,
            running,
            // Resolved now: after a package upgrade replaced the file, /proc/self/exe names
            // the deleted old binary, while this path names the new one.
            exe: std::env::current_exe().ok(),
            args,
        }
    }

    /// Re-reads, validates and compiles the config file and swaps it in. On any error the
    /// running config stays. Returns the settings that changed but need an upgrade.
    pub async fn reload(&self) -> Result<Vec<&'static str>, String> {
        // SIGHUP is also logrotate's signal: reopen the access log whatever the config says.
        if let Some(log) = &self.access_log {
            log.reopen();
        }
        let cfg: Config =
            config::load(&self.config_path).map_err(|errors| errors.report(&self.config_path))?;
        let previous = self.shared.load_full();
        let auth = match (&cfg.jwt, &previous.auth) {
            (None, _) => None,
            // Same settings: same keys and token cache, but re-read the key sources now.
            (Some(jwt), Some(auth)) if auth.config() == jwt => {
                if jwt.jwks_url.is_some() || jwt.jwks_file.is_some() {
                    if let Err(e) = auth.refresh().await {
                        log::warn!("reload: JWT key refresh failed, keeping the last keys: {e}");
                    }
                }
                Some(auth.clone())
            }
            (Some(jwt), _) => Some(Arc::new(load_authenticator(jwt).await?)),
        };
        let runtime = Runtime::build(&cfg, auth, Some(&previous))?;
        self.shared.swap(runtime);
        Ok(settings_needing_upgrade(&self.running, &cfg.server))
    }

    async fn on_hangup(&self) {
        match self.reload().await {
            Ok(needs_upgrade) => {
                metrics().reload(true);
                log::info!("config reloaded from {}", self.config_path.display());
                for key in needs_upgrade {
                    log::warn!(
                        "{key} changed: it takes effect only after a binary upgrade (SIGUSR2) \
                         or a restart; the running process keeps its current value"
                    );
                }
            }
            Err(e) => {
                metrics().reload(false);
                log::error!("config reload refused, the running config stays: {e}");
            }
        }
    }

    /// Starts the successor with `-u`, waits until it listens on `upgrade_sock`, then asks
    /// Pingora to hand the sockets over and drain.
    async fn on_upgrade(&self) -> Result<(), String> {
        let exe = self
            .exe
            .as_ref()
            .ok_or("cannot find this process's executable")?;
        // The new binary must accept the config before anything is handed over.
        let check = tokio::time::timeout(
            SUCCESSOR_START_TIMEOUT,
            tokio::process::Command::new(exe)
                // A check that overruns its deadline is not left running.
                .kill_on_drop(true)
                .arg("-t")
                .arg("-c")
                .arg(&self.config_path)
                .output(),
        )
        .await
        .map_err(|_| format!("{} -t did not finish", exe.display()))?
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
        if !check.status.success() {
            return Err(format!(
                "the new binary refuses the config: {}",
                String::from_utf8_lossy(&check.stderr).trim()
            ));
        }
        let sock = Path::new(&self.running.upgrade_sock);
        // A socket file left by an earlier upgrade would make the wait below meaningless.
        let _ = std::fs::remove_file(sock);
        let mut child = std::process::Command::new(exe)
            .args(&self.args)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let deadline = Instant::now() + SUCCESSOR_START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("the successor exited at start ({status})"));
            }
            if sock.exists() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the successor did not listen on {}",
                    sock.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        log::info!(
            "upgrade: successor {} is waiting for the sockets; handing over",
            child.id()
        );
        // The successor outlives this process; it is not waited for here.
        drop(child);
        self.upgrade.notify_one();
        Ok(())
    }
}

#[async_trait]
impl BackgroundService for Control {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup = listen(SignalKind::hangup(), "SIGHUP");
        let mut usr2 = listen(SignalKind::user_defined2(), "SIGUSR2");
        loop {
            tokio::select! {
                _ = next(&mut hangup) => self.on_hangup().await,
                // One at a time: signals arriving meanwhile wait for the loop.
                _ = next(&mut usr2) => {
                    match self.on_upgrade().await {
                        Ok(()) => return,
                        Err(e) => log::error!("upgrade refused, this process keeps serving: {e}"),
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Once the proxy listener accepts: writes the pid file and tells systemd this process is
/// ready and is the service's main process (which matters after an upgrade).
pub struct Readiness {
    pub listen: SocketAddr,
    pub pid_file: String,
    /// Pingora writes the pid file itself when it daemonizes.
    pub write_pid_file: bool,
}

#[async_trait]
impl BackgroundService for Readiness {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut probe = self.listen;
        if probe.ip().is_unspecified() {
            probe.set_ip(match probe {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let accepted = tokio::task::spawn_blocking(move || {
                TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_ok()
            })
            .await
            .unwrap_or(false);
            if accepted {
                break;
            }
            if Instant::now() >= deadline {
                log::error!("{probe} did not accept within {READY_TIMEOUT:?}; not reporting ready");
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = shutdown.changed() => return,
            }
        }
        let pid = std::process::id();
        if self.write_pid_file {
            if let Err(e) = std::fs::write(&self.pid_file, format!("{pid}\n")) {
                log::warn!("cannot write the pid file {}: {e}", self.pid_file);
            }
        }
        if let Err(e) = sd_notify::notify(
            false,
            &[
                sd_notify::NotifyState::MainPid(pid),
                sd_notify::NotifyState::Ready,
            ],
        ) {
            log::warn!("cannot notify systemd: {e}");
        }
        log::info!("ready: serving on {}", self.listen);
    }
}
