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
use fathom_core::protocol::Protocol;
use fathom_trainer::candle_policy::CandleModel;
use fathom_trainer::config::TrainConfig;
use fathom_trainer::harness::EvalSummary;
use fathom_trainer::report::{Interval, Report};
use fathom_trainer::train::{Evaluation, ModelEval, Trainer, evaluate_model, rollout_config};

use crate::train::{TODAY, model_dir, setup, starting_weights, timings_text};
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
    /// Write the results table as one JSON object to standard output
    /// (progress still goes to standard error); keys in the README.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub web_args: WebArgs,
}

pub fn run(data: &Path, mut args: DemoArgs, snapshots: crate::Snapshotting) -> anyhow::Result<ExitCode> {
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
    if args.web_args.sandbox_entities.is_none() {
        args.web_args.sandbox_entities = config.data.sandbox_entities;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(demo(data, args, config, snapshots))
}

/// One phase's evaluation as the demo reports it.
#[derive(Debug, serde::Serialize)]
struct Phase {
    /// `initial`, `warm_start` or `grpo`.
    phase: &'static str,
    /// Its evaluation run (sampled).
    run: String,
    /// `eval.samples` episodes per question at `eval.temperature`.
    sampled: Report,
    /// One greedy episode per question.
    greedy: Option<Report>,
}

impl Phase {
    fn of(phase: &'static str, e: &Evaluation) -> Phase {
        Phase {
            phase,
            run: e.main.run.to_string(),
            sampled: e.main.report(),
            greedy: e.greedy.as_ref().map(EvalSummary::report),
        }
    }
}

/// Whether GRPO taught research, by the demo's bar: on the shortcut-free
/// questions, sampled F1 after GRPO at least the warm start's + 0.10 with
/// disjoint 95% intervals, and at least one tool call per episode.
#[derive(Debug, serde::Serialize)]
struct Bar {
    f1_warm_start: f64,
    f1_grpo: f64,
    f1_gain: f64,
    intervals_disjoint: bool,
    tool_calls_grpo: f64,
    met: bool,
}

impl Bar {
    fn of(warm: &Report, grpo: &Report) -> Bar {
        let (w, g) = (&warm.shortcut_free, &grpo.shortcut_free);
        let gain = g.f1.mean - w.f1.mean;
        let disjoint = g.f1.lo > w.f1.hi;
        Bar {
            f1_warm_start: w.f1.mean,
            f1_grpo: g.f1.mean,
            f1_gain: gain,
            intervals_disjoint: disjoint,
            tool_calls_grpo: g.tool_calls.mean,
            met: gain >= 0.10 && disjoint && g.tool_calls.mean >= 1.0,
        }
    }
}

/// `fathom demo --json`.
#[derive(Debug, serde::Serialize)]
struct DemoJson<'a> {
    questions: usize,
    shortcut_free_questions: usize,
    samples: u32,
    temperature: f64,
    phases: &'a [Phase],
    train_reward: Vec<(u64, f64)>,
    bar: Option<Bar>,
    training_run: String,
    events: u64,
    log_bytes: u64,
    snapshot_bytes: u64,
    seconds: f64,
}

fn cell(i: &Interval) -> String {
    format!("{:.3} [{:.2},{:.2}]", i.mean, i.lo, i.hi)
}

/// The results table, one line per phase and way of sampling, for all
/// questions and then the shortcut-free ones.
fn table(phases: &[Phase], steps: u64) -> String {
    let mut out = format!(
        "{:<30} {:>20} {:>20} {:>20} {:>20} {:>20}\n",
        "held-out questions", "reward", "F1", "EM", "well-formed", "tool calls"
    );
    for subset in ["all", "shortcut-free"] {
        if subset != "all" {
            let free = phases.first().map_or(0, |p| p.sampled.shortcut_free.questions);
            out.push_str(&format!(
                "shortcut-free questions only ({free}: no answer word appears in the question):\n"
            ));
        }
        for p in phases {
            let name = match p.phase {
                "initial" => "initial model".to_string(),
                "warm_start" => "after warm start".to_string(),
                _ => format!("after {steps} GRPO steps"),
            };
            for (how, r) in [("sampled", Some(&p.sampled)), ("greedy", p.greedy.as_ref())] {
                let Some(r) = r else { continue };
                let f = if subset == "all" { &r.all } else { &r.shortcut_free };
                out.push_str(&format!(
                    "{:<30} {:>20} {:>20} {:>20} {:>20} {:>20}\n",
                    format!("{name}, {how}"),
                    cell(&f.reward),
                    cell(&f.f1),
                    cell(&f.em),
                    cell(&f.well_formed),
                    cell(&f.tool_calls)
                ));
            }
        }
    }
    out
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
        "fathom demo: a tiny Qwen2 learns to research the sandbox web (warm start, then {} GRPO steps of {} questions x {} rollouts); everything is recorded in {}",
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
        let limit = if config.eval.limit == 0 {
            setup.data.eval.len()
        } else {
            config.eval.limit.min(setup.data.eval.len())
        };
        let initial = {
            let loaded = Arc::new(CandleModel::load(&model, &config.model.device, &config.model.dtype)?);
            evaluate_model(
                &setup.env,
                &ModelEval {
                    model: loaded,
                    version: 0,
                    section: &config.eval,
                    questions: &setup.data.eval[..limit],
                    rollout: rollout_config(&config, TODAY, Protocol::CURRENT),
                    seed: fathom_core::derive_seed(config.seed, "eval", 0),
                    concurrency: config.rollout.concurrency,
                    name: "demo eval of the initial model".into(),
                    policy: format!("candle:{}", model.display()),
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
    let seconds = fathom_core::Clock::now(&clock).nanos_since(started) as f64 / 1e9;
    let mut phases = vec![Phase::of("initial", &initial)];
    if let Some(e) = &summary.eval_before {
        phases.push(Phase::of("warm_start", e));
    }
    if let Some(e) = &summary.eval_after {
        phases.push(Phase::of("grpo", e));
    }
    let bar = match (&summary.eval_before, &summary.eval_after) {
        (Some(w), Some(g)) => Some(Bar::of(&w.main.report(), &g.main.report())),
        _ => None,
    };
    let mut text = String::new();
    let greedy = if phases.iter().any(|p| p.greedy.is_some()) {
        "; greedy: one episode per question"
    } else {
        ""
    };
    text.push_str(&format!(
        "\n{} held-out questions; sampled: {} episode(s) per question at temperature {}{greedy}. Means with 95% bootstrap intervals over questions.\n",
        limit_of(&phases),
        config.eval.samples,
        config.eval.temperature
    ));
    text.push_str(&table(&phases, summary.steps));
    if let Some(b) = &bar {
        text.push_str(&format!(
            "\nshortcut-free sampled F1: warm start {:.3} -> after GRPO {:.3} ({:+.3}, intervals {}); tool calls per episode after GRPO {:.2}: the demo's bar (+0.10, disjoint, >= 1 tool call) is {}\n",
            b.f1_warm_start,
            b.f1_grpo,
            b.f1_gain,
            if b.intervals_disjoint { "disjoint" } else { "overlap" },
            b.tool_calls_grpo,
            if b.met { "met" } else { "missed" }
        ));
    }
    if let (Some(first), Some(last)) = (summary.step_rewards.first(), summary.step_rewards.last()) {
        let k = summary.step_rewards.len().min(3);
        let mean = |xs: &[(u64, f64)]| xs.iter().map(|x| x.1).sum::<f64>() / xs.len() as f64;
        text.push_str(&format!(
            "GRPO training reward: step {} {:.3}, step {} {:.3} (mean of first {k} steps {:.3}, of last {k} {:.3})\n",
            first.0,
            first.1,
            last.0,
            last.1,
            mean(&summary.step_rewards[..k]),
            mean(&summary.step_rewards[summary.step_rewards.len() - k..])
        ));
    }
    text.push_str(&format!(
        "recorded {events} events: log {}, Parquet snapshots {}; {seconds:.0} s in all\n",
        crate::bytes(log_bytes),
        crate::bytes(snap_bytes),
    ));
    if args.timings {
        text.push_str(&timings_text(&summary.timings));
    }
    let d = data.display();
    let run = summary.run;
    text.push_str("\nLook at what was recorded:\n");
    text.push_str(&format!(
        "  fathom --data {d} sql \"SELECT step, episodes, reward_mean, f1, format_failure_rate FROM step_metrics WHERE run_id = '{run}' ORDER BY step\"\n"
    ));
    text.push_str(&format!(
        "  fathom --data {d} sql \"SELECT step, loss, kl, entropy, grad_norm FROM updates WHERE run_id = '{run}' ORDER BY step\"\n"
    ));
    text.push_str(&format!(
        "  fathom --data {d} sql \"SELECT turn, role, text FROM turns WHERE episode_id = (SELECT episode_id FROM episodes WHERE run_id = '{run}' ORDER BY reward DESC, seq DESC LIMIT 1) ORDER BY turn, seq\"\n"
    ));
    text.push_str(&format!(
        "  fathom --data {d} sql        (an interactive prompt: .tables, .schema episodes)\n"
    ));
    text.push_str(&format!("  fathom --data {d} log tail --run {run} -n 20\n"));
    text.push_str(&format!(
        "  fathom --data {d} eval --policy candle:{} --prompt {} --max-turns {} --max-turn-tokens {} --max-tool-chars {} --sandbox-entities {} --limit 20\n",
        summary
            .last_checkpoint
            .as_ref()
            .map_or_else(|| "DIR".into(), |p| p.display().to_string()),
        config.rollout.prompt.name(),
        config.rollout.max_turns,
        config.rollout.max_turn_tokens,
        config.rollout.max_tool_chars,
        args.web_args.entities()
    ));
    if args.json {
        // The table as JSON on standard output; the same words for people
        // on standard error.
        eprint!("{text}");
        let out = DemoJson {
            questions: limit_of(&phases),
            shortcut_free_questions: phases.first().map_or(0, |p| p.sampled.shortcut_free.questions),
            samples: config.eval.samples,
            temperature: config.eval.temperature,
            phases: &phases,
            train_reward: summary.step_rewards.clone(),
            bar,
            training_run: summary.run.to_string(),
            events,
            log_bytes,
            snapshot_bytes: snap_bytes,
            seconds,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

fn limit_of(phases: &[Phase]) -> usize {
    phases.first().map_or(0, |p| p.sampled.all.questions)
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
