//! `fathom gateway serve`: the web gateway's HTTP attempts as a service,
//! so rollouts spread their tool calls over many processes and machines
//! (`--gateways URL,URL,…` on `fathom train` / `eval`; see
//! `fathom_replay::remote` for the protocol).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use fathom_core::{Clock, SystemClock};
use fathom_replay::gateway::{Gateway, GatewayConfig, SearchBackend, WireRequest};

/// `fathom gateway …`.
#[derive(Debug, clap::Subcommand)]
pub enum GatewayCommand {
    /// Serve the gateway's HTTP attempts (search and page fetches, with the
    /// pages read to text for the browsing agent) to trainers and evaluations
    /// on other processes or machines, until stopped (Ctrl-C).
    Serve(GatewayServeArgs),
}

/// Arguments of `fathom gateway serve`.
#[derive(Debug, clap::Args)]
pub struct GatewayServeArgs {
    /// Where to listen; port 0 picks a free one. Loopback by default:
    /// another address lets other machines use it, so give it a --token.
    #[arg(long, default_value = "127.0.0.1:8940")]
    pub addr: SocketAddr,
    /// A token every request must carry (Authorization: Bearer T).
    #[arg(long, env = "FATHOM_GATEWAY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A running sandbox (`fathom sandbox serve`) at this search address whose
    /// sites this gateway may reach; without it, only public addresses.
    #[arg(long)]
    pub sandbox: Option<SocketAddr>,
    /// Another internal address this gateway may reach (a SearXNG on loopback); repeatable.
    #[arg(long)]
    pub allow: Vec<SocketAddr>,
    /// Concurrent requests per host.
    #[arg(long, default_value_t = 16)]
    pub per_host: usize,
}

pub fn run(cmd: GatewayCommand) -> anyhow::Result<ExitCode> {
    let GatewayCommand::Serve(args) = cmd;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args))
}

struct Served {
    gateway: Gateway,
    token: Option<String>,
    served: AtomicU64,
    pages_read: AtomicU64,
}

async fn serve(args: GatewayServeArgs) -> anyhow::Result<ExitCode> {
    // The search backend is the caller's (it travels in each request);
    // this process only needs the address guard.
    let mut config = GatewayConfig::new(SearchBackend::Serper {
        url: String::new(),
        key: None,
    });
    config.per_host = args.per_host.max(1);
    if let Some(sandbox) = args.sandbox {
        let addrs = fathom_replay::gateway::sandbox_addresses(sandbox).await.map_err(|e| {
            anyhow::anyhow!(
                "no sandbox answers at {sandbox} ({e}); start one with 'fathom sandbox serve --addr {sandbox}' or drop --sandbox"
            )
        })?;
        config.policy.allowed.extend(addrs);
    }
    config.policy.allowed.extend(args.allow.iter().copied());
    if !args.addr.ip().is_loopback() && args.token.is_none() {
        eprintln!(
            "warning: serving on {}, reachable from other machines, without a token; pass --token",
            args.addr
        );
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let served = Arc::new(Served {
        gateway: Gateway::live(config, clock).map_err(|e| anyhow::anyhow!("starting the gateway: {e}"))?,
        token: args.token.clone(),
        served: AtomicU64::new(0),
        pages_read: AtomicU64::new(0),
    });
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("listening on {}", args.addr))?;
    let addr = listener.local_addr()?;
    println!("gateway listening on http://{addr}; Ctrl-C stops");
    use std::io::Write as _;
    std::io::stdout().flush()?;
    axum::serve(listener, router(served.clone()))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving")?;
    println!(
        "served {} attempt(s), read {} page(s)",
        served.served.load(Ordering::Relaxed),
        served.pages_read.load(Ordering::Relaxed)
    );
    Ok(ExitCode::SUCCESS)
}

fn router(served: Arc<Served>) -> Router {
    Router::new()
        .route("/v1/attempt", post(attempt))
        .route("/v1/health", get(health))
        .with_state(served)
}

async fn health(State(served): State<Arc<Served>>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "status": "ok",
        "attempts": served.served.load(Ordering::Relaxed),
        "pages_read": served.pages_read.load(Ordering::Relaxed),
        "reader": fathom_replay::gateway::reader_fingerprint(),
    }))
}

async fn attempt(State(served): State<Arc<Served>>, headers: HeaderMap, body: Bytes) -> axum::response::Response {
    if let Some(token) = &served.token {
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_str()) {
            return (
                StatusCode::UNAUTHORIZED,
                "this gateway needs its token (Authorization: Bearer T)",
            )
                .into_response();
        }
    }
    let (mut request, request_body): (WireRequest, Vec<u8>) = match fathom_replay::remote::unframe(&body) {
        Ok(parts) => parts,
        Err(why) => return (StatusCode::BAD_REQUEST, format!("not an attempt: {why}")).into_response(),
    };
    request.body = request_body;
    let ex = served.gateway.perform(&request).await;
    served.served.fetch_add(1, Ordering::Relaxed);
    if ex.page.is_some() {
        served.pages_read.fetch_add(1, Ordering::Relaxed);
    }
    let reply = fathom_replay::remote::frame(&ex, &ex.body);
    ([("content-type", "application/octet-stream")], reply).into_response()
}
