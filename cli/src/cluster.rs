//! `fathom cluster scheduler|executor`: Apache DataFusion Ballista's
//! scheduler and executors, so `fathom sql --cluster URL` runs the same
//! tables and views on several processes or machines.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

/// `fathom cluster …`.
#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Run a Ballista scheduler until stopped: it plans queries from
    /// `fathom sql --cluster` and hands their tasks to executors.
    Scheduler(SchedulerArgs),
    /// Run a Ballista executor for a scheduler until stopped. Executors read the
    /// snapshot files themselves: local paths (one machine, or a shared
    /// directory) or an object store location (S3 and others, from the environment).
    Executor(ExecutorArgs),
}

/// Arguments of `fathom cluster scheduler`.
#[derive(Debug, clap::Args)]
pub struct SchedulerArgs {
    /// Where to listen (gRPC).
    #[arg(long, default_value = "127.0.0.1:50050")]
    pub addr: SocketAddr,
    /// The host executors and clients use to reach this scheduler (default: the address's).
    #[arg(long)]
    pub external_host: Option<String>,
}

/// Arguments of `fathom cluster executor`.
#[derive(Debug, clap::Args)]
pub struct ExecutorArgs {
    /// The scheduler: df://host:port (or http://host:port).
    #[arg(long, default_value = "df://127.0.0.1:50050")]
    pub scheduler: String,
    /// The host to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_host: String,
    /// The Arrow Flight port (results and shuffle data).
    #[arg(long, default_value_t = 50051)]
    pub port: u16,
    /// The gRPC port (tasks from the scheduler).
    #[arg(long, default_value_t = 50052)]
    pub grpc_port: u16,
    /// Tasks run at once (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub concurrency: usize,
    /// Where shuffle files go (default: a temporary directory).
    #[arg(long)]
    pub work_dir: Option<String>,
}

pub fn run(cmd: ClusterCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match cmd {
            ClusterCommand::Scheduler(args) => scheduler(args).await,
            ClusterCommand::Executor(args) => executor(args).await,
        }
    })
}

async fn scheduler(args: SchedulerArgs) -> anyhow::Result<ExitCode> {
    use ballista_scheduler::cluster::BallistaCluster;
    use ballista_scheduler::config::SchedulerConfig;
    // The scheduler plans against the snapshot files too (their schemas
    // and statistics): files on object storage need their store, made from
    // the URL and this process's environment, as the executors do.
    let sessions: ballista_scheduler::scheduler_server::SessionBuilder = Arc::new(|config| {
        let state = ballista_core::utils::default_session_builder(config)?;
        Ok(
            fathom_query::datafusion::execution::session_state::SessionStateBuilder::new_from_existing(state)
                .with_runtime_env(location_runtime()?)
                .build(),
        )
    });
    let config = SchedulerConfig {
        bind_host: args.addr.ip().to_string(),
        bind_port: args.addr.port(),
        external_host: args.external_host.unwrap_or_else(|| args.addr.ip().to_string()),
        override_session_builder: Some(sessions),
        ..SchedulerConfig::default()
    };
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| anyhow::anyhow!("setting up the scheduler's state: {e}"))?;
    println!(
        "scheduler listening on df://{}; start executors with 'fathom cluster executor --scheduler df://{}'",
        args.addr, args.addr
    );
    use std::io::Write as _;
    std::io::stdout().flush()?;
    tokio::select! {
        served = ballista_scheduler::scheduler_process::start_server(cluster, args.addr, Arc::new(config)) => {
            served.map_err(|e| anyhow::anyhow!("the scheduler on {} stopped: {e}", args.addr))?;
        }
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// A runtime whose object stores come from the URLs met in plans (S3 and
/// others, credentials from the environment).
fn location_runtime()
-> fathom_query::datafusion::error::Result<Arc<fathom_query::datafusion::execution::runtime_env::RuntimeEnv>> {
    let env = fathom_query::datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(fathom_query::LocationStores::default()))
        .build()?;
    Ok(Arc::new(env))
}

/// Host and port of a `df://host:port` (or `http://…`) URL.
pub(crate) fn host_port(url: &str, what: &str) -> anyhow::Result<(String, u16)> {
    let parsed =
        url::Url::parse(url).map_err(|e| anyhow::anyhow!("{what} '{url}' is not a URL ({e}); write df://host:port"))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| anyhow::anyhow!("{what} '{url}' names no host; write df://host:port"))?;
    Ok((host.to_string(), parsed.port().unwrap_or(50050)))
}

async fn executor(args: ExecutorArgs) -> anyhow::Result<ExitCode> {
    use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
    let (scheduler_host, scheduler_port) = host_port(&args.scheduler, "--scheduler")?;
    // Snapshot files on object storage are opened from the URLs in the
    // plans, with credentials from this process's environment.
    let runtime: ballista_core::RuntimeProducer = Arc::new(|_config| location_runtime());
    let mut config = ExecutorProcessConfig {
        bind_host: args.bind_host.clone(),
        port: args.port,
        grpc_port: args.grpc_port,
        scheduler_host,
        scheduler_port,
        scheduler_connect_timeout_seconds: 30,
        work_dir: args.work_dir.clone(),
        print_thread_info: false,
        override_runtime_producer: Some(runtime),
        ..ExecutorProcessConfig::default()
    };
    if args.concurrency > 0 {
        config.vcores = args.concurrency;
    }
    println!(
        "executor on {}:{} (gRPC {}) for scheduler {}",
        args.bind_host, args.port, args.grpc_port, args.scheduler
    );
    use std::io::Write as _;
    std::io::stdout().flush()?;
    tokio::select! {
        served = start_executor_process(Arc::new(config)) => {
            served.map_err(|e| anyhow::anyhow!("the executor stopped: {e}"))?;
        }
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(ExitCode::SUCCESS)
}
