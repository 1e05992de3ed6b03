//! The operator's surfaces, as upstream ztunnel serves them (telemetry.md §c): metrics on
//! `:15020` (`/metrics`, `/stats/prometheus`), readiness on `:15021` (`/healthz/ready`), and the
//! admin API on loopback `:15000` (`/config_dump`, `/logging`, `/quitquitquit`). They run on
//! the control runtime, so a slow scrape never takes a data-plane thread.

pub mod config_dump;
pub mod readiness;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ::http::request::Parts;
use ::http::{Method, StatusCode, header};
use mesh::telemetry::http::{self as admin_http, BindError, Reply, query_param, text, with_type};
use mesh::telemetry::logging::LogControl;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use readiness::Readiness;

/// Builds the `/config_dump` document on demand, as the JSON bytes served. Bytes rather than a
/// `serde_json::Value`, whose maps would sort the keys out of upstream's order.
pub type ConfigDump = Box<dyn Fn() -> serde_json::Result<Vec<u8>> + Send + Sync>;

/// Where the three servers listen.
#[derive(Debug, Clone, Copy)]
pub struct AdminAddrs {
    /// Admin API; a loopback address (its IPv6 twin is bound too when available).
    pub admin: SocketAddr,
    /// Metrics.
    pub stats: SocketAddr,
    /// Readiness.
    pub readiness: SocketAddr,
}

/// What the endpoints read.
pub struct AdminState {
    /// Every metric family.
    pub registry: Registry,
    /// Start-up tasks still pending.
    pub readiness: Arc<Readiness>,
    /// The running log filter.
    pub logs: Option<LogControl>,
    /// The `/config_dump` document.
    pub config_dump: ConfigDump,
    /// Cancelled by `/quitquitquit`: starts the same graceful shutdown as SIGTERM.
    pub shutdown: CancellationToken,
}

/// Binds all three servers (failing with the address that could not be bound), then serves
/// them on the current runtime until `stop`.
pub async fn start(
    addrs: AdminAddrs,
    state: AdminState,
    stop: CancellationToken,
) -> Result<(), BindError> {
    let state = Arc::new(state);
    let stats = bind_any(addrs.stats).await?;
    let readiness = bind_any(addrs.readiness).await?;
    let mut admin = vec![admin_http::bind(addrs.admin).await?];
    if let Some(twin) = loopback_twin(addrs.admin) {
        match admin_http::bind(twin).await {
            Ok(listener) => admin.push(listener),
            Err(err) => info!(addr = %twin, error = %err.cause, "admin not on the IPv6 loopback"),
        }
    }
    info!(admin = %addrs.admin, stats = %local(&stats), readiness = %local(&readiness),
        "admin, metrics and readiness servers listening");
    let serving = Arc::clone(&state);
    tokio::spawn(admin_http::serve(
        stats,
        move |parts| {
            let state = Arc::clone(&serving);
            async move { stats_reply(&state, &parts) }
        },
        stop.clone(),
    ));
    let serving = Arc::clone(&state);
    tokio::spawn(admin_http::serve(
        readiness,
        move |parts| {
            let state = Arc::clone(&serving);
            async move { state.readiness.respond(&parts.method, parts.uri.path()) }
        },
        stop.clone(),
    ));
    for listener in admin {
        let serving = Arc::clone(&state);
        tokio::spawn(admin_http::serve(
            listener,
            move |parts| {
                let state = Arc::clone(&serving);
                async move { admin_reply(&state, &parts) }
            },
            stop.clone(),
        ));
    }
    Ok(())
}

fn local(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string())
}

/// Binds `addr`; a dual-stack wildcard (`[::]`) falls back to `0.0.0.0` on a host without
/// IPv6.
async fn bind_any(addr: SocketAddr) -> Result<TcpListener, BindError> {
    match admin_http::bind(addr).await {
        Err(err) if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) => {
            let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
            warn!(addr = %addr, error = %err.cause, fallback = %v4, "no IPv6 wildcard; IPv4 only");
            admin_http::bind(v4).await
        }
        bound => bound,
    }
}

/// `[::1]` for `127.0.0.1` (upstream binds the admin port on both loopbacks).
fn loopback_twin(addr: SocketAddr) -> Option<SocketAddr> {
    (addr.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST))
        .then(|| SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port()))
}

fn stats_reply(state: &AdminState, parts: &Parts) -> Reply {
    match parts.uri.path() {
        "/metrics" | "/stats/prometheus" => {
            let accept = parts
                .headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            mesh::telemetry::metrics::scrape(&state.registry, accept)
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

const INDEX: &str = "<html><body><h1>ztunnel admin</h1><ul>\
<li><a href=\"/config_dump\">/config_dump</a>: workloads, services, policies, certificates</li>\
<li>POST /logging?level=&lt;level&gt; or &lt;target&gt;=&lt;level&gt;[&amp;reset]: change the log filter</li>\
<li>POST /quitquitquit: graceful shutdown</li>\
</ul></body></html>\n";

fn admin_reply(state: &AdminState, parts: &Parts) -> Reply {
    match parts.uri.path() {
        "/" => with_type(StatusCode::OK, "text/html; charset=utf-8", INDEX.into()),
        "/config_dump" => match (state.config_dump)() {
            Ok(body) => with_type(StatusCode::OK, "application/json", body),
            Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")),
        },
        "/logging" => logging(state, parts),
        "/quitquitquit" if parts.method == Method::POST => {
            info!("shutdown requested on the admin port");
            state.shutdown.cancel();
            text(StatusCode::OK, "shutdown now\n")
        }
        "/quitquitquit" => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn logging(state: &AdminState, parts: &Parts) -> Reply {
    const USAGE: &str = "usage: POST /logging[?level=<level>|<target>=<level>,...][&reset]\n";
    if parts.method != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, USAGE);
    }
    let Some(logs) = &state.logs else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "log control unavailable\n",
        );
    };
    let level = query_param(parts, "level");
    let reset = query_param(parts, "reset").is_some();
    if level.is_none() && !reset {
        return text(
            StatusCode::OK,
            format!("current log level is {}\n", logs.current()),
        );
    }
    match logs.update(level.as_deref(), reset) {
        Ok(filter) => {
            info!(%filter, "log filter changed on the admin port");
            text(StatusCode::OK, format!("current log level is {filter}\n"))
        }
        Err(err) => text(StatusCode::BAD_REQUEST, format!("{err}\n{USAGE}")),
    }
}
