//! `fathom eval`: run a policy over a question set, record everything, and
//! report F1 and EM per data source as the paper does (a format failure
//! scores 0).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use fathom_core::event::{EvalResult, QuestionSampled, RunFinished, RunKind, RunStarted, RunStatus};
use fathom_core::{Clock, Event, QuestionId, SystemClock, derive_seed};
use fathom_model::sample::Sampling;
use fathom_replay::Gateway;
use fathom_store::Options;
use fathom_trainer::candle_policy::{CandleModel, CandlePolicy};
use fathom_trainer::openai::{OpenAiConfig, OpenAiPolicy};
use fathom_trainer::policy::Policy;
use fathom_trainer::rollout::{EpisodeSpec, Rollout, RolloutConfig};
use fathom_trainer::scripted::ScriptedPolicy;
use fathom_trainer::tools::HeuristicReader;

use crate::web::{WebArgs, connect};

/// Arguments of `fathom eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Questions in verl Parquet (DeepResearcher's dev/test sets, or `fathom sandbox questions`).
    /// Without it, 200 questions (or --limit) are generated over a sandbox started in-process.
    #[arg(long)]
    pub questions: Option<PathBuf>,
    /// The policy: `scripted` (the heuristic researcher), `candle:DIR` (a Hugging Face Qwen2
    /// model directory, run by fathom's own model) or `openai:URL` (an OpenAI-compatible
    /// endpoint: vLLM, SGLang, llama.cpp, Ollama, `fathom serve-model`).
    #[arg(long, default_value = "scripted")]
    pub policy: String,
    /// Sampling temperature of model policies; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus (top-p) mass of model policies.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Where model policies run: `cpu`, or `cuda:N` (built with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Weights' dtype for model policies: `f32` or `bf16`.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// The model to ask an `openai:` endpoint for (default: its first).
    #[arg(long, env = "OPENAI_MODEL")]
    pub model_name: Option<String>,
    /// Key of an `openai:` endpoint.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Seconds an `openai:` request may take.
    #[arg(long, default_value_t = 120)]
    pub request_timeout: u64,
    /// Which web: the built-in `sandbox` or the `live` web (needs --search-url or --searxng-url).
    #[arg(long, default_value = "sandbox", value_parser = ["sandbox", "live"])]
    pub web: String,
    /// Evaluate only the first N questions.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Episodes run at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Seed of the evaluation (each episode's seed derives from it).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Turns per episode at most (so this many minus one tool calls and an answer).
    #[arg(long, default_value_t = fathom_core::protocol::MAX_TURNS)]
    pub max_turns: u32,
    /// Generated tokens per turn at most.
    #[arg(long, default_value_t = fathom_core::protocol::MAX_TURN_TOKENS)]
    pub max_turn_tokens: u32,
    /// Characters of one tool response at most (what the policy reads after
    /// each call; a model trained on short responses should see them too).
    #[arg(long, default_value_t = 8000)]
    pub max_tool_chars: usize,
    /// The system prompt: `paper` (with the tool schemas), or `compact` (the
    /// few lines tiny models are trained with, as `fathom demo` does).
    #[arg(long, default_value = "paper", value_parser = ["paper", "compact"])]
    pub prompt: String,
    #[command(flatten)]
    pub web_args: WebArgs,
}

#[derive(Default)]
struct Tally {
    n: u64,
    f1: f64,
    em: f64,
    format_failures: u64,
}

impl Tally {
    fn add(&mut self, s: &fathom_core::reward::Score) {
        self.n += 1;
        self.f1 += s.eval_f1();
        self.em += s.em;
        if !s.format_ok {
            self.format_failures += 1;
        }
    }
}

/// Makes each episode's policy.
#[derive(Clone)]
enum Policies {
    Scripted,
    /// The model, its sampling, and the batch decoder its episodes share
    /// (fused kernels only).
    Candle(Arc<CandleModel>, Sampling, Option<Arc<fathom_model::batch::Batcher>>),
    OpenAi(OpenAiPolicy),
}

impl Policies {
    fn parse(args: &EvalArgs) -> anyhow::Result<Policies> {
        if args.policy == "scripted" {
            return Ok(Policies::Scripted);
        }
        if let Some(dir) = args.policy.strip_prefix("candle:") {
            if !(0.0..=1.0).contains(&args.top_p) || args.top_p == 0.0 || args.temperature < 0.0 {
                anyhow::bail!("--top-p must be in (0, 1] and --temperature at least 0");
            }
            let model = CandleModel::load(Path::new(dir), &args.device, &args.dtype)
                .with_context(|| format!("loading the model directory {dir}"))?;
            let sampling = Sampling {
                temperature: args.temperature,
                top_p: args.top_p,
            };
            let batcher = model.batcher()?;
            return Ok(Policies::Candle(Arc::new(model), sampling, batcher));
        }
        if let Some(url) = args.policy.strip_prefix("openai:") {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                anyhow::bail!("openai:URL needs an http:// or https:// URL, like openai:http://127.0.0.1:8000/v1");
            }
            let mut config = OpenAiConfig::new(url);
            config.model = args.model_name.clone().unwrap_or_default();
            config.api_key = args.api_key.clone();
            config.timeout = std::time::Duration::from_secs(args.request_timeout.max(1));
            config.temperature = args.temperature;
            config.top_p = args.top_p;
            return Ok(Policies::OpenAi(OpenAiPolicy::new(config)?));
        }
        anyhow::bail!(
            "policy '{}' is not known; the policies are: scripted, candle:DIR (a model directory), openai:URL (an OpenAI-compatible endpoint)",
            args.policy
        )
    }

    fn make(&self) -> Box<dyn Policy> {
        match self {
            Policies::Scripted => Box::new(ScriptedPolicy::new()),
            Policies::Candle(model, sampling, batcher) => {
                Box::new(CandlePolicy::batched(model.clone(), batcher.clone(), *sampling, 0))
            }
            Policies::OpenAi(policy) => Box::new(policy.clone()),
        }
    }

    fn model(&self) -> String {
        match self {
            Policies::Scripted => String::new(),
            Policies::OpenAi(p) => p.config().model.clone(),
            Policies::Candle(model, ..) => {
                let c = &model.loaded().config;
                format!(
                    "qwen2 {} layers, hidden {}, {} parameters",
                    c.num_hidden_layers,
                    c.hidden_size,
                    c.parameter_count()
                )
            }
        }
    }

    /// The kernels a model policy runs with (replay uses the same).
    fn kernels(&self) -> Option<fathom_model::Kernels> {
        match self {
            Policies::Candle(model, ..) => Some(model.loaded().model.kernels()),
            _ => None,
        }
    }
}

/// Refuses values no evaluation can run with, before anything is recorded.
fn check_args(args: &EvalArgs) -> anyhow::Result<()> {
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        anyhow::bail!("--top-p must be above 0 and at most 1, got {}", args.top_p);
    }
    if !(args.temperature >= 0.0 && args.temperature <= 2.0) {
        anyhow::bail!("--temperature must be 0 (greedy) to 2, got {}", args.temperature);
    }
    if !(1..=4096).contains(&args.concurrency) {
        anyhow::bail!(
            "--concurrency must be 1 to 4096 episodes at once, got {}",
            args.concurrency
        );
    }
    if args.limit == Some(0) {
        anyhow::bail!("--limit 0 would evaluate nothing; give at least 1, or leave it out for every question");
    }
    if !(1..=64).contains(&args.max_turns) {
        anyhow::bail!("--max-turns must be 1 to 64, got {}", args.max_turns);
    }
    if !(1..=32_768).contains(&args.max_turn_tokens) {
        anyhow::bail!("--max-turn-tokens must be 1 to 32768, got {}", args.max_turn_tokens);
    }
    Ok(())
}

pub fn run(data: &Path, args: EvalArgs, snapshots: crate::Snapshotting) -> anyhow::Result<ExitCode> {
    check_args(&args)?;
    let policies = Policies::parse(&args)?;
    if args.web == "live" && args.web_args.search_url.is_none() && args.web_args.searxng_url.is_none() {
        anyhow::bail!("--web live needs a search API: pass --search-url (Serper-compatible) or --searxng-url");
    }
    if args.web == "sandbox" && (args.web_args.search_url.is_some() || args.web_args.searxng_url.is_some()) {
        anyhow::bail!("--search-url and --searxng-url are for --web live; drop them to use the sandbox");
    }
    let mut args = args;
    let mut rows = match &args.questions {
        Some(path) => {
            let rows = fathom_store::verl::read(path)?;
            if rows.is_empty() {
                anyhow::bail!("{} holds no questions", path.display());
            }
            // Sandbox questions name their world: use it (a sandbox started
            // here generates it; one already running must serve it).
            if let Some(world) = crate::sandbox::world_of(&rows, path)?
                && args.web == "sandbox"
            {
                crate::sandbox::adopt_world(&mut args.web_args, world, path)?;
            }
            rows
        }
        None => {
            if args.web == "live" {
                anyhow::bail!("--web live needs --questions: generated questions only have answers in the sandbox");
            }
            // Questions over the sandbox this command starts itself (a
            // sandbox already running elsewhere may hold another world).
            args.web_args.sandbox.set_port(0);
            crate::sandbox::question_rows(
                args.web_args.seed(),
                args.web_args.entities(),
                args.limit.unwrap_or(200),
                1..=4,
            )
        }
    };
    if let Some(n) = args.limit {
        rows.truncate(n);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(evaluate(data, args, rows, snapshots, policies))
}

async fn evaluate(
    data: &Path,
    args: EvalArgs,
    rows: Vec<fathom_store::verl::VerlRow>,
    snapshots: crate::Snapshotting,
    policies: Policies,
) -> anyhow::Result<ExitCode> {
    let web = connect(&args.web_args).await?;
    let store = Arc::new(crate::open_store(data, Options::default())?);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let run = store.new_run_id()?;
    let benchmark = match &args.questions {
        Some(path) => path
            .file_stem()
            .map_or("questions".to_string(), |s| s.to_string_lossy().into_owned()),
        None => format!("sandbox-seed-{}", args.web_args.seed()),
    };
    let config = RolloutConfig {
        max_turns: args.max_turns,
        max_turn_tokens: args.max_turn_tokens,
        tools: fathom_trainer::tools::ToolLimits {
            max_response_chars: args.max_tool_chars.clamp(200, 1_000_000),
            ..Default::default()
        },
        prompt: if args.prompt == "compact" {
            fathom_core::protocol::PromptStyle::Compact
        } else {
            fathom_core::protocol::PromptStyle::Paper
        },
        ..RolloutConfig::default()
    };
    let model_digest = match args.policy.strip_prefix("candle:") {
        Some(dir) => fathom_trainer::checkpoint::weights_digest(Path::new(dir)).map(|d| d.to_hex()),
        None => None,
    };
    store.append(&[Event::new(
        run,
        clock.now(),
        RunStarted {
            name: format!("eval {benchmark}"),
            run_kind: RunKind::Eval,
            config_json: serde_json::json!({
                "questions": args.questions.as_ref().map(|p| p.display().to_string()), "policy": args.policy, "temperature": args.temperature, "top_p": args.top_p, "device": args.device, "dtype": args.dtype, "web": args.web,
                "limit": args.limit, "seed": args.seed, "max_turns": args.max_turns, "max_turn_tokens": args.max_turn_tokens,
                "sandbox_seed": args.web_args.seed(), "sandbox_entities": args.web_args.entities(),
                "sandbox_faults": args.web_args.sandbox_faults, "search": format!("{:?}", web.config.search),
                "rollout": config.to_json(), "model_digest": model_digest,
                "model_name": args.model_name, "threads": candle_core::utils::get_num_threads(),
                "kernels": policies.kernels(),
            })
            .to_string(),
            seed: args.seed,
            policy: args.policy.clone(),
            model: policies.model(),
            code_version: concat!("fathom ", env!("CARGO_PKG_VERSION")).into(),
            attempt: 0,
        },
    )])?;
    let auto = crate::auto_snapshot(&store, snapshots);
    let question_ids: Vec<QuestionId> = rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            QuestionId(if row.index.is_empty() {
                format!("q{i}")
            } else {
                row.index.clone()
            })
        })
        .collect();
    let sampled: Vec<Event> = rows
        .iter()
        .zip(&question_ids)
        .enumerate()
        .map(|(i, (row, id))| {
            Event::new(
                run,
                clock.now(),
                QuestionSampled {
                    step: 0,
                    question_id: id.clone(),
                    data_source: row.data_source.clone(),
                    question: row.question().to_string(),
                    ground_truths: row.ground_truths(),
                    hops: row.hops(),
                    data_cursor: i as u64,
                },
            )
        })
        .collect();
    if !sampled.is_empty() {
        store.append_with(&sampled, fathom_store::Durability::Relaxed)?;
    }
    let gateway = Arc::new(Gateway::record(web.config.clone(), store.clone(), clock.clone())?);
    let rollout = Rollout::new(store.clone(), gateway, clock.clone(), run, config);
    let bar = crate::progress_bar(rows.len() as u64, "episodes");
    let limit = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, row) in rows.iter().enumerate() {
        let spec = EpisodeSpec {
            question_id: question_ids[i].clone(),
            question: row.question().to_string(),
            ground_truths: row.ground_truths(),
            step: 0,
            group_id: i as u32,
            group_index: 0,
            seed: derive_seed(args.seed, "episode", i as u64),
            replay_of: None,
        };
        let (rollout, limit) = (rollout.clone(), limit.clone());
        let mut policy = policies.make();
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("never closed");
            let out = rollout.episode(policy.as_mut(), &mut HeuristicReader, &spec).await;
            (i, out)
        });
    }
    let mut scores = vec![None; rows.len()];
    let (mut done, mut reward_sum) = (0u64, 0.0);
    while let Some(joined) = tasks.join_next().await {
        let (i, out) = joined.context("an episode task panicked")?;
        let out = out?;
        done += 1;
        reward_sum += out.score.reward;
        bar.set_position(done);
        bar.set_message(format!("reward {:.3}", reward_sum / done as f64));
        scores[i] = Some(out.score);
    }
    bar.finish_and_clear();
    store.flush()?;

    let mut by_source: BTreeMap<String, Tally> = BTreeMap::new();
    let mut by_hops: BTreeMap<u32, Tally> = BTreeMap::new();
    let mut overall = Tally::default();
    for (row, score) in rows.iter().zip(&scores) {
        let s = score.as_ref().expect("every episode finished");
        by_source.entry(row.data_source.clone()).or_default().add(s);
        if let Some(h) = row.hops() {
            by_hops.entry(h).or_default().add(s);
        }
        overall.add(s);
    }
    let mut results = Vec::new();
    println!(
        "{:<20} {:>6} {:>7} {:>7} {:>12}",
        "data source", "n", "F1", "EM", "format fail"
    );
    let line = |name: &str, t: &Tally, results: &mut Vec<Event>| {
        let n = t.n.max(1) as f64;
        println!(
            "{:<20} {:>6} {:>7.3} {:>7.3} {:>11.1}%",
            name,
            t.n,
            t.f1 / n,
            t.em / n,
            100.0 * t.format_failures as f64 / n
        );
        for (metric, value) in [
            ("f1", t.f1 / n),
            ("em", t.em / n),
            ("format_ok", 1.0 - t.format_failures as f64 / n),
        ] {
            results.push(Event::new(
                run,
                clock.now(),
                EvalResult {
                    step: 0,
                    benchmark: benchmark.clone(),
                    data_source: name.to_string(),
                    metric: metric.into(),
                    value,
                    n: t.n,
                },
            ));
        }
    };
    for (source, t) in &by_source {
        line(source, t, &mut results);
    }
    line("overall", &overall, &mut results);
    if !by_hops.is_empty() {
        println!();
        println!(
            "{:<20} {:>6} {:>7} {:>7} {:>12}",
            "hops", "n", "F1", "EM", "format fail"
        );
        for (h, t) in &by_hops {
            line(&format!("{h}-hop"), t, &mut results);
        }
    }
    results.push(Event::new(
        run,
        clock.now(),
        RunFinished {
            status: RunStatus::Completed,
            steps_completed: 1,
            message: format!("{} questions", rows.len()),
        },
    ));
    store.append(&results)?;
    crate::finish_snapshots(auto)?;
    eprintln!("recorded as run {run} in {}", data.display());
    Ok(ExitCode::SUCCESS)
}
