//! `fathom serve`: the dashboard (the `web` crate) over the data directory.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use fathom_core::EpisodeId;
use fathom_trainer::replay::Verdict;
use fathom_web::ReplayVerdict;

/// Arguments of `fathom serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Where to listen. Loopback by default; another address exposes every recorded page and
    /// question, so give it a --token.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// A token every request must carry (Authorization: Bearer T, or ?token=T once in the browser).
    #[arg(long, env = "FATHOM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

pub fn run(data: &Path, args: ServeArgs) -> anyhow::Result<ExitCode> {
    if !args.addr.ip().is_loopback() && args.token.is_none() {
        anyhow::bail!(
            "{} is reachable from other machines and would show every recorded page and question to them; add --token (or FATHOM_TOKEN), or listen on 127.0.0.1",
            args.addr
        );
    }
    if args.token.as_deref().is_some_and(|t| t.len() < 12) {
        anyhow::bail!("--token must be at least 12 characters");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .with_context(|| format!("cannot listen on {}; pass --addr with a free port", args.addr))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "fathom dashboard on http://{addr}/{} (Ctrl-C stops)",
            if args.token.is_some() { "?token=…" } else { "" }
        );
        fathom_web::serve(
            listener,
            fathom_web::Config {
                data: data.to_path_buf(),
                token: args.token,
                refresh: std::time::Duration::from_secs(2),
                replay: Some(fathom_web::Replay(Arc::new(LogReplay {
                    data: data.to_path_buf(),
                    one_at_a_time: tokio::sync::Mutex::new(()),
                }))),
            },
        )
        .await
        .context("serving the dashboard")?;
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

/// The dashboard's replay action: `fathom replay --episode … --check` on
/// the data directory, one check at a time. It opens the log for the
/// length of one check or, while another fathom process (a training run)
/// holds it, reads it through that process's read endpoint.
struct LogReplay {
    data: PathBuf,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl fathom_web::ReplayCheck for LogReplay {
    fn check(
        &self,
        episode: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<ReplayVerdict, String>> + Send + '_>> {
        Box::pin(async move {
            let _one = self.one_at_a_time.lock().await;
            let id: EpisodeId = episode
                .parse()
                .map_err(|_| format!("'{episode}' is not an episode id"))?;
            let replayer = crate::replay::replayer_for(&self.data, "cpu", false).map_err(|e| e.to_string())?;
            let verdict = replayer.check(id).await.map_err(|e| e.to_string())?;
            Ok(to_web(&verdict))
        })
    }
}

fn to_web(v: &Verdict) -> ReplayVerdict {
    let summary = format!(
        "{} of {} re-run with {}: {} turn(s), {} sampled token(s), {} recorded web exchange(s); re-run {:.3} s, recorded {:.3} s",
        v.episode,
        v.run,
        if v.policy.is_empty() {
            "its recorded policy"
        } else {
            &v.policy
        },
        v.turns,
        v.tokens,
        v.requests,
        v.replay_ns as f64 / 1e9,
        v.recorded_ns as f64 / 1e9
    );
    let Some(d) = &v.divergence else {
        return ReplayVerdict {
            identical: true,
            summary,
            turn: None,
            cause: None,
            recorded: None,
            produced: None,
            details: Vec::new(),
        };
    };
    let mut details: Vec<String> = d.token_line().into_iter().collect();
    details.extend(
        d.environment
            .iter()
            .map(|e| format!("changed since the recording: {e}")),
    );
    ReplayVerdict {
        identical: false,
        summary,
        turn: d.turn,
        cause: Some(d.cause.to_string()),
        recorded: d.turn.map(|_| d.recorded.clone()),
        produced: d.turn.map(|_| d.produced.clone()),
        details,
    }
}
