//! `fathom train`: GRPO training from a TOML configuration (with the
//! supervised warm start first when the configuration has `[sft]`), and
//! `--resume` after an interruption. The loop itself lives in
//! `fathom_trainer::train`; this file resolves the configuration into
//! questions, a web and starting weights, and draws the progress.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use fathom_core::{Clock, QuestionId, SystemClock};
use fathom_replay::Gateway;
use fathom_store::Options;
use fathom_trainer::config::TrainConfig;
use fathom_trainer::harness::{Env, Observer, Question};
use fathom_trainer::train::{Data, StepTimings, TrainSummary, Trainer};

use crate::web::{Web, WebArgs, connect};

/// Arguments of `fathom train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// The run's configuration (see examples/tiny-cpu.toml; every field is documented there and in docs/TRAINING.md).
    #[arg(long)]
    pub config: PathBuf,
    /// Train this many steps in all, instead of the configuration's `steps`.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Continue the newest run of this configuration's name where it stopped.
    #[arg(long, conflicts_with = "sft")]
    pub resume: bool,
    /// Only run the supervised warm start (behaviour cloning of the scripted researcher), then stop.
    #[arg(long)]
    pub sft: bool,
    /// Where the model runs: `cpu` or `cuda:N`, instead of the configuration's `model.device`.
    #[arg(long)]
    pub device: Option<String>,
    /// Print where each step's time went.
    #[arg(long)]
    pub timings: bool,
    /// Print the run's memory plan (weights, master weights, reference model, gradients, optimizer
    /// state, activations, rollout caches) and whether it fits, then stop.
    #[arg(long, conflicts_with_all = ["resume", "sft"])]
    pub plan: bool,
    /// The memory the run may use on its device (`141GB`, `80GiB`); by default the machine's memory
    /// for `cpu` and what nvidia-smi reports for `cuda:N`. A run whose plan exceeds it is refused.
    #[arg(long, env = "FATHOM_GPU_MEMORY", value_parser = fathom_trainer::plan::parse_size)]
    pub gpu_memory: Option<u64>,
    #[command(flatten)]
    pub web_args: WebArgs,
}

/// The memory `device` offers: `--gpu-memory`, else the machine's for
/// `cpu`, else what nvidia-smi reports for `cuda:N`.
fn memory_budget(device: &str, given: Option<u64>) -> Option<u64> {
    if given.is_some() {
        return given;
    }
    if device == "cpu" {
        return fathom_trainer::plan::host_memory();
    }
    let index = device.strip_prefix("cuda:").unwrap_or("0");
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", index])
        .output()
        .ok()?;
    let mib: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some(mib * 1024 * 1024)
}

/// `--plan`, and the check every run passes before it loads a weight.
fn plan(config: &TrainConfig, args: &TrainArgs) -> anyhow::Result<Option<ExitCode>> {
    use fathom_trainer::plan::{MemoryPlan, human, kernels_of, shape_of};
    let shape = match shape_of(config) {
        Ok(s) => s,
        // Without a shape the run fails on its model directory, with its
        // own message.
        Err(_) if !args.plan => return Ok(None),
        Err(e) => anyhow::bail!("--plan: {e}"),
    };
    let memory = MemoryPlan::new(config, &shape, kernels_of(config));
    let device = &config.model.device;
    let budget = memory_budget(device, args.gpu_memory);
    let verdict = budget.map(|b| memory.check(b, device));
    if !args.plan {
        return match verdict {
            Some(Err(e)) => anyhow::bail!("{e}"),
            _ => Ok(None),
        };
    }
    println!("{}: {memory}", config.name);
    match (budget, verdict) {
        (Some(b), Some(Ok(()))) => {
            println!("fits {device} ({}): {} to spare", human(b), human(b - memory.peak()));
            Ok(Some(ExitCode::SUCCESS))
        }
        (_, Some(Err(e))) => {
            println!("does not fit: {e}");
            Ok(Some(ExitCode::FAILURE))
        }
        _ => {
            println!("{device}'s memory is unknown: give --gpu-memory (say 141GB) to check the plan against it");
            Ok(Some(ExitCode::SUCCESS))
        }
    }
}

/// A progress bar per phase, on stderr.
pub(crate) struct Bars {
    bar: Mutex<Option<indicatif::ProgressBar>>,
}

impl Bars {
    pub(crate) fn new() -> Bars {
        Bars { bar: Mutex::new(None) }
    }

    pub(crate) fn clear(&self) {
        if let Some(b) = self.bar.lock().expect("bar lock").take() {
            b.finish_and_clear();
        }
    }
}

impl Observer for Bars {
    fn phase(&self, what: &str, total: u64) {
        let mut bar = self.bar.lock().expect("bar lock");
        if let Some(b) = bar.take() {
            b.finish_and_clear();
        }
        *bar = Some(crate::progress_bar(total, what));
    }

    fn progress(&self, done: u64, message: &str) {
        if let Some(b) = self.bar.lock().expect("bar lock").as_ref() {
            b.set_position(done);
            let prefix = b.message();
            let what = prefix.split(" · ").next().unwrap_or("").to_string();
            b.set_message(format!("{what} · {message}"));
        }
    }

    fn note(&self, line: &str) {
        match self.bar.lock().expect("bar lock").as_ref() {
            Some(b) if !b.is_hidden() => b.println(line),
            _ => eprintln!("{line}"),
        }
    }
}

/// What a training command runs with.
pub(crate) struct Setup {
    pub(crate) env: Env,
    pub(crate) data: Data,
    pub(crate) bars: Arc<Bars>,
    pub(crate) store: Arc<fathom_store::Store>,
    _web: Web,
}

fn rows_to_questions(rows: &[fathom_store::verl::VerlRow]) -> Vec<Question> {
    rows.iter()
        .enumerate()
        .map(|(i, r)| Question {
            id: QuestionId(if r.index.is_empty() {
                format!("q{i}")
            } else {
                r.index.clone()
            }),
            data_source: r.data_source.clone(),
            text: r.question().to_string(),
            ground_truths: r.ground_truths(),
            hops: r.hops(),
        })
        .collect()
}

/// The questions a configuration names: a verl Parquet file, or `sandbox`
/// (generated over the in-process sandbox; the held-out ones with another
/// seed, and none that is also a training question).
fn questions(config: &TrainConfig, web: &WebArgs) -> anyhow::Result<Data> {
    let load = |spec: &str, seed: u64, count: usize| -> anyhow::Result<Vec<Question>> {
        if spec == "sandbox" {
            let [lo, hi] = config.data.hops;
            Ok(rows_to_questions(&crate::sandbox::question_rows_seeded(
                web.seed(),
                web.entities(),
                seed,
                count,
                lo..=hi,
            )))
        } else {
            let rows = fathom_store::verl::read(Path::new(spec))
                .with_context(|| format!("reading the questions in {spec}"))?;
            if rows.is_empty() {
                anyhow::bail!("{spec} holds no questions");
            }
            Ok(rows_to_questions(&rows))
        }
    };
    let train = load(&config.data.train, web.seed(), config.data.sandbox_questions)?;
    let seen: std::collections::HashSet<&str> = train.iter().map(|q| q.text.as_str()).collect();
    let want = if config.eval.limit == 0 { 200 } else { config.eval.limit };
    // Generated candidates repeat training questions when the sandbox has
    // few of a kind (one-hop questions), so draw plenty and keep the new.
    let eval: Vec<Question> = load(
        &config.eval.questions,
        web.seed().wrapping_add(1_000_003),
        if config.eval.questions == "sandbox" {
            want * 20
        } else {
            0
        },
    )?
    .into_iter()
    .filter(|q| !seen.contains(q.text.as_str()))
    .take(if config.eval.limit == 0 {
        usize::MAX
    } else {
        config.eval.limit
    })
    .collect();
    if config.eval.questions == "sandbox" {
        // A world holds few questions of some hop counts (6,000 entities:
        // 2,100 two-hop ones); a training set that takes them all leaves
        // none to hold out, and the evaluation would silently skip them.
        let [lo, hi] = config.data.hops;
        for h in lo.max(1)..=hi.min(4) {
            if !eval.iter().any(|q| q.hops == Some(h)) {
                eprintln!(
                    "note: the held-out questions include no {h}-hop question: the training set holds every {h}-hop question of the {}-entity world; lower data.sandbox_questions or raise data.sandbox_entities to hold some out",
                    web.entities()
                );
            }
        }
    }
    Ok(Data { train, eval })
}

/// Opens the log, starts the web, and generates or reads the questions.
pub(crate) async fn setup(data_dir: &Path, config: &TrainConfig, web_args: &WebArgs) -> anyhow::Result<Setup> {
    let uses_sandbox = config.data.train == "sandbox" || config.eval.questions == "sandbox";
    if uses_sandbox && (web_args.search_url.is_some() || web_args.searxng_url.is_some()) {
        anyhow::bail!(
            "data.train or eval.questions is \"sandbox\", whose answers exist only in the sandbox web; drop --search-url/--searxng-url or name verl Parquet files"
        );
    }
    // Question files generated from a sandbox name its world: the run uses
    // it (both files must agree), and refuses settings that ask otherwise.
    let mut web_args = web_args.clone();
    if web_args.search_url.is_none() && web_args.searxng_url.is_none() {
        let mut found: Option<((u64, u64), &str)> = None;
        for spec in [config.data.train.as_str(), config.eval.questions.as_str()] {
            if spec == "sandbox" {
                continue;
            }
            let rows = fathom_store::verl::read(Path::new(spec))
                .with_context(|| format!("reading the questions in {spec}"))?;
            let Some(world) = crate::sandbox::world_of(&rows, Path::new(spec))? else {
                continue;
            };
            match found {
                Some((w, other)) if w != world => anyhow::bail!(
                    "{other} and {spec} hold questions of different sandbox worlds (seed {} with {} entities, and seed {} with {} entities); a run sees one world",
                    w.0,
                    w.1,
                    world.0,
                    world.1
                ),
                Some(_) => {}
                None => {
                    crate::sandbox::adopt_world(&mut web_args, world, Path::new(spec))?;
                    found = Some((world, spec));
                }
            }
        }
    }
    let web_args = &web_args;
    // The sandbox keeps its fixed address (127.0.0.1:8930 unless told),
    // so that a resumed run, a replay and a second run see the same URLs.
    let data = questions(config, web_args)?;
    // Sandbox questions are generated from the seed and size: a sandbox
    // already running at the address must serve that world.
    let web_args = &WebArgs {
        questions_from_world: uses_sandbox,
        ..web_args.clone()
    };
    let web = connect(web_args).await?;
    let store = Arc::new(crate::open_store(data_dir, Options::default())?);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let gateway = Arc::new(Gateway::record(web.config.clone(), store.clone(), clock.clone())?);
    let bars = Arc::new(Bars::new());
    Ok(Setup {
        env: Env {
            store: store.clone(),
            gateway,
            clock,
            observer: bars.clone(),
        },
        data,
        bars,
        store,
        _web: web,
    })
}

/// `model.path`, with `init-tiny` made (once) under the data directory.
pub(crate) fn model_dir(data_dir: &Path, config: &TrainConfig, web: &WebArgs) -> anyhow::Result<PathBuf> {
    if config.model.path != "init-tiny" {
        let dir = PathBuf::from(&config.model.path);
        if !dir.join("config.json").exists() {
            anyhow::bail!(
                "model.path {} is not a model directory (no config.json); give a Hugging Face Qwen2 directory or \"init-tiny\"",
                dir.display()
            );
        }
        return Ok(dir);
    }
    let dir = data_dir.join("models").join(format!("{}-tiny", config.name));
    if !dir.join("config.json").exists() {
        let spec = config.model.tiny.spec(config.seed);
        let texts = crate::model::tokenizer_corpus(web.seed(), web.entities());
        fathom_model::init::write_tiny(&dir, &spec, texts.iter())
            .with_context(|| format!("making the tiny model in {}", dir.display()))?;
    }
    Ok(dir)
}

pub(crate) const TODAY: &str = "2026-01-01";

pub fn run(data: &Path, mut args: TrainArgs, snapshots: crate::Snapshotting) -> anyhow::Result<ExitCode> {
    let mut config = TrainConfig::load(&args.config)?;
    if args.web_args.sandbox_entities.is_none() {
        args.web_args.sandbox_entities = config.data.sandbox_entities;
    }
    if let Some(d) = &args.device {
        config.model.device = d.clone();
        config.validate().map_err(|e| anyhow::anyhow!("--device: {e}"))?;
    }
    if args.steps == Some(0) {
        anyhow::bail!("--steps must be at least 1");
    }
    if let Some(code) = plan(&config, &args)? {
        return Ok(code);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(train(data, args, config, snapshots))
}

async fn train(
    data: &Path,
    args: TrainArgs,
    config: TrainConfig,
    mut snapshots: crate::Snapshotting,
) -> anyhow::Result<ExitCode> {
    if snapshots.ship.is_none()
        && let Some(url) = &config.snapshots
    {
        snapshots.ship = Some(crate::location(url).context("the config's `snapshots`")?);
    }
    let setup = setup(data, &config, &args.web_args).await?;
    let auto = crate::auto_snapshot(&setup.store, snapshots);
    let result = async {
        if args.sft {
            let model = model_dir(data, &config, &args.web_args)?;
            let w = fathom_trainer::sft::warm_start(&setup.env, &config, &model, &setup.data.train, TODAY).await?;
            setup.bars.clear();
            println!(
                "warm start {}: {} trajectories, {} updates, loss {:.3} -> {:.3}; model in {}",
                w.run,
                w.trajectories,
                w.updates,
                w.loss.0,
                w.loss.1,
                w.dir.display()
            );
            return anyhow::Ok(None);
        }
        // A run killed during its automatic warm start has no training run
        // to resume: the warm start is redone (it is deterministic) and
        // training starts, as a fresh start would.
        let warm_start_killed = args.resume
            && config.sft.is_some()
            && fathom_trainer::train::find_run(&setup.store, &config.name, fathom_core::event::RunKind::Train)?
                .is_none();
        if warm_start_killed {
            close_unfinished_warm_start(&setup, &config.name)?;
        }
        let trainer = if args.resume && !warm_start_killed {
            Trainer::resume(setup.env.clone(), config.clone(), args.steps, setup.data.clone())?
        } else {
            let start = starting_weights(data, &config, &setup, &args.web_args).await?;
            let mut c = config.clone();
            if let Some(n) = args.steps {
                c.steps = n;
            }
            Trainer::start(setup.env.clone(), c, &start, setup.data.clone(), TODAY)?
        };
        let run = trainer.run_id();
        eprintln!("training run {run}");
        tokio::select! {
            summary = trainer.run() => {
                setup.bars.clear();
                anyhow::Ok(Some(summary?))
            }
            _ = tokio::signal::ctrl_c() => {
                setup.bars.clear();
                let mut steps_completed = 0;
                for record in setup.store.run_events(run) {
                    if let fathom_core::Payload::GradientUpdate(u) = record?.event.payload {
                        steps_completed = steps_completed.max(u.step);
                    }
                }
                setup.store.append(&[fathom_core::Event::new(
                    run,
                    setup.env.clock.now(),
                    fathom_core::event::RunFinished {
                        status: fathom_core::event::RunStatus::Interrupted,
                        steps_completed,
                        message: "interrupted (Ctrl-C); continue with --resume".into(),
                    },
                )])?;
                eprintln!("interrupted; 'fathom train --config {} --resume' continues run {run}", args.config.display());
                anyhow::Ok(None)
            }
        }
    }
    .await;
    setup.bars.clear();
    crate::finish_snapshots(auto)?;
    if let Some(summary) = result? {
        print_summary(&summary);
        if args.timings {
            print_timings(&summary.timings);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Marks the newest warm-start run named `name` as interrupted when it
/// never finished (killed), so that the runs table says so; `--resume` then
/// redoes the warm start.
fn close_unfinished_warm_start(setup: &Setup, name: &str) -> anyhow::Result<()> {
    let Some((run, _)) = fathom_trainer::train::find_run(&setup.store, name, fathom_core::event::RunKind::Sft)? else {
        return Ok(());
    };
    let mut finished = false;
    for record in setup.store.run_events(run) {
        if let fathom_core::Payload::RunFinished(_) = record?.event.payload {
            finished = true;
        }
    }
    if !finished {
        setup.store.append(&[fathom_core::Event::new(
            run,
            setup.env.clock.now(),
            fathom_core::event::RunFinished {
                status: fathom_core::event::RunStatus::Interrupted,
                steps_completed: 0,
                message: "stopped during the warm start; --resume redid it".into(),
            },
        )])?;
        setup.env.observer.note(&format!(
            "warm start {run} was stopped before it finished; --resume does it again, then trains"
        ));
    }
    Ok(())
}

/// The weights GRPO starts from: the warm start's (run first when the
/// configuration has `[sft]` and the log holds none), else `model.path`.
pub(crate) async fn starting_weights(
    data: &Path,
    config: &TrainConfig,
    setup: &Setup,
    web: &WebArgs,
) -> anyhow::Result<PathBuf> {
    let model = model_dir(data, config, web)?;
    if config.sft.is_none() {
        return Ok(model);
    }
    if let Some(dir) = fathom_trainer::sft::find_warm_start(&setup.store, &config.name)? {
        setup
            .env
            .observer
            .note(&format!("starting from the warm start in {}", dir.display()));
        return Ok(dir);
    }
    let w = fathom_trainer::sft::warm_start(&setup.env, config, &model, &setup.data.train, TODAY).await?;
    setup.env.observer.note(&format!(
        "warm start {}: {} trajectories, {} updates, loss {:.3} -> {:.3}",
        w.run, w.trajectories, w.updates, w.loss.0, w.loss.1
    ));
    Ok(w.dir)
}

/// This process's peak resident memory (`VmHWM`, Linux), when readable.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

fn print_summary(s: &TrainSummary) {
    println!("run {}: {} steps", s.run, s.steps);
    if let Some(bytes) = peak_rss() {
        eprintln!("peak resident memory: {}", fathom_trainer::plan::human(bytes));
    }
    if let (Some(first), Some(last)) = (s.step_rewards.first(), s.step_rewards.last()) {
        println!(
            "training reward: step {} {:.3} -> step {} {:.3}",
            first.0, first.1, last.0, last.1
        );
    }
    for (name, e) in [("before", &s.eval_before), ("after", &s.eval_after)] {
        if let Some(e) = e.as_ref().map(|e| &e.main) {
            println!(
                "held-out {name}: reward {:.3}, F1 {:.3}, EM {:.3}, well-formed {:.1}% ({} questions, run {})",
                e.overall.mean_reward(),
                e.overall.mean_f1(),
                e.overall.mean_em(),
                100.0 * e.overall.format_ok(),
                e.overall.n,
                e.run
            );
        }
    }
    if let Some(dir) = &s.last_checkpoint {
        println!("last checkpoint: {}", dir.display());
    }
}

/// The median of each part of the step time, and logging's share.
pub(crate) fn print_timings(t: &[StepTimings]) {
    print!("{}", timings_text(t));
}

/// The median of each part of the step time, and logging's share, as text.
pub(crate) fn timings_text(t: &[StepTimings]) -> String {
    if t.is_empty() {
        return String::new();
    }
    let median = |f: &dyn Fn(&StepTimings) -> u64| -> f64 {
        let mut v: Vec<u64> = t.iter().map(f).collect();
        v.sort_unstable();
        v[v.len() / 2] as f64 / 1e6
    };
    let total = median(&|x| x.total_ns);
    let mut out = format!("\nstep time, median of {} steps (ms):\n", t.len());
    let rows: [(&str, f64); 12] = [
        ("rollouts (wall)", median(&|x| x.rollout_ns)),
        ("  generation", median(&|x| x.episodes.generate_ns)),
        ("  tools", median(&|x| x.episodes.tools_ns)),
        ("  reward", median(&|x| x.episodes.reward_ns)),
        ("  episode logging", median(&|x| x.episodes.log_ns)),
        ("read batch", median(&|x| x.read_ns)),
        ("reference", median(&|x| x.reference_ns)),
        ("forward+backward", median(&|x| x.forward_backward_ns)),
        ("optimizer", median(&|x| x.optimizer_ns)),
        ("step logging", median(&|x| x.log_ns)),
        ("checkpoint", median(&|x| x.checkpoint_ns)),
        ("evaluation", median(&|x| x.eval_ns)),
    ];
    for (name, ms) in rows {
        out.push_str(&format!("{name:<20} {ms:>10.1}\n"));
    }
    out.push_str(&format!("{:<20} {total:>10.1}\n", "step (wall)"));
    let mut logging: Vec<f64> = t
        .iter()
        .map(|x| (x.episodes.log_ns + x.log_ns) as f64 / x.total_ns.max(1) as f64)
        .collect();
    logging.sort_by(f64::total_cmp);
    out.push_str(&format!(
        "logging share (episode and step logging / step wall time): median {:.2}%\n",
        100.0 * logging[logging.len() / 2]
    ));
    out
}
