//! `fathom score`: the DeepResearcher reward and evaluation scores for a
//! file of responses.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use fathom_core::protocol::{self, Protocol};
use fathom_core::reward::{self, Score};

/// Arguments of `fathom score`.
#[derive(Debug, clap::Args)]
pub struct ScoreArgs {
    /// JSON lines of {"response": "...", "ground_truth": "a<|answer_split|>b" or ["a", "b"]}; `-` reads stdin.
    pub file: PathBuf,
    /// Output: an aligned table, or one JSON object per line.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// The turn rules: 2 (DeepResearcher's: every model turn begins with
    /// the `<think>` its prompt ended with and must close it, and the reward
    /// is its own `compute_score` over the model's turns) or 1 (fathom's
    /// first rules, for logs recorded under them).
    #[arg(long, default_value_t = 2)]
    pub protocol: u32,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(serde::Deserialize)]
struct Line {
    response: String,
    ground_truth: Truths,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Truths {
    Joined(String),
    List(Vec<String>),
}

pub fn run(args: ScoreArgs) -> anyhow::Result<ExitCode> {
    let rules = Protocol::try_from(args.protocol).map_err(|e| anyhow::anyhow!("--protocol: {e}"))?;
    let reader: Box<dyn BufRead> = if args.file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(&args.file).with_context(|| format!("cannot open {}", args.file.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut scores: Vec<Score> = Vec::new();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if matches!(args.format, Format::Table) {
        writeln!(
            out,
            "{:>6}  {:<6} {:>7} {:>6} {:>4}  answer / problem",
            "line", "format", "reward", "f1", "em"
        )?;
    }
    for (i, line) in reader.lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("{}: cannot read line {n}", args.file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line = serde_json::from_str(&line).with_context(|| {
            format!(
                "{} line {n} is not {{\"response\": string, \"ground_truth\": string or list of strings}}",
                args.file.display()
            )
        })?;
        let truths = match parsed.ground_truth {
            Truths::Joined(s) => reward::split_ground_truths(&s),
            Truths::List(v) => v.into_iter().filter(|s| !s.trim().is_empty()).collect(),
        };
        if truths.is_empty() {
            anyhow::bail!("{} line {n} has no ground truth to score against", args.file.display());
        }
        let s = reward::score_episode(rules, &protocol::model_turns(&parsed.response), &truths);
        match args.format {
            Format::Json => {
                let obj = serde_json::json!({
                    "line": n, "format_ok": s.format_ok, "reward": s.reward, "f1": s.f1, "em": s.em,
                    "answer": s.answer, "format_error": s.format_error,
                });
                writeln!(out, "{obj}")?;
            }
            Format::Table => {
                let note = match (&s.format_error, &s.answer) {
                    (Some(e), _) => e.clone(),
                    (None, Some(a)) => a.clone(),
                    (None, None) => String::new(),
                };
                writeln!(
                    out,
                    "{n:>6}  {:<6} {:>7.3} {:>6.3} {:>4}  {}",
                    if s.format_ok { "ok" } else { "FAIL" },
                    s.reward,
                    s.f1,
                    s.em,
                    note.chars().take(60).collect::<String>()
                )?;
            }
        }
        scores.push(s);
    }
    if scores.is_empty() {
        anyhow::bail!("{} holds no responses to score", args.file.display());
    }
    let n = scores.len() as f64;
    let mean = |f: &dyn Fn(&Score) -> f64| scores.iter().map(f).sum::<f64>() / n;
    let (fmt_ok, rew, f1, em) = (
        mean(&|s| if s.format_ok { 1.0 } else { 0.0 }),
        mean(&|s| s.reward),
        mean(&|s| s.eval_f1()),
        mean(&|s| s.em),
    );
    match args.format {
        Format::Json => writeln!(
            out,
            "{}",
            serde_json::json!({"means": {"n": scores.len(), "format_ok": fmt_ok, "reward": rew, "f1": f1, "em": em}})
        )?,
        Format::Table => writeln!(
            out,
            "\nmean over {} responses: reward {rew:.4}, F1 {f1:.4}, EM {em:.4}, well-formed {:.1}% (F1 and EM count a format failure as 0)",
            scores.len(),
            fmt_ok * 100.0
        )?,
    }
    Ok(ExitCode::SUCCESS)
}
