//! `fathom web …`: one search or page fetch through the gateway, recorded
//! in the log, printed as the agent would see it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use fathom_core::event::{RunFinished, RunKind, RunStarted, RunStatus};
use fathom_core::{Clock, Event, SystemClock};
use fathom_replay::{Context, Gateway, GatewayConfig, SearchBackend};
use fathom_sandbox::{Sandbox, SandboxWeb, ServeConfig};
use fathom_store::Options;

#[derive(Debug, clap::Subcommand)]
pub enum WebCommand {
    /// Run web searches (at most three queries, as the agent's tool does)
    /// and print the results as the agent sees them.
    Search {
        /// The queries.
        #[arg(required = true)]
        queries: Vec<String>,
        #[command(flatten)]
        web: WebArgs,
    },
    /// Fetch a page and print its readable text, as the agent's reader gets it.
    Fetch {
        /// The page URL.
        url: String,
        /// Show the reader segments (40,960 characters each) instead of the whole text.
        #[arg(long)]
        segments: bool,
        #[command(flatten)]
        web: WebArgs,
    },
}

/// The sandbox world's size when neither `--sandbox-entities` nor a
/// configuration gives one.
pub const DEFAULT_ENTITIES: usize = 2000;

#[derive(Debug, Clone, clap::Args)]
pub struct WebArgs {
    /// A Serper-compatible search endpoint (live web). Without one, the built-in sandbox is used.
    #[arg(long, env = "FATHOM_SEARCH_URL")]
    pub search_url: Option<String>,
    /// The search endpoint's API key.
    #[arg(long, env = "SERPER_API_KEY", hide_env_values = true)]
    pub search_key: Option<String>,
    /// A SearXNG endpoint (live web), instead of a Serper-compatible one.
    #[arg(long, env = "FATHOM_SEARXNG_URL", conflicts_with = "search_url")]
    pub searxng_url: Option<String>,
    /// Where the sandbox listens: a running `fathom sandbox serve` there is used,
    /// otherwise one is started in-process (sites on the next five ports).
    #[arg(long, default_value = "127.0.0.1:8930")]
    pub sandbox: SocketAddr,
    /// Seed of an in-process sandbox [default: 1]. Given, a sandbox already
    /// running at --sandbox must serve that world.
    #[arg(long)]
    pub sandbox_seed: Option<u64>,
    /// Size of an in-process sandbox [default: 2000, or a training
    /// configuration's `data.sandbox_entities`].
    #[arg(long)]
    pub sandbox_entities: Option<usize>,
    /// Faults an in-process sandbox injects (see `fathom sandbox serve --faults`).
    #[arg(long, default_value = "none")]
    pub sandbox_faults: String,
    /// Do not record the exchanges in the log.
    #[arg(long)]
    pub no_record: bool,
    /// Tool gateways (`fathom gateway serve`) that make the web requests,
    /// comma-separated: each episode sticks to one, and a request goes to the
    /// next when one dies. Exchanges are still recorded in this log.
    #[arg(long, env = "FATHOM_GATEWAYS", value_delimiter = ',')]
    pub gateways: Vec<String>,
    /// The gateways' token.
    #[arg(long, env = "FATHOM_GATEWAY_TOKEN", hide_env_values = true)]
    pub gateway_token: Option<String>,
    /// Set by commands whose questions are generated from the sandbox's
    /// seed and size: a running sandbox must then serve that world even
    /// when neither was given.
    #[arg(skip)]
    pub questions_from_world: bool,
}

pub fn run(data: &Path, cmd: WebCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(data, cmd))
}

/// Keeps an in-process sandbox alive for the command's duration.
pub(crate) struct Web {
    pub(crate) config: GatewayConfig,
    _sandbox: Option<Sandbox>,
}

impl WebArgs {
    /// The size of an in-process sandbox.
    pub fn entities(&self) -> usize {
        self.sandbox_entities.unwrap_or(DEFAULT_ENTITIES)
    }

    /// The seed of an in-process sandbox.
    pub fn seed(&self) -> u64 {
        self.sandbox_seed.unwrap_or(1)
    }

    /// Why the running sandbox `about` describes is not the one this
    /// command needs, if it is not.
    fn wrong_world(&self, about: &fathom_replay::gateway::SandboxAbout) -> Option<String> {
        let want_seed = self.sandbox_seed.or(self.questions_from_world.then(|| self.seed()));
        let want_entities = self
            .sandbox_entities
            .or(self.questions_from_world.then(|| self.entities()))
            .map(|n| n as u64);
        let seed_differs = want_seed.is_some_and(|w| about.seed != Some(w));
        let size_differs = want_entities.is_some_and(|w| about.entities != Some(w));
        (seed_differs || size_differs).then(|| {
            let show = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
            format!(
                "the sandbox already running at {} serves another world (seed {}, {} entities) than this command needs (seed {}, {} entities), so every answer would be wrong. Stop it, start one with 'fathom sandbox serve --seed {} --entities {}', or pass --sandbox 127.0.0.1:0 to start one of its own",
                self.sandbox,
                show(about.seed),
                show(about.entities),
                self.seed(),
                self.entities(),
                self.seed(),
                self.entities()
            )
        })
    }
}

pub(crate) async fn connect(args: &WebArgs) -> anyhow::Result<Web> {
    let mut web = connect_web(args).await?;
    if !args.gateways.is_empty() {
        let remotes =
            fathom_replay::remote::Remotes::new(&args.gateways, args.gateway_token.clone(), Arc::new(SystemClock))
                .map_err(|e| anyhow::anyhow!("--gateways: {e}"))?;
        web.config.remote = Some(Arc::new(remotes));
    }
    Ok(web)
}

async fn connect_web(args: &WebArgs) -> anyhow::Result<Web> {
    if let Some(url) = &args.search_url {
        let mut config = GatewayConfig::new(SearchBackend::Serper {
            url: url.clone(),
            key: args.search_key.clone(),
        });
        allow_endpoint(&mut config, url);
        return Ok(Web { config, _sandbox: None });
    }
    if let Some(url) = &args.searxng_url {
        let mut config = GatewayConfig::new(SearchBackend::Searxng { url: url.clone() });
        allow_endpoint(&mut config, url);
        return Ok(Web { config, _sandbox: None });
    }
    // The sandbox: a running one at the address, or a new one in-process.
    if let Ok(about) = fathom_replay::gateway::sandbox_about(args.sandbox).await {
        if let Some(why) = args.wrong_world(&about) {
            anyhow::bail!(why);
        }
        let config = GatewayConfig::sandbox(format!("http://{}/search", args.sandbox), about.addresses);
        return Ok(Web { config, _sandbox: None });
    }
    let web = Arc::new(SandboxWeb::generate(args.seed(), args.entities()).context("building the sandbox web")?);
    let sandbox = Sandbox::start(
        web,
        ServeConfig {
            host: args.sandbox.ip(),
            search_port: args.sandbox.port(),
            faults: fathom_sandbox::faults::FaultSpec::parse(&args.sandbox_faults)?,
            fault_seed: args.seed(),
        },
    )
    .await
    .with_context(|| {
        format!(
            "cannot start the sandbox on {} (its sites use the next five ports); pass --sandbox with a free address",
            args.sandbox
        )
    })?;
    let addrs = sandbox.addresses();
    Ok(Web {
        config: GatewayConfig::sandbox(sandbox.search_url(), addrs),
        _sandbox: Some(sandbox),
    })
}

/// A search endpoint the user named explicitly may be on an internal
/// address (a SearXNG on loopback); allow exactly that address.
fn allow_endpoint(config: &mut GatewayConfig, url: &str) {
    if let Ok(u) = url::Url::parse(url)
        && let Some(port) = u.port_or_known_default()
        && let Some(host) = u.host_str()
        && let Ok(ip) = host.trim_matches(['[', ']']).parse::<std::net::IpAddr>()
    {
        config.policy.allowed.push(SocketAddr::new(ip, port));
    }
}

async fn run_async(data: &Path, cmd: WebCommand) -> anyhow::Result<ExitCode> {
    let args = match &cmd {
        WebCommand::Search { web, .. } | WebCommand::Fetch { web, .. } => web,
    };
    let web = connect(args).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (gateway, store, run) = if args.no_record {
        (Gateway::live(web.config, clock.clone())?, None, fathom_core::RunId(0))
    } else {
        let store = Arc::new(crate::open_store(data, Options::default())?);
        let run = store.new_run_id()?;
        let name = match &cmd {
            WebCommand::Search { .. } => "web search",
            WebCommand::Fetch { .. } => "web fetch",
        };
        store.append(&[Event::new(
            run,
            clock.now(),
            RunStarted {
                name: name.into(),
                run_kind: RunKind::Manual,
                config_json: serde_json::json!({
                    "search": format!("{:?}", web.config.search),
                    "sandbox_seed": args.seed(), "sandbox_entities": args.entities(),
                    "sandbox_faults": args.sandbox_faults,
                })
                .to_string(),
                seed: args.seed(),
                policy: String::new(),
                model: String::new(),
                code_version: concat!("fathom ", env!("CARGO_PKG_VERSION")).into(),
                attempt: 0,
            },
        )])?;
        (
            Gateway::record(web.config, store.clone(), clock.clone())?,
            Some(store),
            run,
        )
    };
    let ctx = Context {
        run,
        episode: None,
        turn: None,
    };
    let (code, message) = match cmd {
        WebCommand::Search { queries, .. } => {
            if queries.len() > fathom_core::protocol::MAX_SEARCH_QUERIES {
                eprintln!(
                    "note: only the first {} queries run, as in the agent's web_search tool",
                    fathom_core::protocol::MAX_SEARCH_QUERIES
                );
            }
            let results = gateway.search(ctx, &queries).await;
            println!("{}", fathom_replay::render::search_results(&results));
            let failed = results.iter().filter(|(_, r)| r.is_err()).count();
            (
                if failed == results.len() {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                },
                format!("{} queries, {failed} failed", results.len()),
            )
        }
        WebCommand::Fetch { url, segments, .. } => match gateway.fetch(ctx, &url).await {
            Ok(page) => {
                if segments {
                    let segs = fathom_replay::html::segment(&page.text, fathom_replay::html::SEGMENT_CHARS);
                    for (i, s) in segs.iter().enumerate() {
                        println!(
                            "=== segment {} of {} ({} characters) ===\n{s}",
                            i + 1,
                            segs.len(),
                            s.chars().count()
                        );
                    }
                } else {
                    println!("{}", page.text);
                }
                if page.truncated {
                    eprintln!("note: the body was cut at the gateway's size cap");
                }
                (ExitCode::SUCCESS, format!("HTTP {}", page.status))
            }
            Err(e) => {
                eprintln!("error: fetching {url} failed: {e}");
                (ExitCode::FAILURE, e.to_string())
            }
        },
    };
    if let Some(store) = store {
        store.append(&[Event::new(
            run,
            clock.now(),
            RunFinished {
                status: if code == ExitCode::SUCCESS {
                    RunStatus::Completed
                } else {
                    RunStatus::Failed
                },
                steps_completed: 1,
                message,
            },
        )])?;
        eprintln!("recorded as run {run} in {}", data.display());
    }
    Ok(code)
}
