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
use axum::http::StatusCode;
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
    /// The largest response body an attempt may hold.
    max_body_bytes: usize,
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
    match &args.token {
        None if !args.addr.ip().is_loopback() => anyhow::bail!(
            "{} is reachable from other machines, which could make web requests through this gateway; add --token (or FATHOM_GATEWAY_TOKEN), or listen on 127.0.0.1",
            args.addr
        ),
        Some(t) if t.len() < 12 => anyhow::bail!("--token must be at least 12 characters"),
        _ => {}
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let config_max_body = config.max_body_bytes;
    let served = Arc::new(Served {
        gateway: Gateway::live(config, clock).map_err(|e| anyhow::anyhow!("starting the gateway: {e}"))?,
        token: args.token.clone(),
        max_body_bytes: config_max_body,
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
        .layer(axum::middleware::from_fn_with_state(served.clone(), token_check))
        .with_state(served)
}

/// Every route needs the token, when there is one.
async fn token_check(
    State(served): State<Arc<Served>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if let Some(token) = &served.token {
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // The same time whatever the first differing byte.
        let same = given.is_some_and(|g| {
            g.len() == token.len() && g.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
        });
        if !same {
            return (
                StatusCode::UNAUTHORIZED,
                "this gateway needs its token (Authorization: Bearer T)",
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// The longest a client may ask one attempt to take.
const MAX_TIMEOUT_MS: u64 = 120_000;

async fn health(State(served): State<Arc<Served>>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "status": "ok",
        "attempts": served.served.load(Ordering::Relaxed),
        "pages_read": served.pages_read.load(Ordering::Relaxed),
        "reader": fathom_replay::gateway::reader_fingerprint(),
    }))
}

async fn attempt(State(served): State<Arc<Served>>, body: Bytes) -> axum::response::Response {
    let (mut request, request_body): (WireRequest, Vec<u8>) = match fathom_replay::remote::unframe(&body) {
        Ok(parts) => parts,
        Err(why) => return (StatusCode::BAD_REQUEST, format!("not an attempt: {why}")).into_response(),
    };
    request.body = request_body;
    // The client's limits, within this server's: one request may not hold
    // a response body or a connection beyond them.
    request.max_body_bytes = request.max_body_bytes.min(served.max_body_bytes);
    request.timeout_ms = request.timeout_ms.min(MAX_TIMEOUT_MS);
    let ex = served.gateway.perform(&request).await;
    served.served.fetch_add(1, Ordering::Relaxed);
    if ex.page.is_some() {
        served.pages_read.fetch_add(1, Ordering::Relaxed);
    }
    let reply = fathom_replay::remote::frame(&ex, &ex.body);
    ([("content-type", "application/octet-stream")], reply).into_response()
}
