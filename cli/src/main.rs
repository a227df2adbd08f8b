//! The `fathom` command: thin subcommands over fathom's crates.
//!
//! Each subcommand parses its arguments, opens what it needs (usually the
//! [`Store`](fathom_store::Store) of the `--data` directory), calls into a
//! library crate, and renders the result. Logic that is worth testing without
//! a process lives in the libraries, not here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod checkpoint;
mod cluster;
mod demo;
mod eval;
mod export;
mod gateway;
mod log;
mod model;
mod rebuild;
mod replay;
mod sandbox;
mod score;
mod serve;
mod serve_model;
mod snapshot;
mod sql;
mod train;
mod verify;
mod web;

/// fathom: train, record, replay and query deep-research agents.
#[derive(Debug, Parser)]
#[command(name = "fathom", version, about, long_about = None)]
struct Cli {
    /// The data directory: the event log, blobs, and later snapshots and checkpoints.
    #[arg(long, global = true, env = "FATHOM_DATA", default_value = "./fathom-data")]
    data: PathBuf,

    /// When commands that write the log also snapshot it to Parquet: a
    /// number of new events, a time (30s, 5m), both (100000,60s), or off.
    /// A last snapshot is always taken when such a command ends, unless off.
    #[arg(long, global = true, env = "FATHOM_SNAPSHOT_EVERY", default_value = "100000,60s", value_parser = parse_policy)]
    snapshot_every: fathom_store::snapshot::AutoPolicy,

    /// Where snapshots (and checkpoints) are shipped after each snapshot,
    /// and where `fathom sql` reads them: s3://bucket/prefix, gs://…, az://…,
    /// file:///dir or a directory. Credentials and endpoint from the usual
    /// environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
    /// AWS_ENDPOINT_URL, AWS_ALLOW_HTTP). A training config's `snapshots`
    /// field does the same for `fathom train`.
    #[arg(long, global = true, env = "FATHOM_SNAPSHOTS", value_name = "URL")]
    snapshots: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect or exercise the event log.
    #[command(subcommand)]
    Log(log::LogCommand),
    /// Check every event frame, index entry and blob, and the snapshots against their manifest and
    /// the log; exit 0 only when all is well.
    Verify(verify::VerifyArgs),
    /// Score responses with the DeepResearcher reward (format, F1, EM).
    Score(score::ScoreArgs),
    /// The built-in sandbox web.
    #[command(subcommand)]
    Sandbox(sandbox::SandboxCommand),
    /// Search or fetch through the web gateway, recorded, as the agent would.
    #[command(subcommand)]
    Web(web::WebCommand),
    /// Distributed SQL: Apache DataFusion Ballista's scheduler and executors
    /// for `fathom sql --cluster`.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// The web gateway as a service: rollouts spread their tool calls over
    /// several (`--gateways URL,URL,…`).
    #[command(subcommand)]
    Gateway(gateway::GatewayCommand),
    /// The whole loop on the built-in sandbox web, no network, no arguments: make a tiny model,
    /// warm-start it on scripted trajectories, train it with GRPO, evaluate before and after.
    Demo(demo::DemoArgs),
    /// Train a policy with GRPO from a TOML configuration (see examples/); --resume continues.
    Train(train::TrainArgs),
    /// Evaluate a policy on a question set (verl Parquet): F1 and EM per data source.
    Eval(eval::EvalArgs),
    /// Export the log: the recorded web as WARC 1.1, or trajectories as chat-format JSON lines.
    Export(export::ExportArgs),
    /// Recompute every Parquet table from the raw log and check it equals the committed snapshots.
    Rebuild(rebuild::RebuildArgs),
    /// Re-run recorded episodes from the log: --check confirms they are identical or names where
    /// and why they diverge; --checkpoint / --policy re-run one counterfactually.
    Replay(replay::ReplayArgs),
    /// Bring the Parquet snapshots up to date with the log (and compact them).
    Snapshot(snapshot::SnapshotArgs),
    /// Query runs, episodes, turns, tool calls, web requests, … with SQL (read-only).
    Sql(sql::SqlArgs),
    /// Make and inspect model directories (Hugging Face layout).
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// A training run's weights after any step: `materialize` writes them as a
    /// model directory, rebuilt from the log where no checkpoint was kept.
    #[command(subcommand)]
    Checkpoint(checkpoint::CheckpointCommand),
    /// The dashboard: runs, curves, episodes, behaviours and SQL in the browser (127.0.0.1:8080).
    Serve(serve::ServeArgs),
    /// Serve a model as an OpenAI-compatible endpoint (/v1/chat/completions, /v1/models).
    ServeModel(serve_model::ServeModelArgs),
}

fn parse_policy(text: &str) -> Result<fathom_store::snapshot::AutoPolicy, String> {
    fathom_store::snapshot::AutoPolicy::parse(text)
}

/// glibc returns every large block to the kernel when it is freed, so a
/// training step (whose attention tensors are tens of megabytes, allocated
/// and freed per layer) spends more time in page faults than in
/// arithmetic: measured 2x on the tiny model's forward+backward. Keep
/// freed memory for reuse instead.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; it is called
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

/// How a writing command snapshots the log: when, and where the
/// snapshots are shipped.
#[derive(Debug, Clone)]
pub(crate) struct Snapshotting {
    pub policy: fathom_store::snapshot::AutoPolicy,
    pub ship: Option<std::sync::Arc<fathom_store::remote::Location>>,
}

impl Snapshotting {
    /// Snapshot options with the ship location.
    pub(crate) fn options(&self) -> fathom_store::snapshot::SnapshotOptions {
        fathom_store::snapshot::SnapshotOptions {
            ship: self.ship.clone(),
            ..Default::default()
        }
    }
}

/// Parses `--snapshots` / `FATHOM_SNAPSHOTS` / a config's `snapshots`.
pub(crate) fn location(url: &str) -> anyhow::Result<std::sync::Arc<fathom_store::remote::Location>> {
    Ok(std::sync::Arc::new(fathom_store::remote::Location::parse(url)?))
}

/// A reader that stops early (`fathom log stats | head -1`) closes the
/// pipe; printing then fails, and the process ends quietly, with the status
/// of a process ended by SIGPIPE, instead of with a panic's message.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

/// Whether `err` is a write to a pipe whose reader has gone.
pub(crate) fn broken_pipe(err: &anyhow::Error) -> bool {
    let kind = std::io::ErrorKind::BrokenPipe;
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == kind)
            || c.downcast_ref::<serde_json::Error>()
                .is_some_and(|e| e.io_error_kind() == Some(kind))
    })
}

fn main() -> ExitCode {
    tune_allocator();
    quiet_on_broken_pipe();
    let cli = Cli::parse();
    let ship = match cli.snapshots.as_deref().map(location).transpose() {
        Ok(l) => l,
        Err(err) => {
            eprintln!("error: --snapshots: {}", describe(&err));
            return ExitCode::FAILURE;
        }
    };
    let snapshotting = Snapshotting {
        policy: cli.snapshot_every.clone(),
        ship: ship.clone(),
    };
    let result = match cli.command {
        Command::Log(cmd) => log::run(&cli.data, cmd, snapshotting),
        Command::Verify(args) => verify::run(&cli.data, args),
        Command::Score(args) => score::run(args),
        Command::Sandbox(cmd) => sandbox::run(cmd),
        Command::Web(cmd) => web::run(&cli.data, cmd),
        Command::Gateway(cmd) => gateway::run(cmd),
        Command::Cluster(cmd) => cluster::run(cmd),
        Command::Serve(args) => serve::run(&cli.data, args),
        Command::Demo(args) => demo::run(&cli.data, args, snapshotting),
        Command::Train(args) => train::run(&cli.data, args, snapshotting),
        Command::Eval(args) => eval::run(&cli.data, args, snapshotting),
        Command::Export(args) => export::run(&cli.data, args),
        Command::Rebuild(args) => rebuild::run(&cli.data, args),
        Command::Replay(args) => replay::run(&cli.data, args),
        Command::Snapshot(args) => snapshot::run(&cli.data, args, ship),
        Command::Sql(args) => sql::run(&cli.data, args, ship),
        Command::Model(cmd) => model::run(cmd),
        Command::Checkpoint(cmd) => checkpoint::run(&cli.data, cmd),
        Command::ServeModel(args) => serve_model::run(args),
    };
    match result {
        Ok(code) => code,
        // The reader of our output went away (`| head`): nothing to say.
        Err(err) if broken_pipe(&err) => ExitCode::from(141),
        Err(err) => {
            eprintln!("error: {}", describe(&err));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each said once: many errors name
/// their cause in their own message too (`could not read F: <os error>`),
/// and the cause is not repeated after them.
pub(crate) fn describe(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// A progress bar on stderr that draws only on a terminal, so piped output
/// and tests stay clean.
pub(crate) fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({per_sec}, {eta})")
            .expect("static template is valid")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Opens the store for a command, adding what to do when it is in use.
pub(crate) fn open_store(data: &std::path::Path, opts: fathom_store::Options) -> anyhow::Result<fathom_store::Store> {
    let store = fathom_store::Store::open(data, opts)?;
    report_recovery(&store);
    Ok(store)
}

/// Tells the user what recovery cut or re-indexed, on stderr.
pub(crate) fn report_recovery(store: &fathom_store::Store) {
    let rec = store.recovery();
    if let Some((at, why)) = &rec.segment_cut {
        eprintln!(
            "warning: recovery cut the segments at {at} ({why}); the bytes from there on are kept in {}",
            store.dir().segments_dir().join("quarantine").display()
        );
    }
    if !rec.cut.is_empty() {
        eprintln!(
            "warning: recovery cut {} corrupt event(s) from the end of the log (kept in quarantine); the log now ends at {}",
            rec.cut.len(),
            rec.last_seq
        );
        for (seq, why) in &rec.cut {
            eprintln!("  event {seq}: {why}");
        }
    }
}

/// What a command that writes the log runs beside it: background
/// snapshots, and the read endpoint through which other fathom processes
/// (`fathom sql`) see the newest events.
pub(crate) struct Background {
    auto: fathom_store::snapshot::AutoSnapshot,
    _tail: Option<fathom_store::tail::TailServer>,
}

/// Starts the background work of a writing command.
pub(crate) fn auto_snapshot(store: &std::sync::Arc<fathom_store::Store>, snapshots: Snapshotting) -> Background {
    let tail = match fathom_store::tail::TailServer::start(store.clone()) {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!("warning: other fathom processes will see only the snapshots of this run: {e}");
            None
        }
    };
    Background {
        auto: fathom_store::snapshot::AutoSnapshot::start(store.clone(), snapshots.policy.clone(), snapshots.options()),
        _tail: tail,
    }
}

/// Takes the last snapshot of a writing command and says so on stderr.
pub(crate) fn finish_snapshots(background: Background) -> anyhow::Result<()> {
    if let Some(report) = background.auto.finish()? {
        eprintln!(
            "snapshots cover events up to {} ('fathom sql' to query)",
            report.upto_seq
        );
        if let Some(shipped) = &report.shipped {
            eprintln!("{}", ship_line(shipped));
        }
    }
    Ok(())
}

/// One line saying what a ship did.
pub(crate) fn ship_line(r: &fathom_store::remote::ShipReport) -> String {
    format!(
        "shipped: {} snapshot file(s) and {} checkpoint file(s), {} uploaded, {} stale object(s) removed; the remote manifest covers events up to {}",
        r.files,
        r.checkpoint_files,
        bytes(r.bytes),
        r.removed,
        r.upto_seq
    )
}

/// Human-readable bytes.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
