//! `fathom log …`: look into the event log, and put load on it.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use fathom_core::event::{RunFinished, RunKind, RunStarted, RunStatus};
use std::sync::Arc;

use fathom_core::{Clock, Event, EventKind, IdKind, RunId, Seq, SystemClock};
use fathom_store::synthetic::{self, TrainingLoad, TrainingSpec};
use fathom_store::workload::{self, Workload, WorkloadSpec};
use fathom_store::{Durability, Options, Store};

#[derive(Debug, clap::Subcommand)]
pub enum LogCommand {
    /// Events per kind and per run, bytes, blobs and the dedupe ratio.
    Stats {
        /// Print one JSON object instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Print events as JSON lines (the last 10 unless told otherwise).
    Tail(TailArgs),
    /// Append a synthetic rollout workload (model turns, web pages as blobs)
    /// and report throughput: a load generator for disks and for the log.
    Load(LoadArgs),
}

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// Keep running and print new events as they are appended (Ctrl-C stops).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Start at this sequence number instead of the last few events.
    #[arg(long)]
    pub from: Option<Seq>,
    /// How many of the latest events to print first (without --from).
    #[arg(long, short = 'n', default_value_t = 10)]
    pub lines: u64,
    /// Only events of this run (`r-3`).
    #[arg(long)]
    pub run: Option<RunId>,
    /// Only events of this kind (`turn_generated`, `web_exchange`, …).
    #[arg(long, value_parser = parse_kind)]
    pub kind: Option<EventKind>,
}

fn parse_kind(s: &str) -> Result<EventKind, String> {
    EventKind::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
        format!("unknown event kind '{s}'; the kinds are: {}", names.join(", "))
    })
}

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Events to append; 0 appends until the process is stopped.
    #[arg(long, default_value_t = 5000)]
    pub events: u64,
    /// Instead of raw turns and pages, write a synthetic GRPO training run
    /// of this many episodes (whole steps of 128 episodes, every event kind,
    /// metrics on a learning curve), for the SQL layer and its benchmarks.
    #[arg(long, conflicts_with = "events")]
    pub episodes: Option<u64>,
    /// Events per appended batch.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Return from appends before they are flushed (see store/README.md).
    #[arg(long)]
    pub relaxed: bool,
    /// Fraction of page fetches that repeat an earlier page.
    #[arg(long, default_value_t = 0.3)]
    pub repeat: f64,
    /// Smallest page body in bytes.
    #[arg(long, default_value_t = 20_000)]
    pub body_min: usize,
    /// Largest page body in bytes.
    #[arg(long, default_value_t = 200_000)]
    pub body_max: usize,
    /// Seed of the synthetic content.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print `ack FIRST LAST` on stdout after each acknowledged batch.
    #[arg(long)]
    pub print_acks: bool,
    /// With --episodes: wait this many milliseconds after each step, like a
    /// training run that appends one step at a time (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub step_interval_ms: u64,
    /// Skip the verification pass at the end.
    #[arg(long)]
    pub no_verify: bool,
}

pub fn run(data: &Path, cmd: LogCommand, snapshots: crate::Snapshotting) -> anyhow::Result<ExitCode> {
    match cmd {
        LogCommand::Stats { json } => stats(data, json),
        LogCommand::Tail(args) => tail(data, args),
        LogCommand::Load(args) => match args.episodes {
            Some(n) => load_training(data, &args, n, snapshots),
            None => load(data, args, snapshots),
        },
    }
}

fn open_existing(data: &Path) -> anyhow::Result<Store> {
    if !data.join("log").exists() {
        anyhow::bail!(
            "{} holds no fathom log yet; run a command that writes one (for example 'fathom log load'), or pass --data (or FATHOM_DATA) with an existing data directory",
            data.display()
        );
    }
    crate::open_store(data, Options::default())
}

fn stats(data: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let store = open_existing(data)?;
    let bar = crate::progress_bar(store.last_seq().0, "scanning");
    let s = store.stats_with(&mut |done, _| bar.set_position(done))?;
    bar.finish_and_clear();
    if json {
        let by_kind: serde_json::Map<String, serde_json::Value> = s
            .by_kind
            .iter()
            .map(|(k, v)| {
                (
                    k.name().to_string(),
                    serde_json::json!({"events": v.events, "bytes": v.bytes}),
                )
            })
            .collect();
        let by_run: serde_json::Map<String, serde_json::Value> = s
            .by_run
            .iter()
            .map(|(r, v)| {
                (
                    r.to_string(),
                    serde_json::json!({"events": v.events, "bytes": v.bytes, "first_seq": v.first_seq, "last_seq": v.last_seq}),
                )
            })
            .collect();
        let out = serde_json::json!({
            "events": s.events,
            "last_seq": s.last_seq.0,
            "event_bytes": s.event_bytes,
            "corrupt_events": s.corrupt_events,
            "by_kind": by_kind,
            "by_run": by_run,
            "blobs": s.blobs,
            "blob_raw_bytes": s.blob_raw_bytes,
            "blob_stored_bytes": s.blob_stored_bytes,
            "blob_refs": s.blob_refs,
            "blob_referenced_bytes": s.blob_referenced_bytes,
            "dedupe_ratio": s.dedupe_ratio(),
            "compression_ratio": s.compression_ratio(),
            "disk_bytes": s.disk_bytes,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    use crate::bytes;
    println!("data directory: {}", data.display());
    println!(
        "events: {} (last seq {}), {} of frames{}",
        s.events,
        s.last_seq,
        bytes(s.event_bytes),
        if s.corrupt_events > 0 {
            format!(", {} CORRUPT (run 'fathom verify')", s.corrupt_events)
        } else {
            String::new()
        }
    );
    println!("disk: {}", bytes(s.disk_bytes));
    println!();
    println!("{:<20} {:>10} {:>12}", "kind", "events", "bytes");
    for (k, v) in &s.by_kind {
        println!("{:<20} {:>10} {:>12}", k.name(), v.events, bytes(v.bytes));
    }
    println!();
    println!("{:<20} {:>10} {:>12}  seqs", "run", "events", "bytes");
    for (r, v) in &s.by_run {
        println!(
            "{:<20} {:>10} {:>12}  {}..{}",
            r.to_string(),
            v.events,
            bytes(v.bytes),
            v.first_seq,
            v.last_seq
        );
    }
    println!();
    println!(
        "blobs: {} unique, {} raw, {} stored (compression {:.2}x)",
        s.blobs,
        bytes(s.blob_raw_bytes),
        bytes(s.blob_stored_bytes),
        s.compression_ratio()
    );
    println!(
        "blob references: {} naming {} (dedupe ratio {:.2}x)",
        s.blob_refs,
        bytes(s.blob_referenced_bytes),
        s.dedupe_ratio()
    );
    Ok(ExitCode::SUCCESS)
}

fn tail(data: &Path, args: TailArgs) -> anyhow::Result<ExitCode> {
    let store = open_existing(data)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let matches = |r: &fathom_core::Record| {
        args.run.is_none_or(|run| r.event.run == run) && args.kind.is_none_or(|k| r.event.kind() == k)
    };
    let last = store.last_seq();
    let mut next = match args.from {
        Some(seq) => seq.0.max(1),
        None if args.run.is_none() && args.kind.is_none() => last.0.saturating_sub(args.lines) + 1,
        None => {
            // Walk back far enough to find the last N matching events.
            let mut found = Vec::new();
            let mut seq = last.0;
            while seq > 0 && (found.len() as u64) < args.lines {
                if let Some(r) = store.get(Seq(seq))?
                    && matches(&r)
                {
                    found.push(seq);
                }
                seq -= 1;
            }
            found.last().copied().unwrap_or(last.0 + 1)
        }
    };
    loop {
        let end = store.last_seq();
        if next <= end.0 {
            for record in store.range(Seq(next)..=end) {
                // A corrupt event is reported and skipped: every other event
                // stays readable.
                let record = match record {
                    Ok(r) => r,
                    Err(err @ fathom_store::Error::CorruptEvent { .. }) => {
                        eprintln!("warning: {err}");
                        continue;
                    }
                    Err(err) => return Err(err.into()),
                };
                if matches(&record) {
                    serde_json::to_writer(&mut out, &record)?;
                    out.write_all(b"\n")?;
                }
            }
            next = end.0 + 1;
        }
        out.flush()?;
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        store.wait_after(end, Duration::from_millis(500));
    }
}

fn load(data: &Path, args: LoadArgs, snapshots: crate::Snapshotting) -> anyhow::Result<ExitCode> {
    if args.batch == 0 {
        anyhow::bail!("--batch must be at least 1");
    }
    if args.body_min > args.body_max {
        anyhow::bail!(
            "--body-min ({}) is larger than --body-max ({})",
            args.body_min,
            args.body_max
        );
    }
    if !(0.0..=1.0).contains(&args.repeat) {
        anyhow::bail!("--repeat must be between 0 and 1, got {}", args.repeat);
    }
    let durability = if args.relaxed {
        Durability::Relaxed
    } else {
        Durability::Durable
    };
    let store = Arc::new(crate::open_store(data, Options::default())?);
    let auto = crate::auto_snapshot(&store, snapshots);
    let clock = SystemClock;
    let run = store.new_run_id()?;
    let config = serde_json::json!({
        "events": args.events, "batch": args.batch, "relaxed": args.relaxed,
        "repeat": args.repeat, "body_min": args.body_min, "body_max": args.body_max, "seed": args.seed,
    });
    store.append(&[Event::new(run, clock.now(), load_run("log-load", config, args.seed))])?;
    let spec = WorkloadSpec {
        body_min: args.body_min,
        body_max: args.body_max,
        repeat_fraction: args.repeat,
        ..WorkloadSpec::default()
    };
    // Ids after those the log has given out (other runs' episodes and
    // requests), and the counters moved past each batch before it is
    // appended, so a load never reuses an id.
    let mut generator = Workload::new(args.seed, run, spec).starting_at(clock.now()).ids_after(
        store.reserve_ids(IdKind::Episode, 0)?,
        store.reserve_ids(IdKind::Request, 0)?,
    );
    let bar = crate::progress_bar(args.events, "appending");
    let stdout = std::io::stdout();
    let start = clock.now();
    let (mut appended, mut logical) = (0u64, 0u64);
    while args.events == 0 || appended < args.events {
        let n = if args.events == 0 {
            args.batch
        } else {
            args.batch.min((args.events - appended) as usize)
        };
        let items = generator.batch(n);
        let (last_episode, last_request) = generator.last_ids();
        store.reserve_through(IdKind::Episode, last_episode)?;
        store.reserve_through(IdKind::Request, last_request)?;
        logical += items.iter().map(|i| i.blob_bytes().len() as u64).sum::<u64>();
        let range = workload::append(&store, &items, durability)?.context("a non-empty batch returns its range")?;
        appended += n as u64;
        if args.print_acks {
            let mut out = stdout.lock();
            writeln!(out, "ack {} {}", range.first, range.last)?;
            out.flush()?;
        }
        bar.set_position(appended);
    }
    bar.finish_and_clear();
    store.flush()?;
    let secs = clock.now().nanos_since(start) as f64 / 1e9;
    store.append(&[Event::new(
        run,
        clock.now(),
        RunFinished {
            status: RunStatus::Completed,
            steps_completed: appended,
            message: format!("{appended} synthetic events"),
        },
    )])?;
    crate::finish_snapshots(auto)?;
    println!(
        "{run}: appended {appended} events in batches of {} ({}) in {secs:.2} s: {:.0} events/s, {}/s of turns and pages",
        args.batch,
        if args.relaxed { "relaxed" } else { "durable" },
        appended as f64 / secs,
        crate::bytes((logical as f64 / secs) as u64),
    );
    if !args.no_verify {
        let report = store.verify(&mut |_, _, _| {})?;
        if !report.is_ok() {
            println!(
                "verify FAILED: {} problem(s); run 'fathom verify'",
                report.problems.len()
            );
            return Ok(ExitCode::FAILURE);
        }
        let s = store.stats()?;
        println!(
            "verify ok: {} events, {} blobs; {} of pages stored as {} (dedupe {:.2}x, compression {:.2}x)",
            report.events,
            report.blobs,
            crate::bytes(s.blob_referenced_bytes),
            crate::bytes(s.blob_stored_bytes),
            s.dedupe_ratio(),
            s.compression_ratio()
        );
    }
    println!("next: 'fathom log stats', 'fathom log tail --run {run}', 'fathom verify'");
    Ok(ExitCode::SUCCESS)
}

/// `fathom log load --episodes N`: a synthetic training run, step by step
/// (one relaxed append and one flush per step, as the trainer does).
fn load_training(
    data: &Path,
    args: &LoadArgs,
    episodes: u64,
    snapshots: crate::Snapshotting,
) -> anyhow::Result<ExitCode> {
    if episodes == 0 {
        anyhow::bail!("--episodes must be at least 1");
    }
    let store = Arc::new(crate::open_store(data, Options::default())?);
    let auto = crate::auto_snapshot(&store, snapshots);
    let clock = SystemClock;
    let run = store.new_run_id()?;
    let spec = TrainingSpec::default();
    let per_step = u64::from(spec.questions_per_step) * u64::from(spec.group_size);
    let steps = episodes.div_ceil(per_step);
    let spec = TrainingSpec {
        horizon_steps: steps,
        ..spec
    };
    store.append(&[Event::new(
        run,
        clock.now(),
        load_run(
            "synthetic-training",
            serde_json::json!({"episodes": episodes, "seed": args.seed, "steps": steps,
                "questions_per_step": spec.questions_per_step, "group_size": spec.group_size}),
            args.seed,
        ),
    )])?;
    let pool = synthetic::page_pool(args.seed);
    let refs = store.put_blobs(&pool.iter().map(Vec::as_slice).collect::<Vec<_>>())?;
    // Ids for the whole run, reserved up front (an upper bound on requests:
    // at most 9 calls of 6 requests per episode).
    let total = steps * per_step;
    let last_episode = store.reserve_ids(IdKind::Episode, total)?;
    let last_request = store.reserve_ids(IdKind::Request, total * 54)?;
    let mut load = TrainingLoad::new(
        args.seed,
        run,
        spec,
        refs,
        (last_episode - total, last_request - total * 54),
    );
    let bar = crate::progress_bar(steps, "steps");
    let start = clock.now();
    let mut events = 0u64;
    for step in 1..=steps {
        let batch = load.step();
        events += batch.len() as u64;
        store.append_with(&batch, Durability::Relaxed)?;
        store.flush()?;
        if args.print_acks {
            println!("ack step {step} events {}", store.last_seq());
        }
        bar.set_position(step);
        if args.step_interval_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(args.step_interval_ms));
        }
    }
    bar.finish_and_clear();
    store.append(&[Event::new(
        run,
        clock.now(),
        RunFinished {
            status: RunStatus::Completed,
            steps_completed: steps,
            message: format!("{} synthetic episodes", steps * per_step),
        },
    )])?;
    let secs = clock.now().nanos_since(start) as f64 / 1e9;
    println!(
        "{run}: {} episodes in {steps} steps, {events} events in {secs:.1} s ({:.0} events/s)",
        steps * per_step,
        events as f64 / secs
    );
    crate::finish_snapshots(auto)?;
    println!("next: 'fathom sql \"SELECT * FROM step_metrics ORDER BY step LIMIT 10\"'");
    Ok(ExitCode::SUCCESS)
}

/// The `run_started` of a synthetic load run.
fn load_run(name: &str, config: serde_json::Value, seed: u64) -> RunStarted {
    RunStarted {
        name: name.into(),
        run_kind: RunKind::Load,
        config_json: config.to_string(),
        seed,
        policy: "synthetic".into(),
        model: String::new(),
        code_version: concat!("fathom ", env!("CARGO_PKG_VERSION")).into(),
        attempt: 0,
    }
}
