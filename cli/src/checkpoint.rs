//! `fathom checkpoint`: a training run's weights after any step.
//! `materialize` writes them as a Hugging Face model directory, rebuilt
//! from the newest kept checkpoint at or before the step and the logged
//! updates after it (each checked against the log), so a run can be
//! studied at every step without keeping every checkpoint.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use fathom_core::RunId;
use fathom_trainer::checkpoint::save_model;
use fathom_trainer::train::Rebuilder;

use crate::replay::open_log;

/// `fathom checkpoint …`.
#[derive(Debug, clap::Subcommand)]
pub enum CheckpointCommand {
    /// Write the weights of a training run after step N as a model
    /// directory (usable by `fathom eval --policy candle:DIR`, `fathom
    /// serve-model` and transformers), rebuilt from the log where the run
    /// kept no checkpoint of that step.
    Materialize(MaterializeArgs),
}

/// Arguments of `fathom checkpoint materialize`.
#[derive(Debug, clap::Args)]
pub struct MaterializeArgs {
    /// The training run (`r-3`).
    #[arg(long)]
    pub run: RunId,
    /// The step whose weights to write (0: the starting weights).
    #[arg(long)]
    pub step: u64,
    /// The directory to write (must not exist yet).
    #[arg(long)]
    pub out: PathBuf,
    /// Where the updates are recomputed: `cpu`, or `cuda:N` (bit-identical
    /// only on the device and thread count the run was trained on).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(data: &Path, cmd: CheckpointCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CheckpointCommand::Materialize(args) => materialize(data, args),
    }
}

fn materialize(data: &Path, args: MaterializeArgs) -> anyhow::Result<ExitCode> {
    if args.out.exists() {
        anyhow::bail!(
            "{} already exists; choose a new directory for --out (nothing is overwritten)",
            args.out.display()
        );
    }
    let log = open_log(data, false, "")?;
    let rebuilder = Rebuilder::new(log.read(), &args.device);
    let rebuilt = rebuilder
        .weights(args.run, args.step)
        .with_context(|| format!("rebuilding the weights of {} after step {}", args.run, args.step))?;
    let (digest, bytes) = save_model(&args.out, &rebuilt.model_dir, &rebuilt.model.loaded().vars)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "wrote {} ({:.1} MB, weights {}): run {} after step {}, from {} in {:.2} s",
        args.out.display(),
        bytes as f64 / 1e6,
        digest.short(),
        args.run,
        args.step,
        rebuilt.origin,
        rebuilt.elapsed_ns as f64 / 1e9
    );
    println!(
        "use it with: fathom eval --policy candle:{} (or fathom serve-model --policy candle:{0})",
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
