//! `fathom replay`: re-run recorded episodes from the log. `--check`
//! confirms they are identical (or names the first divergence and its
//! cause); `--checkpoint` / `--policy` re-run one counterfactually against
//! the recorded web and print the two trajectories side by side.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use fathom_core::{Clock, EpisodeId, RunId, SystemClock};
use fathom_replay::diff::{self, Side, Turn};
use fathom_store::Options;
use fathom_trainer::recorded::RecordedEpisode;
use fathom_trainer::replay::{Divergence, PolicyChoice, Replayer, Verdict};

use crate::web::{WebArgs, connect};

/// Arguments of `fathom replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The episode to re-run (`e-12`).
    #[arg(long, conflicts_with = "run", required_unless_present = "run")]
    pub episode: Option<EpisodeId>,
    /// Every finished episode of this run (`r-3`); with --check.
    #[arg(long)]
    pub run: Option<RunId>,
    /// Re-run with the recorded policy, seed and web, and confirm the
    /// result is identical; exit status 0 only when every episode is.
    #[arg(long, conflicts_with_all = ["checkpoint", "policy"])]
    pub check: bool,
    /// Counterfactual: re-run the episode with the checkpoint of this
    /// training step (of the episode's training run).
    #[arg(long, conflicts_with = "policy")]
    pub checkpoint: Option<u64>,
    /// Counterfactual: re-run the episode with this policy: `scripted`,
    /// `candle:DIR` or `openai:URL`.
    #[arg(long)]
    pub policy: Option<String>,
    /// Counterfactual: what a request the recording lacks gets: `fail` (an
    /// error the policy sees), `sandbox` (the built-in sandbox answers) or
    /// `live` (the live web, with --search-url or --searxng-url).
    #[arg(long, default_value = "fail", value_parser = ["fail", "sandbox", "live"])]
    pub on_miss: String,
    /// Episodes re-run at once (--run).
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// Where model policies run: `cpu`, or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// With --check: print each episode's verdict as a JSON line (episode,
    /// run, identical, turn, cause, turns, tokens, requests, recorded_ms,
    /// replay_ms) instead of the report.
    #[arg(long)]
    pub json: bool,
    /// Width of the side-by-side diff.
    #[arg(long, default_value_t = 120)]
    pub width: usize,
    #[command(flatten)]
    pub web_args: WebArgs,
}

pub fn run(data: &Path, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let counterfactual = args.checkpoint.is_some() || args.policy.is_some();
    if !args.check && !counterfactual {
        anyhow::bail!(
            "say what to do: --check (re-run as recorded and compare), or --checkpoint STEP / --policy SPEC (a counterfactual re-run)"
        );
    }
    if args.run.is_some() && !args.check {
        anyhow::bail!("--run re-runs a whole run with --check; a counterfactual takes one --episode");
    }
    if args.on_miss != "fail" && !counterfactual {
        anyhow::bail!("--on-miss is for counterfactual re-runs; --check never leaves the recording");
    }
    if args.on_miss == "live" && args.web_args.search_url.is_none() && args.web_args.searxng_url.is_none() {
        anyhow::bail!("--on-miss live needs a search API: pass --search-url (Serper-compatible) or --searxng-url");
    }
    let replayer = Arc::new(replayer_for(data, &args.device, counterfactual)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match (args.episode, args.run) {
            (Some(episode), _) if counterfactual => rerun(&replayer, episode, &args).await,
            (Some(episode), _) => {
                let verdict = replayer.check(episode).await?;
                if args.json {
                    println!("{}", verdict_json(&verdict));
                } else {
                    print_verdict(&verdict);
                }
                Ok(exit(verdict.divergence.is_none()))
            }
            (None, Some(run)) => check_run(replayer, run, args.jobs, args.json).await,
            (None, None) => unreachable!("clap requires --episode or --run"),
        }
    })
}

/// A replayer over the log of `data`: the log itself, or, while another
/// fathom process holds it and only checks are asked for (`writes` false),
/// that process's read endpoint, so checks run during a training run.
pub(crate) fn replayer_for(data: &Path, device: &str, writes: bool) -> anyhow::Result<Replayer> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let log = open_log(data, writes, "a re-run writes a new run into the log")?;
    Ok(match log {
        Log::Held(store) => Replayer::new(store, clock, device),
        Log::Endpoint(endpoint) => Replayer::read_only(endpoint, clock, device),
    })
}

/// The log of a data directory, for reading.
pub(crate) enum Log {
    /// This process holds it.
    Held(Arc<fathom_store::Store>),
    /// Another process holds it; read through its endpoint.
    Endpoint(Arc<dyn fathom_store::LogRead>),
}

impl Log {
    /// Read access, either way.
    pub(crate) fn read(&self) -> Arc<dyn fathom_store::LogRead> {
        match self {
            Log::Held(store) => store.clone(),
            Log::Endpoint(endpoint) => endpoint.clone(),
        }
    }
}

/// Opens the log of `data`, or, while another fathom process holds it and
/// nothing is to be written (`writes` false), that process's read
/// endpoint; `why` says what would write when `writes` is true.
pub(crate) fn open_log(data: &Path, writes: bool, why: &str) -> anyhow::Result<Log> {
    let opened = if writes {
        crate::open_store(data, Options::default()).map(Arc::new)
    } else {
        // Only reading: shared with this process's other readers, and a
        // writer that starts meanwhile waits for it.
        fathom_store::Store::open_shared(data, Options::default()).map_err(anyhow::Error::from)
    };
    let e = match opened {
        Ok(store) => return Ok(Log::Held(store)),
        Err(e) => e,
    };
    let Some(fathom_store::Error::InUse { holder, .. }) = e.downcast_ref::<fathom_store::Error>() else {
        return Err(e);
    };
    if writes {
        anyhow::bail!("{why}, which another fathom process holds ({holder}); run it once that process has finished");
    }
    let endpoint = fathom_store::tail::Endpoint::connect(data).ok_or_else(|| {
        anyhow::anyhow!(
            "the log is held by another fathom process ({holder}) that serves no read endpoint; run this once it has finished"
        )
    })?;
    eprintln!("note: the log is held by {holder}; reading it through that process's read endpoint");
    Ok(Log::Endpoint(Arc::new(endpoint)))
}

fn exit(ok: bool) -> ExitCode {
    if ok { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn short(text: &str, max: usize) -> String {
    let one_line: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if one_line.chars().count() <= max {
        one_line
    } else {
        format!("{}…", one_line.chars().take(max).collect::<String>())
    }
}

fn print_verdict(v: &Verdict) {
    match &v.divergence {
        None => println!(
            "{} of {} ({}): identical: {} turn(s), {} sampled token(s), {} web exchange(s) answered from the log; re-run {:.3} s (recorded {:.3} s)",
            v.episode,
            v.run,
            v.policy,
            v.turns,
            v.tokens,
            v.requests,
            seconds(v.replay_ns),
            seconds(v.recorded_ns)
        ),
        Some(d) => {
            let at = d
                .turn
                .map_or("before the first turn".to_string(), |t| format!("at turn {t}"));
            let policy = if v.policy.is_empty() {
                String::new()
            } else {
                format!(" ({})", v.policy)
            };
            println!("{} of {}{policy}: DIVERGES {at}", v.episode, v.run);
            print_divergence(d);
        }
    }
}

fn print_divergence(d: &Divergence) {
    println!("  cause:    {}", d.cause);
    if d.turn.is_some() {
        println!("  recorded: {}", short(&d.recorded, 400));
        println!("  produced: {}", short(&d.produced, 400));
    }
    if let Some(line) = d.token_line() {
        println!("  {line}");
    }
    for note in &d.environment {
        println!("  changed since the recording: {note}");
    }
}

fn verdict_json(v: &Verdict) -> serde_json::Value {
    let d = v.divergence.as_ref();
    serde_json::json!({
        "episode": v.episode.to_string(),
        "run": v.run.to_string(),
        "identical": d.is_none(),
        "turn": d.and_then(|d| d.turn),
        "cause": d.map(|d| d.cause.to_string()),
        "turns": v.turns,
        "tokens": v.tokens,
        "requests": v.requests,
        "recorded_ms": v.recorded_ns as f64 / 1e6,
        "replay_ms": v.replay_ns as f64 / 1e6,
        "policy_ms": v.timings.generate_ns as f64 / 1e6,
        "tools_ms": v.timings.tools_ns as f64 / 1e6,
        "reward_ms": v.timings.reward_ns as f64 / 1e6,
    })
}

async fn check_run(replayer: Arc<Replayer>, run: RunId, jobs: usize, json: bool) -> anyhow::Result<ExitCode> {
    let episodes = replayer.episodes_of(run)?;
    if episodes.is_empty() {
        anyhow::bail!("run {run} has no finished episodes to re-run");
    }
    let bar = crate::progress_bar(episodes.len() as u64, "episodes");
    let limit = Arc::new(tokio::sync::Semaphore::new(jobs.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let t0 = SystemClock.now();
    for (i, &episode) in episodes.iter().enumerate() {
        let (replayer, limit) = (replayer.clone(), limit.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("never closed");
            (i, replayer.check(episode).await)
        });
    }
    let mut verdicts: Vec<Option<Verdict>> = vec![None; episodes.len()];
    while let Some(joined) = tasks.join_next().await {
        let (i, verdict) = joined.context("a replay task failed")?;
        verdicts[i] = Some(verdict.with_context(|| format!("re-running {}", episodes[i]))?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let wall = SystemClock.now().nanos_since(t0);
    let verdicts: Vec<Verdict> = verdicts.into_iter().map(|v| v.expect("every episode ran")).collect();
    let diverged: Vec<&Verdict> = verdicts.iter().filter(|v| v.divergence.is_some()).collect();
    if json {
        for v in &verdicts {
            println!("{}", verdict_json(v));
        }
        return Ok(exit(diverged.is_empty()));
    }
    let recorded: u64 = verdicts.iter().map(|v| v.recorded_ns).sum();
    let replayed: u64 = verdicts.iter().map(|v| v.replay_ns).sum();
    let tokens: usize = verdicts.iter().map(|v| v.tokens).sum();
    let requests: usize = verdicts.iter().map(|v| v.requests).sum();
    println!("run {run}: {} episode(s) re-run from the log", verdicts.len());
    println!("  identical   {}", verdicts.len() - diverged.len());
    println!("  diverged    {}", diverged.len());
    println!("  tokens      {tokens} sampled token(s) compared");
    println!("  web         {requests} recorded exchange(s)");
    println!(
        "  time        re-runs {:.3} s in all ({:.3} s wall, {} at once); recorded episodes {:.3} s in all ({:.1}x)",
        seconds(replayed),
        seconds(wall),
        jobs.max(1),
        seconds(recorded),
        recorded as f64 / replayed.max(1) as f64
    );
    if !diverged.is_empty() {
        let mut causes: std::collections::BTreeMap<String, usize> = Default::default();
        for v in &diverged {
            let d = v.divergence.as_ref().expect("diverged");
            let kind = d.cause.to_string();
            let kind = kind.split(':').next().unwrap_or_default().to_string();
            *causes.entry(kind).or_default() += 1;
        }
        println!("causes:");
        for (cause, n) in causes {
            println!("  {n:>6}  {cause}");
        }
        println!("first divergences:");
        for v in diverged.iter().take(10) {
            print_verdict(v);
        }
    }
    Ok(exit(diverged.is_empty()))
}

fn side<'a>(e: &'a RecordedEpisode, label: String) -> Side<'a> {
    Side {
        label,
        reward: e.end.map(|end| end.reward),
        f1: e.end.map(|end| end.f1),
        turns: e
            .turns
            .iter()
            .map(|t| Turn {
                text: &t.text,
                tool: t.tool_text.as_deref(),
            })
            .collect(),
    }
}

async fn rerun(replayer: &Replayer, episode: EpisodeId, args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let choice = match (&args.checkpoint, &args.policy) {
        (Some(step), _) => PolicyChoice::Checkpoint(*step),
        (None, Some(spec)) => PolicyChoice::Spec(spec.clone()),
        (None, None) => unreachable!("checked by the caller"),
    };
    // The fallback web (kept alive while the episode runs).
    let web = match args.on_miss.as_str() {
        "fail" => None,
        _ => Some(connect(&args.web_args).await?),
    };
    let result = replayer
        .counterfactual(episode, &choice, web.as_ref().map(|w| w.config.clone()))
        .await?;
    let a = side(&result.original, format!("{} (recorded)", result.original.episode_id));
    let b = side(
        &result.rerun,
        format!("{} ({})", result.rerun.episode_id, result.policy),
    );
    print!("{}", diff::side_by_side(&a, &b, args.width));
    match diff::first_difference(&a, &b) {
        None => println!("the two trajectories are identical"),
        Some(t) => println!("first difference at turn {t}"),
    }
    for m in &result.misses {
        println!(
            "not in the recording (turn {}): {} -> {}",
            m.context.turn.map_or("-".into(), |t| t.to_string()),
            m.request,
            if m.answered {
                "answered by the fallback web"
            } else {
                "failed"
            }
        );
    }
    println!(
        "recorded as {} in replay run {} (episodes.replay_of = {}); compare with:\n  fathom sql \"SELECT * FROM replays WHERE episode_id = '{}'\"",
        result.rerun.episode_id, result.run, episode, result.rerun.episode_id
    );
    Ok(ExitCode::SUCCESS)
}
