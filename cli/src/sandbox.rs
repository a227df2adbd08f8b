//! `fathom sandbox …`: the built-in web.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use fathom_sandbox::faults::FaultSpec;
use fathom_sandbox::{Sandbox, SandboxWeb, ServeConfig};

#[derive(Debug, clap::Subcommand)]
pub enum SandboxCommand {
    /// Serve the sandbox web on loopback until stopped (Ctrl-C): a
    /// Serper/SearXNG-compatible search API and one page server per site.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address of the search API; port 0 picks a free one. Sites take free ports on the same host.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub addr: SocketAddr,
    /// Seed of the world: the same seed serves the same pages, byte for byte.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Approximate number of entities in the world.
    #[arg(long, default_value_t = 2000)]
    pub entities: usize,
    /// Faults to inject, e.g. `0.1` or `latency=0.1:300ms,404=0.05,429=0.05:2s,500=0.05`.
    #[arg(long, default_value = "none")]
    pub faults: String,
}

pub fn run(cmd: SandboxCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SandboxCommand::Serve(args) => serve(args),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let faults = FaultSpec::parse(&args.faults)?;
    if !args.addr.ip().is_loopback() {
        eprintln!(
            "warning: serving the sandbox on {}, which is not a loopback address",
            args.addr.ip()
        );
    }
    let web = Arc::new(SandboxWeb::generate(args.seed, args.entities).context("building the sandbox web")?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let config = ServeConfig {
            host: args.addr.ip(),
            search_port: args.addr.port(),
            faults,
            fault_seed: args.seed,
        };
        let sandbox = Sandbox::start(web.clone(), config)
            .await
            .with_context(|| format!("cannot listen on {}", args.addr))?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on http://{}", sandbox.search_addr)?;
            out.flush()?;
        }
        eprintln!(
            "sandbox seed {}: {} entities, {} pages; search at {}; sites: {}",
            args.seed,
            web.world.entities.len(),
            web.pages.len(),
            sandbox.search_url(),
            sandbox
                .site_addrs
                .iter()
                .map(|(s, a)| format!("{}=http://{a}", s.name()))
                .collect::<Vec<_>>()
                .join(" ")
        );
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
        drop(sandbox);
        Ok(ExitCode::SUCCESS)
    })
}
