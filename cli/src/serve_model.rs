//! `fathom serve-model`: a policy as an OpenAI-compatible endpoint.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use fathom_trainer::candle_policy::CandleModel;
use fathom_trainer::openai::{Served, router};

/// Arguments of `fathom serve-model`.
#[derive(Debug, clap::Args)]
pub struct ServeModelArgs {
    /// What to serve: `candle:DIR` (a Hugging Face Qwen2 model directory).
    #[arg(long)]
    pub policy: String,
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub addr: std::net::SocketAddr,
    /// The model name `/v1/models` lists (default: the directory's name).
    #[arg(long)]
    pub name: Option<String>,
    /// `cpu`, or `cuda:N` (built with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// `f32` or `bf16`.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Tokens generated when a request gives no `max_tokens`.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: u32,
    /// The turn rules the model was trained under: 2 (fathom's current
    /// rules, DeepResearcher's) ends each prompt with `<think>` and begins
    /// each reply with it; 1 serves plain chat.
    #[arg(long, default_value_t = 2)]
    pub protocol: u32,
}

pub fn run(args: ServeModelArgs) -> anyhow::Result<ExitCode> {
    let Some(dir) = args.policy.strip_prefix("candle:") else {
        anyhow::bail!("--policy must be candle:DIR (a model directory); got '{}'", args.policy);
    };
    let dir = Path::new(dir);
    let model = CandleModel::load(dir, &args.device, &args.dtype)
        .with_context(|| format!("loading the model directory {}", dir.display()))?;
    let name = args.name.clone().unwrap_or_else(|| {
        dir.file_name()
            .map_or("fathom-model".into(), |n| n.to_string_lossy().into_owned())
    });
    if !args.addr.ip().is_loopback() {
        eprintln!(
            "warning: serving on {}, reachable from other machines; the endpoint has no authentication",
            args.addr
        );
    }
    let protocol =
        fathom_core::protocol::Protocol::try_from(args.protocol).map_err(|e| anyhow::anyhow!("--protocol: {e}"))?;
    let served = Arc::new(Served {
        model: Arc::new(model),
        name: name.clone(),
        default_max_tokens: args.max_tokens,
        protocol,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .with_context(|| format!("listening on {}", args.addr))?;
        let addr = listener.local_addr()?;
        println!("listening on http://{addr}/v1 (model '{name}'); Ctrl-C stops");
        use std::io::Write as _;
        std::io::stdout().flush()?;
        axum::serve(listener, router(served))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("serving")?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
