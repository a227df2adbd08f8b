//! `fathom rebuild`: recompute every Parquet table from the raw log and
//! check it equals the committed snapshots.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use fathom_store::Options;
use fathom_store::snapshot::{SnapshotOptions, SnapshotProblem};

/// Arguments of `fathom rebuild`.
#[derive(Debug, clap::Args)]
pub struct RebuildArgs {
    /// Keep the rebuilt snapshots in this new directory (a snapshot root
    /// with its own manifest.json); by default they are written inside the
    /// data directory and removed after the comparison.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Events per rebuilt window.
    #[arg(long, default_value_t = SnapshotOptions::default().window_events)]
    pub window: u64,
}

pub fn run(data: &Path, args: RebuildArgs) -> anyhow::Result<ExitCode> {
    if !data.join("log").exists() {
        anyhow::bail!(
            "{} holds no fathom log; pass --data (or FATHOM_DATA) with the data directory to rebuild",
            data.display()
        );
    }
    if args.window == 0 {
        anyhow::bail!("--window must be at least 1 event");
    }
    let store = crate::open_store(data, Options::default())?;
    let snaps = store.snapshots();
    let manifest = snaps.manifest()?;
    if let Some(problem) = manifest
        .problems(Some(store.last_seq().0))
        .into_iter()
        .find(|p| matches!(p, SnapshotProblem::AheadOfLog { .. }))
    {
        // The log cannot prove snapshots of events it no longer holds, and
        // they may be the only copy of them.
        anyhow::bail!(
            "{problem}, so the snapshots cannot be rebuilt from it. {}",
            problem.advice(snaps.root())
        );
    }
    let upto = manifest.upto_seq;
    if upto == 0 {
        anyhow::bail!("no snapshot has been committed yet, so there is nothing to check; run 'fathom snapshot' first");
    }
    let (dir, keep) = match &args.out {
        Some(d) => (d.clone(), true),
        None => (data.join(format!("rebuild-{}", std::process::id())), false),
    };
    let opts = SnapshotOptions {
        window_events: args.window,
        ..SnapshotOptions::default()
    };
    let bar = crate::progress_bar(upto, "events");
    let result = store.rebuild(&dir, &opts, &mut |done| bar.set_position(done));
    bar.finish_and_clear();
    if !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let report = result?;
    println!(
        "rebuilt every table from events 1..={} of the log and compared it with the committed snapshots",
        report.upto_seq
    );
    println!("{:<14} {:>12} {:>12}  verdict", "table", "committed", "rebuilt");
    for t in &report.tables {
        let mut verdict = match &t.difference {
            None => "same".to_string(),
            Some(d) => format!(
                "DIFFERS at {}, column {}: committed {} | rebuilt {}",
                d.row, d.column, d.committed, d.rebuilt
            ),
        };
        if !t.altered_files.is_empty() {
            verdict.push_str(&format!(
                "; file(s) altered since commit (digest differs from manifest.json): {}",
                t.altered_files.join(", ")
            ));
        }
        println!(
            "{:<14} {:>12} {:>12}  {verdict}",
            t.table, t.committed_rows, t.rebuilt_rows
        );
    }
    if keep {
        println!("the rebuilt snapshots are in {}", dir.display());
    }
    if report.agrees() {
        println!("the snapshots agree with the log");
        Ok(ExitCode::SUCCESS)
    } else {
        let n = report
            .tables
            .iter()
            .filter(|t| t.difference.is_some() || !t.altered_files.is_empty())
            .count();
        println!(
            "{n} table(s) disagree with the log: the snapshot files were altered or written by another version; move snapshots/ away and run 'fathom snapshot' to write them again from the log"
        );
        Ok(ExitCode::from(1))
    }
}
