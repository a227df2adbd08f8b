//! `fathom sandbox …`: the built-in web.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use fathom_sandbox::faults::FaultSpec;
use fathom_sandbox::{Sandbox, SandboxWeb, ServeConfig};

#[derive(Debug, clap::Subcommand)]
pub enum SandboxCommand {
    /// Serve the sandbox web on loopback until stopped (Ctrl-C): a
    /// Serper/SearXNG-compatible search API and one page server per site.
    Serve(ServeArgs),
    /// Write a question set over the sandbox world, in verl's Parquet layout.
    Questions(QuestionsArgs),
}

#[derive(Debug, clap::Args)]
pub struct QuestionsArgs {
    /// Seed of the world (the same as the sandbox serving it).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Size of the world (the same as the sandbox serving it).
    #[arg(long, default_value_t = 2000)]
    pub entities: usize,
    /// How many questions.
    #[arg(long, default_value_t = 200)]
    pub count: usize,
    /// Hop counts, `1..4` or a single number; questions cycle through them.
    #[arg(long, default_value = "1..4", value_parser = parse_hops)]
    pub hops: (u32, u32),
    /// Output file (Parquet, verl layout).
    #[arg(long)]
    pub out: std::path::PathBuf,
}

fn parse_hops(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("'{s}' is not a hop range; use a number from 1 to 4 or a range such as 1..4");
    let (lo, hi) = match s.split_once("..") {
        Some((a, b)) => (
            a.trim().parse().map_err(|_| bad())?,
            b.trim_start_matches('=').trim().parse().map_err(|_| bad())?,
        ),
        None => {
            let n = s.trim().parse().map_err(|_| bad())?;
            (n, n)
        }
    };
    if !(1..=4).contains(&lo) || !(1..=4).contains(&hi) || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address of the search API; port 0 picks a free one. Sites take free ports on the same host.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub addr: SocketAddr,
    /// Seed of the world: the same seed serves the same pages, byte for byte.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Approximate number of entities in the world.
    #[arg(long, default_value_t = 2000)]
    pub entities: usize,
    /// Faults to inject, e.g. `0.1` or `latency=0.1:300ms,404=0.05,429=0.05:2s,500=0.05`.
    #[arg(long, default_value = "none")]
    pub faults: String,
    /// Also serve your own documents: JSON lines of {"url", "title", "text"}.
    #[arg(long)]
    pub corpus: Option<std::path::PathBuf>,
}

pub fn run(cmd: SandboxCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SandboxCommand::Serve(args) => serve(args),
        SandboxCommand::Questions(args) => questions(args),
    }
}

/// Sandbox questions over the world of `seed` and `entities`, as verl rows
/// (`data_source` is `sandbox-{hops}hop`).
pub(crate) fn question_rows(
    seed: u64,
    entities: usize,
    count: usize,
    hops: std::ops::RangeInclusive<u32>,
) -> Vec<fathom_store::verl::VerlRow> {
    question_rows_seeded(seed, entities, seed, count, hops)
}

/// As [`question_rows`], with the questions drawn by `question_seed`
/// (another seed gives other questions over the same world).
pub(crate) fn question_rows_seeded(
    seed: u64,
    entities: usize,
    question_seed: u64,
    count: usize,
    hops: std::ops::RangeInclusive<u32>,
) -> Vec<fathom_store::verl::VerlRow> {
    let world = fathom_sandbox::World::generate(seed, entities);
    fathom_sandbox::questions::generate(&world, question_seed, count, hops)
        .into_iter()
        .map(|q| fathom_store::verl::VerlRow {
            data_source: format!("sandbox-{}hop", q.hops),
            prompt: vec![fathom_store::verl::Message {
                role: "user".into(),
                content: q.text,
            }],
            ability: "search & question answering".into(),
            ground_truth: q.answers.join(fathom_store::verl::ANSWER_SPLIT),
            style: "rule".into(),
            index: q.id,
            split: "sandbox".into(),
            sandbox_world: Some((seed, entities as u64)),
        })
        .collect()
}

/// Makes the command use the sandbox world `(seed, entities)` that the
/// questions in `file` were generated from: an in-process sandbox generates
/// it, and a running one must serve it (`WebArgs`' world check). A seed or
/// size the command already asks for (flags, a training configuration)
/// that differs is refused, naming both.
pub(crate) fn adopt_world(
    web: &mut crate::web::WebArgs,
    (seed, entities): (u64, u64),
    file: &std::path::Path,
) -> anyhow::Result<()> {
    let asked: Vec<String> = [
        web.sandbox_seed.filter(|&s| s != seed).map(|s| format!("seed {s}")),
        web.sandbox_entities
            .filter(|&n| n as u64 != entities)
            .map(|n| format!("{n} entities")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !asked.is_empty() {
        anyhow::bail!(
            "{} holds questions of the sandbox world with seed {seed} and {entities} entities, but the command asks for {} (--sandbox-seed/--sandbox-entities or the configuration); their answers hold only in their own world, so drop those settings or use the file's",
            file.display(),
            asked.join(" and ")
        );
    }
    web.sandbox_seed = Some(seed);
    web.sandbox_entities = Some(usize::try_from(entities).unwrap_or(usize::MAX));
    Ok(())
}

/// The sandbox world a question set was generated from: `None` when no
/// question names one (DeepResearcher's sets), an error when they name
/// several.
pub(crate) fn world_of(
    rows: &[fathom_store::verl::VerlRow],
    file: &std::path::Path,
) -> anyhow::Result<Option<(u64, u64)>> {
    let worlds: std::collections::BTreeSet<(u64, u64)> = rows.iter().filter_map(|r| r.sandbox_world).collect();
    match worlds.len() {
        0 => Ok(None),
        1 => Ok(worlds.into_iter().next()),
        _ => {
            let list: Vec<String> = worlds
                .iter()
                .map(|(s, n)| format!("seed {s} with {n} entities"))
                .collect();
            anyhow::bail!(
                "{} holds questions of {} sandbox worlds ({}); a run sees one world, so split the file by world",
                file.display(),
                list.len(),
                list.join(", ")
            )
        }
    }
}

fn questions(args: QuestionsArgs) -> anyhow::Result<ExitCode> {
    if args.count == 0 {
        anyhow::bail!("--count must be at least 1");
    }
    let rows = question_rows(args.seed, args.entities, args.count, args.hops.0..=args.hops.1);
    fathom_store::verl::write(&args.out, &rows)?;
    println!(
        "wrote {} questions ({} to {} hops) over the seed-{} world to {}",
        rows.len(),
        args.hops.0,
        args.hops.1,
        args.seed,
        args.out.display()
    );
    if rows.len() < args.count {
        eprintln!(
            "note: the world holds only {} distinct questions of these hop counts",
            rows.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let faults = FaultSpec::parse(&args.faults)?;
    if !args.addr.ip().is_loopback() {
        eprintln!(
            "warning: serving the sandbox on {}, which is not a loopback address",
            args.addr.ip()
        );
    }
    let corpus = match &args.corpus {
        None => Vec::new(),
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read the corpus {}", path.display()))?;
            fathom_sandbox::pages::read_corpus(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
    };
    let web = Arc::new(SandboxWeb::with_corpus(args.seed, args.entities, &corpus).context("building the sandbox web")?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let config = ServeConfig {
            host: args.addr.ip(),
            search_port: args.addr.port(),
            faults,
            fault_seed: args.seed,
        };
        let sandbox = Sandbox::start(web.clone(), config)
            .await
            .with_context(|| format!("cannot listen on {}", args.addr))?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on http://{}", sandbox.search_addr)?;
            out.flush()?;
        }
        eprintln!(
            "sandbox seed {}: {} entities, {} pages; search at {}; sites: {}",
            args.seed,
            web.world.entities.len(),
            web.pages.len(),
            sandbox.search_url(),
            sandbox
                .site_addrs
                .iter()
                .map(|(s, a)| format!("{}=http://{a}", s.name()))
                .collect::<Vec<_>>()
                .join(" ")
        );
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
        drop(sandbox);
        Ok(ExitCode::SUCCESS)
    })
}
