//! `fathom serve`: the dashboard (the `web` crate) over the data directory.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;

/// Arguments of `fathom serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Where to listen. Loopback by default; another address exposes every recorded page and
    /// question, so give it a --token.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// A token every request must carry (Authorization: Bearer T, or ?token=T once in the browser).
    #[arg(long, env = "FATHOM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

pub fn run(data: &Path, args: ServeArgs) -> anyhow::Result<ExitCode> {
    if !args.addr.ip().is_loopback() && args.token.is_none() {
        anyhow::bail!(
            "{} is reachable from other machines and would show every recorded page and question to them; add --token (or FATHOM_TOKEN), or listen on 127.0.0.1",
            args.addr
        );
    }
    if args.token.as_deref().is_some_and(|t| t.len() < 12) {
        anyhow::bail!("--token must be at least 12 characters");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .with_context(|| format!("cannot listen on {}; pass --addr with a free port", args.addr))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "fathom dashboard on http://{addr}/{} (Ctrl-C stops)",
            if args.token.is_some() { "?token=…" } else { "" }
        );
        fathom_web::serve(
            listener,
            fathom_web::Config {
                data: data.to_path_buf(),
                token: args.token,
                refresh: std::time::Duration::from_secs(2),
            },
        )
        .await
        .context("serving the dashboard")?;
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
