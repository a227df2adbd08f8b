//! `fathom export`: the log in formats other tools read: the recorded web
//! as WARC 1.1, trajectories as chat-format JSON lines.

use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use fathom_core::{Clock, Payload, RunId, SystemClock};
use fathom_replay::warc::WarcWriter;
use fathom_store::Options;
use fathom_trainer::export::{JsonlFilter, write_jsonl};

/// Arguments of `fathom export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// `warc`: every recorded web exchange (request and response records,
    /// digests, target URIs, dates); `jsonl`: every finished episode as a
    /// chat-format JSON line (messages, reward, metadata) for fine-tuning.
    #[arg(long, value_parser = ["warc", "jsonl"])]
    pub format: String,
    /// The file to write (replaced only once complete).
    #[arg(long)]
    pub out: PathBuf,
    /// Only this run (`r-3`); all runs by default.
    #[arg(long)]
    pub run: Option<RunId>,
    /// JSON lines: only episodes with at least this reward.
    #[arg(long)]
    pub min_reward: Option<f64>,
}

pub fn run(data: &Path, args: ExportArgs) -> anyhow::Result<ExitCode> {
    if !data.join("log").exists() {
        anyhow::bail!(
            "{} holds no fathom log; pass --data (or FATHOM_DATA) with the data directory to export",
            data.display()
        );
    }
    if args.min_reward.is_some() && args.format != "jsonl" {
        anyhow::bail!("--min-reward filters episodes; it applies to --format jsonl");
    }
    let store = crate::open_store(data, Options::default())?;
    let runs = match args.run {
        Some(r) => {
            if !store.runs()?.contains(&r) {
                anyhow::bail!("the log holds no run {r}; list them with: fathom sql \"SELECT * FROM runs\"");
            }
            vec![r]
        }
        None => store.runs()?,
    };
    let name = args
        .out
        .file_name()
        .context("--out must name a file")?
        .to_string_lossy();
    let tmp = args.out.with_file_name(format!(".{name}.partial"));
    let file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut out = BufWriter::new(file);
    let summary = match args.format.as_str() {
        "warc" => {
            let mut w = WarcWriter::new(
                &mut out,
                concat!("fathom ", env!("CARGO_PKG_VERSION")),
                SystemClock.now(),
            )?;
            for &run in &runs {
                for record in store.run_events(run) {
                    let record = record?;
                    if let Payload::WebExchange(x) = &record.event.payload {
                        let body = match &x.body {
                            Some(b) => store.get_blob(&b.digest)?.with_context(|| {
                                format!(
                                    "the body of {} (blob {}) is missing from the log",
                                    x.request_id,
                                    b.digest.short()
                                )
                            })?,
                            None => Vec::new(),
                        };
                        w.exchange(run, record.event.ts, x, &body)?;
                    }
                }
            }
            let c = w.counts();
            w.finish()?;
            format!(
                "{} request, {} response and {} metadata (failed exchange) record(s)",
                c.requests, c.responses, c.failures
            )
        }
        _ => {
            let n = write_jsonl(
                &store,
                &runs,
                JsonlFilter {
                    min_reward: args.min_reward,
                },
                &mut out,
            )?;
            format!("{n} episode(s)")
        }
    };
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all().with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &args.out).with_context(|| format!("moving the export to {}", args.out.display()))?;
    println!("wrote {summary} to {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}
