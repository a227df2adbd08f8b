//! `fathom demo`: the whole loop on one machine, with no network and no
//! arguments. It starts the sandbox web in-process, makes a tiny Qwen2,
//! evaluates it, records the scripted researcher's trajectories and
//! warm-starts on them, runs GRPO steps, evaluates after each phase on
//! held-out questions, snapshots the log, and prints what changed and how
//! to look at it.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use fathom_model::sample::Sampling;
use fathom_trainer::candle_policy::{CandleModel, CandlePolicy};
use fathom_trainer::config::TrainConfig;
use fathom_trainer::harness::{EvalJob, EvalSummary, PolicyFactory, evaluate};
use fathom_trainer::train::{Trainer, rollout_config};

use crate::train::{TODAY, model_dir, print_timings, setup, starting_weights};
use crate::web::WebArgs;

/// The demo's configuration: `examples/tiny-cpu.toml`, compiled in.
pub(crate) const DEMO_CONFIG: &str = include_str!("../../examples/tiny-cpu.toml");

/// Arguments of `fathom demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Run the demo with this configuration instead of the built-in one
    /// (`examples/tiny-cpu.toml`); its model must be `init-tiny` or a model directory.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// GRPO steps (default: the demo configuration's).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Print where each GRPO step's time went.
    #[arg(long)]
    pub timings: bool,
    #[command(flatten)]
    pub web_args: WebArgs,
}

pub fn run(data: &Path, args: DemoArgs, snapshots: crate::Snapshotting) -> anyhow::Result<ExitCode> {
    let mut config: TrainConfig = match &args.config {
        Some(path) => TrainConfig::load(path)?,
        None => {
            let mut c: TrainConfig = toml::from_str(DEMO_CONFIG).context("the built-in demo configuration")?;
            c.name = "demo".into();
            c
        }
    };
    if let Some(n) = args.steps {
        if n == 0 {
            anyhow::bail!("--steps must be at least 1");
        }
        config.steps = n;
    }
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("demo configuration: {e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(demo(data, args, config, snapshots))
}

fn row(name: &str, e: &EvalSummary) {
    println!(
        "{name:<26} {:>8.3} {:>7.3} {:>7.3} {:>11.1}% {:>11.2}",
        e.overall.mean_reward(),
        e.overall.mean_f1(),
        e.overall.mean_em(),
        100.0 * e.overall.format_ok(),
        e.overall.mean_tool_calls()
    );
}

async fn demo(
    data: &Path,
    args: DemoArgs,
    config: TrainConfig,
    snapshots: crate::Snapshotting,
) -> anyhow::Result<ExitCode> {
    let clock = fathom_core::SystemClock;
    let started = fathom_core::Clock::now(&clock);
    eprintln!(
        "fathom demo: a tiny Qwen2 learns to research the sandbox web ({} GRPO steps of {} questions x {} rollouts); everything is recorded in {}",
        config.steps,
        config.data.questions_per_step,
        config.data.group_size,
        data.display()
    );
    let setup = setup(data, &config, &args.web_args).await?;
    let auto = crate::auto_snapshot(&setup.store, snapshots);
    let outcome = async {
        // 1. A tiny random model, evaluated as it is.
        let model = model_dir(data, &config, &args.web_args)?;
        let initial = {
            let loaded = CandleModel::load(&model, &config.model.device, &config.model.dtype)?;
            let loaded = Arc::new(loaded);
            let sampling = Sampling {
                temperature: config.eval.temperature,
                top_p: 1.0,
            };
            let policies: PolicyFactory = Arc::new(move || Box::new(CandlePolicy::new(loaded.clone(), sampling, 0)));
            let limit = setup.data.eval.len().min(config.eval.limit.max(1));
            evaluate(
                &setup.env,
                EvalJob {
                    name: "demo eval of the initial model".into(),
                    policy: format!("candle:{}", model.display()),
                    model: String::new(),
                    policies,
                    questions: &setup.data.eval[..limit],
                    rollout: rollout_config(&config, TODAY),
                    seed: fathom_core::derive_seed(config.seed, "eval", 0),
                    concurrency: config.rollout.concurrency,
                    benchmark: "held-out".into(),
                    config: serde_json::json!({"model": model.display().to_string()}),
                },
            )
            .await?
        };
        // 2. The warm start on scripted trajectories, then GRPO.
        let start = starting_weights(data, &config, &setup, &args.web_args).await?;
        let trainer = Trainer::start(setup.env.clone(), config.clone(), &start, setup.data.clone(), TODAY)?;
        let summary = trainer.run().await?;
        setup.bars.clear();
        anyhow::Ok((initial, summary))
    }
    .await;
    setup.bars.clear();
    crate::finish_snapshots(auto)?;
    let (initial, summary) = outcome?;
    let events = setup.store.last_seq().0;
    let log_bytes = setup.store.size_on_disk()?;
    let snap_bytes = dir_bytes(&setup.store.dir().snapshots_dir());
    println!();
    println!(
        "{:<26} {:>8} {:>7} {:>7} {:>12} {:>11}",
        "held-out questions", "reward", "F1", "EM", "well-formed", "tool calls"
    );
    row("initial model", &initial);
    if let Some(e) = &summary.eval_before {
        row("after warm start", e);
    }
    if let Some(e) = &summary.eval_after {
        row(&format!("after {} GRPO steps", summary.steps), e);
    }
    if let (Some(first), Some(last)) = (summary.step_rewards.first(), summary.step_rewards.last()) {
        let k = summary.step_rewards.len().min(3);
        let mean = |xs: &[(u64, f64)]| xs.iter().map(|x| x.1).sum::<f64>() / xs.len() as f64;
        println!(
            "\nGRPO training reward: step {} {:.3}, step {} {:.3} (mean of first {k} steps {:.3}, of last {k} {:.3})",
            first.0,
            first.1,
            last.0,
            last.1,
            mean(&summary.step_rewards[..k]),
            mean(&summary.step_rewards[summary.step_rewards.len() - k..])
        );
    }
    println!(
        "recorded {events} events: log {}, Parquet snapshots {}; {:.0} s in all",
        crate::bytes(log_bytes),
        crate::bytes(snap_bytes),
        fathom_core::Clock::now(&clock).nanos_since(started) as f64 / 1e9
    );
    if args.timings {
        print_timings(&summary.timings);
    }
    let d = data.display();
    let run = summary.run;
    println!("\nLook at what was recorded:");
    println!(
        "  fathom --data {d} sql \"SELECT step, episodes, reward_mean, f1, format_failure_rate FROM step_metrics WHERE run_id = '{run}' ORDER BY step\""
    );
    println!(
        "  fathom --data {d} sql \"SELECT step, loss, kl, entropy, grad_norm FROM updates WHERE run_id = '{run}' ORDER BY step\""
    );
    println!(
        "  fathom --data {d} sql \"SELECT turn, role, text FROM turns WHERE episode_id = (SELECT episode_id FROM episodes WHERE run_id = '{run}' ORDER BY reward DESC, seq DESC LIMIT 1) ORDER BY turn, seq\""
    );
    println!("  fathom --data {d} sql        (an interactive prompt: .tables, .schema episodes)");
    println!("  fathom --data {d} log tail --run {run} -n 20");
    println!(
        "  fathom --data {d} eval --policy candle:{} --limit 20",
        summary
            .last_checkpoint
            .as_ref()
            .map_or_else(|| "DIR".into(), |p| p.display().to_string())
    );
    Ok(ExitCode::SUCCESS)
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                total += dir_bytes(&p);
            } else if let Ok(m) = e.metadata() {
                total += m.len();
            }
        }
    }
    total
}
