//! `fathom snapshot`: bring the Parquet snapshots up to date now.

use std::path::Path;
use std::process::ExitCode;

use fathom_core::{Clock, SystemClock};
use fathom_store::Options;
use fathom_store::snapshot::SnapshotOptions;

/// Arguments of `fathom snapshot`.
#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    /// Events per window: each window commits one file per table.
    #[arg(long, default_value_t = SnapshotOptions::default().window_events)]
    pub window: u64,
    /// Compact a table's small files once it has this many.
    #[arg(long, default_value_t = SnapshotOptions::default().compact_min_files)]
    pub compact_min_files: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(
    data: &Path,
    args: SnapshotArgs,
    ship: Option<std::sync::Arc<fathom_store::remote::Location>>,
) -> anyhow::Result<ExitCode> {
    if !data.join("log").exists() {
        anyhow::bail!(
            "{} holds no fathom log; pass --data (or FATHOM_DATA) with the data directory to snapshot",
            data.display()
        );
    }
    if args.window == 0 {
        anyhow::bail!("--window must be at least 1 event");
    }
    let store = crate::open_store(data, Options::default())?;
    let opts = SnapshotOptions {
        window_events: args.window,
        compact_min_files: args.compact_min_files,
        ship,
        ..SnapshotOptions::default()
    };
    let clock = SystemClock;
    let start = clock.now();
    let pending = store
        .last_seq()
        .0
        .saturating_sub(store.snapshots().manifest()?.upto_seq);
    let bar = crate::progress_bar(pending, "events");
    let report = store.snapshot_with(&opts, &mut |done| bar.set_position(done))?;
    bar.finish_and_clear();
    store.flush()?;
    let secs = clock.now().nanos_since(start) as f64 / 1e9;
    if args.json {
        let v = serde_json::json!({
            "from_seq": report.from_seq, "upto_seq": report.upto_seq, "events": report.events,
            "files_written": report.files_written, "bytes_written": report.bytes_written,
            "rows": report.rows, "compactions": report.compactions, "orphans_removed": report.orphans_removed,
            "seconds": secs,
            "shipped": report.shipped.as_ref().map(|r| serde_json::json!({
                "files": r.files, "checkpoint_files": r.checkpoint_files, "bytes": r.bytes,
                "removed": r.removed, "upto_seq": r.upto_seq,
            })),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    if report.orphans_removed > 0 {
        println!(
            "removed {} file(s) left by an interrupted snapshot",
            report.orphans_removed
        );
    }
    if let Some(shipped) = &report.shipped {
        println!("{}", crate::ship_line(shipped));
    }
    if report.events == 0 && report.compactions.is_empty() {
        println!("snapshots are up to date (events up to {})", report.upto_seq);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "snapshot: events {}..={} ({} events) in {secs:.2} s ({:.0} events/s); {} file(s), {} written",
        report.from_seq + 1,
        report.upto_seq,
        report.events,
        report.events as f64 / secs.max(1e-9),
        report.files_written,
        crate::bytes(report.bytes_written)
    );
    for (table, rows) in &report.rows {
        println!("  {table:<14} +{rows} rows");
    }
    for (table, n) in &report.compactions {
        println!("  compacted {n} small {table} files into one");
    }
    println!(
        "files: {}/snapshots/<table>/*.parquet (the manifest lists them); query with 'fathom sql'",
        data.display()
    );
    Ok(ExitCode::SUCCESS)
}
