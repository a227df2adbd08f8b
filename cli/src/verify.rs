//! `fathom verify`: check the whole data directory.

use std::path::Path;
use std::process::ExitCode;

use fathom_store::snapshot::Digests;
use fathom_store::{Options, VerifyPhase};

/// Arguments of `fathom verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Print at most this many problems (all are counted).
    #[arg(long, default_value_t = 20)]
    pub max_problems: usize,
    /// First rebuild the log's index (sled's files) from the segment files,
    /// for when sled's files are damaged or lost: the old index is kept
    /// beside it as log.damaged-<time>, every intact event and blob is
    /// indexed again, and damaged records are listed. Then verify as usual.
    #[arg(long)]
    pub repair: bool,
}

pub fn run(data: &Path, args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let has_log = data.join("log").exists() || (args.repair && data.join("segments").exists());
    if !has_log {
        anyhow::bail!(
            "{} holds no fathom log; pass --data (or FATHOM_DATA) with the data directory to check",
            data.display()
        );
    }
    let store = if args.repair {
        let (store, aside) = fathom_store::Store::repair(data, Options::default())?;
        crate::report_recovery(&store);
        let rec = store.recovery();
        println!(
            "repaired: rebuilt the index from the segments ({} record(s) indexed); the log ends at event {}; the old index is kept in {}",
            rec.reindexed,
            rec.last_seq,
            aside.display()
        );
        for (at, why) in rec.damaged.iter().take(args.max_problems) {
            println!("  damaged record at {at}: {why}");
        }
        if rec.damaged.len() > args.max_problems {
            println!(
                "  … and {} more damaged record(s)",
                rec.damaged.len() - args.max_problems
            );
        }
        store
    } else {
        crate::open_store(data, Options::default())?
    };
    let events_bar = crate::progress_bar(store.last_seq().0, "events");
    let mut blobs_bar: Option<indicatif::ProgressBar> = None;
    let report = store.verify(&mut |phase, done, total| match phase {
        VerifyPhase::Events => events_bar.set_position(done),
        VerifyPhase::Blobs => {
            let bar = blobs_bar.get_or_insert_with(|| {
                events_bar.finish_and_clear();
                crate::progress_bar(total, "blobs")
            });
            bar.set_position(done);
        }
    })?;
    events_bar.finish_and_clear();
    if let Some(bar) = blobs_bar {
        bar.finish_and_clear();
    }
    // The snapshots: every file against the manifest, the manifest against
    // the log.
    let snaps = store.snapshots();
    let (manifest, checked) = match snaps.manifest() {
        Ok(m) => {
            let problems = snaps.check(&m, Some(store.last_seq().0), Digests::Always)?;
            (Some(m), problems)
        }
        Err(_) => (None, Vec::new()),
    };
    let advice = checked.first().map(|p| p.advice(snaps.root()));
    let mut snapshot_problems: Vec<String> = checked.iter().map(ToString::to_string).collect();
    if let Err(e) = snaps.manifest() {
        snapshot_problems.push(e.to_string());
    }
    let files = manifest.as_ref().map_or(0, |m| m.files.len());
    if report.is_ok() && snapshot_problems.is_empty() {
        println!(
            "ok: {} events and {} blobs verified; {files} snapshot file(s) match their manifest, which covers events up to {}",
            report.events,
            report.blobs,
            manifest.map_or(0, |m| m.upto_seq)
        );
        return Ok(ExitCode::SUCCESS);
    }
    if !report.is_ok() {
        println!(
            "FAILED: {} problem(s) in {} events and {} blobs",
            report.problems.len(),
            report.events,
            report.blobs
        );
        if let Some(seq) = report.first_bad_seq() {
            println!("first bad sequence number: {seq}");
        }
        for p in report.problems.iter().take(args.max_problems) {
            println!("  {p}");
        }
        if report.problems.len() > args.max_problems {
            println!("  … and {} more", report.problems.len() - args.max_problems);
        }
    } else {
        println!("ok: {} events and {} blobs verified", report.events, report.blobs);
    }
    if !snapshot_problems.is_empty() {
        println!(
            "FAILED: {} problem(s) in the snapshots ({files} file(s) in {})",
            snapshot_problems.len(),
            snaps.root().display()
        );
        for p in snapshot_problems.iter().take(args.max_problems) {
            println!("  {p}");
        }
        if snapshot_problems.len() > args.max_problems {
            println!("  … and {} more", snapshot_problems.len() - args.max_problems);
        }
        if let Some(advice) = advice {
            println!("{advice}");
        }
    }
    Ok(ExitCode::FAILURE)
}
