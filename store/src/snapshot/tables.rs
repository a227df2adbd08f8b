//! The snapshot tables: their columns (with the documentation that
//! `docs/TABLES.md` is generated from) and the projector that turns events
//! into rows.
//!
//! Every table row comes from exactly one event, its *key event*, whose
//! sequence number is the row's `seq` column (unique within the table):
//!
//! | table          | key event                                   |
//! |----------------|---------------------------------------------|
//! | `runs`         | `run_started` (updated by `run_finished`)   |
//! | `questions`    | `question_sampled`                          |
//! | `episodes`     | `episode_finished`                          |
//! | `turns`        | `turn_generated` (assistant), `tool_result` (tool) |
//! | `tool_calls`   | `tool_called`                               |
//! | `web_requests` | `web_exchange`                              |
//! | `segments`     | `page_segment_read`                         |
//! | `behaviours`   | `behaviour_tagged`                          |
//! | `updates`      | `gradient_update`                           |
//! | `checkpoints`  | `checkpoint_saved`                          |
//! | `evals`        | `eval_result`                               |
//! | `events`       | every event                                 |
//!
//! Rows that need facts from earlier events (an episode row needs its
//! question and start; a tool call its result) are completed from the
//! projector's [`Carry`], which the manifest stores at every snapshot so the
//! next one (and the query layer's live tail) continues where it stopped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use fathom_core::{EventKind, Payload, Record, RunId};
use serde::{Deserialize, Serialize};

/// How a column reads its value from a row.
enum Get<R> {
    I64(fn(&R) -> Option<i64>),
    U64(fn(&R) -> Option<u64>),
    F64(fn(&R) -> Option<f64>),
    Bool(fn(&R) -> Option<bool>),
    Str(for<'a> fn(&'a R) -> Option<&'a str>),
    /// Nanoseconds since the epoch, stored as microseconds (UTC).
    Ts(fn(&R) -> Option<i64>),
    StrList(for<'a> fn(&'a R) -> Option<&'a [String]>),
    /// An id, written as the CLI prints it (`r-3`, `e-17`).
    Id(&'static str, fn(&R) -> Option<u64>),
}

/// One column of a table.
struct Column<R> {
    name: &'static str,
    nullable: bool,
    doc: &'static str,
    get: Get<R>,
}

fn req<R>(name: &'static str, get: Get<R>, doc: &'static str) -> Column<R> {
    Column {
        name,
        nullable: false,
        doc,
        get,
    }
}

fn opt<R>(name: &'static str, get: Get<R>, doc: &'static str) -> Column<R> {
    Column {
        name,
        nullable: true,
        doc,
        get,
    }
}

fn utc() -> Option<Arc<str>> {
    Some("UTC".into())
}

impl<R> Column<R> {
    fn data_type(&self) -> DataType {
        match self.get {
            Get::I64(_) => DataType::Int64,
            Get::U64(_) => DataType::UInt64,
            Get::F64(_) => DataType::Float64,
            Get::Bool(_) => DataType::Boolean,
            Get::Str(_) | Get::Id(..) => DataType::Utf8,
            Get::Ts(_) => DataType::Timestamp(TimeUnit::Microsecond, utc()),
            Get::StrList(_) => DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        }
    }

    fn sql_type(&self) -> &'static str {
        match self.get {
            Get::I64(_) => "BIGINT",
            Get::U64(_) => "BIGINT UNSIGNED",
            Get::F64(_) => "DOUBLE",
            Get::Bool(_) => "BOOLEAN",
            Get::Str(_) | Get::Id(..) => "VARCHAR",
            Get::Ts(_) => "TIMESTAMP (µs, UTC)",
            Get::StrList(_) => "VARCHAR[]",
        }
    }

    fn build(&self, rows: &[R]) -> ArrayRef {
        match &self.get {
            Get::I64(f) => Arc::new(rows.iter().map(f).collect::<Int64Array>()),
            Get::U64(f) => Arc::new(rows.iter().map(f).collect::<UInt64Array>()),
            Get::F64(f) => Arc::new(rows.iter().map(f).collect::<Float64Array>()),
            Get::Bool(f) => Arc::new(rows.iter().map(f).collect::<BooleanArray>()),
            Get::Str(f) => Arc::new(rows.iter().map(f).collect::<StringArray>()),
            Get::Ts(f) => Arc::new(
                rows.iter()
                    .map(|r| f(r).map(|ns| ns.div_euclid(1000)))
                    .collect::<TimestampMicrosecondArray>()
                    .with_timezone("UTC"),
            ),
            Get::Id(prefix, f) => {
                let mut b = StringBuilder::with_capacity(rows.len(), rows.len() * 8);
                let mut text = String::new();
                for r in rows {
                    match f(r) {
                        Some(n) => {
                            use std::fmt::Write as _;
                            text.clear();
                            let _ = write!(text, "{prefix}-{n}");
                            b.append_value(&text);
                        }
                        None => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            Get::StrList(f) => {
                let mut b = ListBuilder::new(StringBuilder::new());
                for r in rows {
                    match f(r) {
                        Some(items) => {
                            for s in items {
                                b.values().append_value(s);
                            }
                            b.append(true);
                        }
                        None => b.append(false),
                    }
                }
                Arc::new(b.finish())
            }
        }
    }
}

/// A table's definition: name, purpose, key event, columns, sort order.
struct Def<R> {
    name: &'static str,
    doc: &'static str,
    key: &'static [EventKind],
    sort: &'static [&'static str],
    columns: Vec<Column<R>>,
}

impl<R> Def<R> {
    fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(c.name, c.data_type(), c.nullable))
                .collect::<Vec<_>>(),
        ))
    }

    fn info(&self) -> TableInfo {
        TableInfo {
            name: self.name,
            doc: self.doc,
            key: self.key,
            sort: self.sort,
            schema: self.schema(),
            columns: self
                .columns
                .iter()
                .map(|c| ColumnInfo {
                    name: c.name,
                    sql_type: c.sql_type(),
                    nullable: c.nullable,
                    doc: c.doc,
                })
                .collect(),
        }
    }

    fn batch(&self, rows: &[R]) -> RecordBatch {
        let arrays = self.columns.iter().map(|c| c.build(rows)).collect();
        RecordBatch::try_new(self.schema(), arrays).expect("columns match their schema by construction")
    }
}

/// A column, as documented.
#[derive(Debug, Clone)]
pub struct ColumnInfo {
    /// Column name.
    pub name: &'static str,
    /// Its SQL type.
    pub sql_type: &'static str,
    /// Whether it can be NULL.
    pub nullable: bool,
    /// What it holds.
    pub doc: &'static str,
}

/// A table, as documented and as registered for SQL.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// Table name (also its directory under `snapshots/`).
    pub name: &'static str,
    /// What a row is.
    pub doc: &'static str,
    /// The event kinds whose events make its rows.
    pub key: &'static [EventKind],
    /// Sort order of rows within each file.
    pub sort: &'static [&'static str],
    /// The Arrow schema.
    pub schema: SchemaRef,
    /// The columns, documented.
    pub columns: Vec<ColumnInfo>,
}

fn ms(ns: u64) -> Option<f64> {
    Some(ns as f64 / 1e6)
}

fn i(v: impl Into<i64>) -> Option<i64> {
    Some(v.into())
}

fn u(v: u64) -> Option<i64> {
    i64::try_from(v).ok()
}

// ---------------------------------------------------------------------------
// Rows

/// A row of `runs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRow {
    seq: u64,
    run: RunId,
    name: String,
    kind: String,
    started_at: i64,
    finished_at: Option<i64>,
    status: String,
    steps_completed: Option<u64>,
    message: Option<String>,
    config_json: String,
    seed: u64,
    policy: String,
    model: String,
    code_version: String,
    attempt: u32,
    last_step: Option<u64>,
    episodes: u64,
}

#[derive(Debug, Clone)]
struct QuestionRow {
    seq: u64,
    run: RunId,
    ts: i64,
    step: u64,
    question_id: String,
    data_source: String,
    question: String,
    ground_truth: Vec<String>,
    hops: Option<u32>,
    data_cursor: u64,
}

#[derive(Debug, Clone)]
struct EpisodeRow {
    seq: u64,
    run: RunId,
    episode: u64,
    step: Option<u64>,
    group_id: Option<u32>,
    group_index: Option<u32>,
    question_id: Option<String>,
    data_source: Option<String>,
    hops: Option<u32>,
    question: Option<String>,
    ground_truth: Option<Vec<String>>,
    answer: Option<String>,
    reward: f64,
    f1: f64,
    em: f64,
    format_ok: bool,
    format_error: Option<String>,
    n_turns: u32,
    n_tool_calls: u32,
    n_searches: u32,
    n_browses: u32,
    n_tokens: u64,
    n_prompt_tokens: Option<u32>,
    ended_by: &'static str,
    policy_version: Option<u64>,
    seed: Option<u64>,
    replay_of: Option<u64>,
    started_at: Option<i64>,
    finished_at: i64,
    duration_ns: u64,
}

#[derive(Debug, Clone)]
struct TurnRow {
    seq: u64,
    run: RunId,
    episode: u64,
    step: Option<u64>,
    turn: u32,
    role: &'static str,
    text: String,
    n_tokens: u32,
    n_context_tokens: Option<u32>,
    latency_ns: Option<u64>,
    finish: Option<&'static str>,
    tool: Option<String>,
    truncated: Option<bool>,
    ts: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ToolCallRow {
    seq: u64,
    run: RunId,
    episode: u64,
    step: Option<u64>,
    turn: u32,
    tool: String,
    arguments_json: String,
    n_results: Option<u32>,
    ok: Option<bool>,
    error: Option<String>,
    truncated: Option<bool>,
    ts: i64,
}

#[derive(Debug, Clone)]
struct WebRow {
    seq: u64,
    run: RunId,
    episode: Option<u64>,
    step: Option<u64>,
    turn: Option<u32>,
    request_id: u64,
    kind: &'static str,
    target: String,
    canonical: String,
    backend: String,
    status: u16,
    bytes: Option<u64>,
    body_hash: Option<String>,
    truncated: bool,
    latency_ns: u64,
    source: &'static str,
    attempt: u32,
    error: Option<String>,
    ts: i64,
}

#[derive(Debug, Clone)]
struct SegmentRow {
    seq: u64,
    run: RunId,
    episode: u64,
    step: Option<u64>,
    turn: u32,
    request_id: u64,
    url: String,
    segment: u32,
    n_segments: u32,
    notes: String,
    read_next: bool,
    n_tokens: u32,
    ts: i64,
}

#[derive(Debug, Clone)]
struct BehaviourRow {
    seq: u64,
    run: RunId,
    episode: u64,
    step: Option<u64>,
    kind: &'static str,
    turn: u32,
    span_start: u32,
    span_end: u32,
    evidence: String,
    detector_version: u32,
    ts: i64,
}

#[derive(Debug, Clone)]
struct UpdateRow {
    seq: u64,
    run: RunId,
    ts: i64,
    u: fathom_core::event::GradientUpdate,
}

#[derive(Debug, Clone)]
struct CheckpointRow {
    seq: u64,
    run: RunId,
    ts: i64,
    c: fathom_core::event::CheckpointSaved,
}

#[derive(Debug, Clone)]
struct EvalRow {
    seq: u64,
    run: RunId,
    ts: i64,
    e: fathom_core::event::EvalResult,
}

#[derive(Debug, Clone)]
struct EventRow {
    seq: u64,
    run: RunId,
    ts: i64,
    kind: &'static str,
    episode: Option<u64>,
    payload_json: String,
}

// Column definitions. Each table lists its columns once; the schema, the
// Arrow arrays and the documentation all come from the list.

fn runs_def() -> Def<RunRow> {
    Def {
        name: "runs",
        doc: "One row per run: what it was, how it was configured and how it ended (status `running` until a `run_finished` event). Rewritten in full at every snapshot.",
        key: &[EventKind::RunStarted],
        sort: &["run_id"],
        columns: vec![
            req("run_id", Get::Id("r", |r| Some(r.run.0)), "The run (`r-3`)."),
            req("name", Get::Str(|r| Some(r.name.as_str())), "Human name of the run."),
            req(
                "kind",
                Get::Str(|r| Some(r.kind.as_str())),
                "`train`, `sft`, `eval`, `replay`, `load` or `manual`.",
            ),
            req(
                "status",
                Get::Str(|r| Some(r.status.as_str())),
                "`running`, `completed`, `failed` or `interrupted`.",
            ),
            req("started_at", Get::Ts(|r| Some(r.started_at)), "When the run started."),
            opt(
                "finished_at",
                Get::Ts(|r| r.finished_at),
                "When it finished; NULL while running.",
            ),
            opt(
                "steps_completed",
                Get::I64(|r| r.steps_completed.and_then(u)),
                "Steps completed, from `run_finished`.",
            ),
            opt(
                "last_step",
                Get::I64(|r| r.last_step.and_then(u)),
                "Highest step with a finished episode or an update.",
            ),
            req(
                "episodes",
                Get::I64(|r| u(r.episodes)),
                "Finished episodes recorded so far.",
            ),
            opt(
                "message",
                Get::Str(|r| r.message.as_deref()),
                "Closing message (error text for failed runs).",
            ),
            req(
                "config_json",
                Get::Str(|r| Some(r.config_json.as_str())),
                "The full configuration, as JSON.",
            ),
            req("seed", Get::U64(|r| Some(r.seed)), "The run's root seed."),
            req(
                "policy",
                Get::Str(|r| Some(r.policy.as_str())),
                "Policy spec (`scripted`, `candle:DIR`, `openai:URL`).",
            ),
            req(
                "model",
                Get::Str(|r| Some(r.model.as_str())),
                "Model identity, empty for the scripted policy.",
            ),
            req(
                "code_version",
                Get::Str(|r| Some(r.code_version.as_str())),
                "fathom version that wrote the run.",
            ),
            req(
                "attempt",
                Get::I64(|r| i(r.attempt)),
                "0 for a fresh run, n for its n-th resume.",
            ),
            req(
                "seq",
                Get::I64(|r| u(r.seq)),
                "Sequence number of the `run_started` event.",
            ),
        ],
    }
}

fn questions_def() -> Def<QuestionRow> {
    Def {
        name: "questions",
        doc: "One row per question sampled into a run (a training step's batch, or an evaluation's question set).",
        key: &[EventKind::QuestionSampled],
        sort: &["run_id", "step", "seq"],
        columns: vec![
            req("run_id", Get::Id("r", |r| Some(r.run.0)), "The run."),
            req("step", Get::I64(|r| u(r.step)), "Training step (0 for evaluations)."),
            req(
                "question_id",
                Get::Str(|r| Some(r.question_id.as_str())),
                "The data set's question id.",
            ),
            req(
                "data_source",
                Get::Str(|r| Some(r.data_source.as_str())),
                "Data source (`nq`, `hotpotqa`, `sandbox`…).",
            ),
            opt(
                "hops",
                Get::I64(|r| r.hops.map(i64::from)),
                "Reasoning hops, when the data set says.",
            ),
            req(
                "question",
                Get::Str(|r| Some(r.question.as_str())),
                "The question text.",
            ),
            req(
                "ground_truth",
                Get::StrList(|r| Some(r.ground_truth.as_slice())),
                "Accepted answers.",
            ),
            req(
                "data_cursor",
                Get::I64(|r| u(r.data_cursor)),
                "Position in the run's data order.",
            ),
            req("ts", Get::Ts(|r| Some(r.ts)), "When it was sampled."),
            req("seq", Get::I64(|r| u(r.seq)), "Sequence number of the event."),
        ],
    }
}

fn episodes_def() -> Def<EpisodeRow> {
    Def {
        name: "episodes",
        doc: "One row per finished episode: the question, the answer, the score and the counts. Aborted episodes (a run stopped mid-episode) have `ended_by = 'aborted'` and belong in no metric.",
        key: &[EventKind::EpisodeFinished],
        sort: &["run_id", "step", "seq"],
        columns: vec![
            req("run_id", Get::Id("r", |r| Some(r.run.0)), "The run."),
            req("episode_id", Get::Id("e", |r| Some(r.episode)), "The episode (`e-17`)."),
            opt(
                "step",
                Get::I64(|r| r.step.and_then(u)),
                "Training step (0 for evaluations).",
            ),
            opt(
                "group_id",
                Get::I64(|r| r.group_id.map(i64::from)),
                "GRPO group within the step (one question).",
            ),
            opt(
                "group_index",
                Get::I64(|r| r.group_index.map(i64::from)),
                "Index of the rollout within its group.",
            ),
            opt(
                "question_id",
                Get::Str(|r| r.question_id.as_deref()),
                "The data set's question id.",
            ),
            opt(
                "data_source",
                Get::Str(|r| r.data_source.as_deref()),
                "Data source of the question.",
            ),
            opt(
                "hops",
                Get::I64(|r| r.hops.map(i64::from)),
                "Reasoning hops, when known.",
            ),
            opt("question", Get::Str(|r| r.question.as_deref()), "The question text."),
            opt(
                "answer",
                Get::Str(|r| r.answer.as_deref()),
                "The final answer, NULL when none was given.",
            ),
            opt(
                "ground_truth",
                Get::StrList(|r| r.ground_truth.as_deref()),
                "Accepted answers.",
            ),
            req(
                "reward",
                Get::F64(|r| Some(r.reward)),
                "Training reward: F1, or −1 on a format failure (0 in evaluations).",
            ),
            req(
                "f1",
                Get::F64(|r| Some(r.f1)),
                "Word-level F1 against the best ground truth.",
            ),
            req(
                "em",
                Get::F64(|r| Some(r.em)),
                "Exact match after normalisation, 0 or 1.",
            ),
            req(
                "format_ok",
                Get::Bool(|r| Some(r.format_ok)),
                "Every turn well formed and an answer given.",
            ),
            opt(
                "format_error",
                Get::Str(|r| r.format_error.as_deref()),
                "What was malformed.",
            ),
            req("n_turns", Get::I64(|r| i(r.n_turns)), "Assistant turns."),
            req(
                "n_tool_calls",
                Get::I64(|r| i(r.n_tool_calls)),
                "Tool calls of any kind.",
            ),
            req("n_searches", Get::I64(|r| i(r.n_searches)), "`web_search` calls."),
            req("n_browses", Get::I64(|r| i(r.n_browses)), "`browse_webpage` calls."),
            req("n_tokens", Get::I64(|r| u(r.n_tokens)), "Tokens the policy generated."),
            opt(
                "n_prompt_tokens",
                Get::I64(|r| r.n_prompt_tokens.map(i64::from)),
                "Tokens of the initial prompt.",
            ),
            req(
                "ended_by",
                Get::Str(|r| Some(r.ended_by)),
                "`answer`, `turn_limit`, `format_error`, `truncated`, `aborted` or `error`.",
            ),
            opt(
                "policy_version",
                Get::I64(|r| r.policy_version.and_then(u)),
                "Policy version (optimizer steps) that generated it.",
            ),
            opt("seed", Get::U64(|r| r.seed), "The episode's sampling seed."),
            opt(
                "replay_of",
                Get::Id("e", |r| r.replay_of),
                "The episode this one re-runs, for replays and counterfactuals.",
            ),
            opt("started_at", Get::Ts(|r| r.started_at), "When it started."),
            req("finished_at", Get::Ts(|r| Some(r.finished_at)), "When it finished."),
            req(
                "duration_ms",
                Get::F64(|r| ms(r.duration_ns)),
                "Wall time in milliseconds.",
            ),
            req(
                "seq",
                Get::I64(|r| u(r.seq)),
                "Sequence number of the `episode_finished` event.",
            ),
        ],
    }
}

fn turns_def() -> Def<TurnRow> {
    Def {
        name: "turns",
        doc: "The conversation of every episode, one row per message after the prompt: the policy's turns (`role = 'assistant'`) and the tool responses it saw (`role = 'tool'`).",
        key: &[EventKind::TurnGenerated, EventKind::ToolResult],
        sort: &["run_id", "step", "seq"],
        columns: vec![
            req("run_id", Get::Id("r", |r| Some(r.run.0)), "The run."),
            req("episode_id", Get::Id("e", |r| Some(r.episode)), "The episode."),
            opt(
                "step",
                Get::I64(|r| r.step.and_then(u)),
                "Training step of the episode.",
            ),
            req(
                "turn",
                Get::I64(|r| i(r.turn)),
                "Turn index from 0; a tool response shares the index of the turn that called it.",
            ),
            req("role", Get::Str(|r| Some(r.role)), "`assistant` or `tool`."),
            req(
                "text",
                Get::Str(|r| Some(r.text.as_str())),
                "Exactly the text generated, or exactly the tool response the policy saw.",
            ),
            req("n_tokens", Get::I64(|r| i(r.n_tokens)), "Tokens of `text`."),
            opt(
                "n_context_tokens",
                Get::I64(|r| r.n_context_tokens.map(i64::from)),
                "Context length before an assistant turn.",
            ),
            opt(
                "latency_ms",
                Get::F64(|r| r.latency_ns.and_then(ms)),
                "Generation time of an assistant turn.",
            ),
            opt(
                "finish",
                Get::Str(|r| r.finish),
                "Why generation stopped: `stop`, `length` or `error`.",
            ),
            opt("tool", Get::Str(|r| r.tool.as_deref()), "The tool, for tool responses."),
            opt(
                "truncated",
                Get::Bool(|r| r.truncated),
                "Whether a tool response was cut to the cap.",
            ),
            req("ts", Get::Ts(|r| Some(r.ts)), "When it was recorded."),
            req("seq", Get::I64(|r| u(r.seq)), "Sequence number of the event."),
        ],
    }
}

fn tool_calls_def() -> Def<ToolCallRow> {
    Def {
        name: "tool_calls",
        doc: "One row per tool call, with its outcome. A call appears once its result is recorded or its episode ends (a call made with the last turn of the budget is never executed: `ok` is NULL).",
        key: &[EventKind::ToolCalled],
        sort: &["run_id", "step", "seq"],
        columns: vec![
            req("run_id", Get::Id("r", |r| Some(r.run.0)), "The run."),
            req("episode_id", Get::Id("e", |r| Some(r.episode)), "The episode."),
            opt(
                "step",
                Get::I64(|r| r.step.and_then(u)),
                "Training step of the episode.",
            ),
            req("turn", Get::I64(|r| i(r.turn)), "The turn that made the call."),
            req(
                "tool",
                Get::Str(|r| Some(r.tool.as_str())),
                "`web_search` or `browse_webpage`.",
            ),
            req(
                "arguments_json",
                Get::Str(|r| Some(r.arguments_json.as_str())),
                "The call's arguments as JSON (`{\"query\": [...]}`, `{\"url_list\": [...]}`).",
            ),
            opt(
                "n_results",
                Get::I64(|r| r.n_results.map(i64::from)),
                "Search results or pages returned.",
            ),
            opt(
                "ok",
                Get::Bool(|r| r.ok),
                "Whether the tool succeeded; NULL when it never ran.",
            ),
            opt("error", Get::Str(|r| r.error.as_deref()), "What went wrong."),
            opt(
                "truncated",
                Get::Bool(|r| r.truncated),
                "Whether the response was cut to the cap.",
            ),
            req("ts", Get::Ts(|r| Some(r.ts)), "When the call was made."),
            req(
                "seq",
                Get::I64(|r| u(r.seq)),
                "Sequence number of the `tool_called` event.",
            ),
        ],
    }
}

fn web_requests_def() -> Def<WebRow> {
    Def {
        name: "web_requests",
        doc: "One row per web exchange through the gateway: searches and page fetches, live, sandbox or replayed. Bodies stay in the blob store; `body_hash` finds them.",
        key: &[EventKind::WebExchange],
        sort: &["run_id", "step", "seq"],
        columns: vec![
            req("run_id", Get::Id("r", |r| Some(r.run.0)), "The run."),
            opt(
                "episode_id",
                Get::Id("e", |r| r.episode),
                "The episode, NULL for requests outside one (`fathom web`).",
            ),
            opt(
                "step",
                Get::I64(|r| r.step.and_then(u)),
                "Training step of the episode.",
            ),
            opt(
                "turn",
                Get::I64(|r| r.turn.map(i64::from)),
                "The turn whose tool call made it.",
            ),
            req(
                "request_id",
                Get::Id("w", |r| Some(r.request_id)),
                "The request (`w-42`).",
            ),
            req("kind", Get::Str(|r| Some(r.kind)), "`search` or `fetch`."),
            req(
                "url_or_query",
                Get::Str(|r| Some(r.target.as_str())),
                "The URL fetched or the query searched.",
            ),
            req(
                "canonical",
                Get::Str(|r| Some(r.canonical.as_str())),
                "The canonical form replay matches on.",
            ),
            req(
                "backend",
                Get::Str(|r| Some(r.backend.as_str())),
                "Search backend or fetcher.",
            ),
            req(
                "status",
                Get::I64(|r| i(r.status)),
                "HTTP status, 0 when no response arrived.",
            ),
            opt("bytes", Get::I64(|r| r.bytes.and_then(u)), "Body size in bytes."),
            opt(
                "body_hash",
                Get::Str(|r| r.body_hash.as_deref()),
                "BLAKE3 of the body (its blob key).",
            ),
            req(
                "truncated",
                Get::Bool(|r| Some(r.truncated)),
                "Whether the body was cut to the size cap.",
            ),
            req(
                "latency_ms",
                Get::F64(|r| ms(r.latency_ns)),
                "Time to the full response.",
            ),
            req("source", Get::Str(|r| Some(r.source)), "`live`, `sandbox` or `replay`."),
            req(
                "attempt",
                Get::I64(|r| i(r.attempt)),
                "Attempt: 0 when started, one more at each `fathom train --resume`.",
            ),
            opt(
                "error",
                Get::Str(|r| r.error.as_deref()),
                "Transport error, when there was one.",
            ),
            req("ts", Get::Ts(|r| Some(r.ts)), "When it completed."),
            req("seq", Get::I64(|r| u(r.seq)), "Sequence number of the event."),
        ],
    }
}

fn segments_def() -> Def<SegmentRow> {
    Def {
        name: "segments",
        doc: "One row per page segment the browsing agent read, with the notes it took.",
        key: &[EventKind::PageSegmentRead],
        sort: &["run_id", "step", "seq"],
        columns: vec![
            req("run_id", Get::Id("r", |r| Some(r.run.0)), "The run."),
            req("episode_id", Get::Id("e", |r| Some(r.episode)), "The episode."),
            opt(
                "step",
                Get::I64(|r| r.step.and_then(u)),
                "Training step of the episode.",
            ),
            req("turn", Get::I64(|r| i(r.turn)), "The turn whose browse call it serves."),
            req(
                "request_id",
                Get::Id("w", |r| Some(r.request_id)),
                "The fetch that produced the page.",
            ),
            req("url", Get::Str(|r| Some(r.url.as_str())), "The page."),
            req("segment", Get::I64(|r| i(r.segment)), "Segment index, from 0."),
            req("n_segments", Get::I64(|r| i(r.n_segments)), "Segments in the page."),
            req(
                "notes",
                Get::Str(|r| Some(r.notes.as_str())),
                "What the reader extracted.",
            ),
            req(
                "read_next",
                Get::Bool(|r| Some(r.read_next)),
                "Whether it asked for the next segment.",
            ),
            req("n_tokens", Get::I64(|r| i(r.n_tokens)), "Tokens the reader generated."),
            req("ts", Get::Ts(|r| Some(r.ts)), "When it was recorded."),
            req("seq", Get::I64(|r| u(r.seq)), "Sequence number of the event."),
        ],
    }
}

fn behaviours_def() -> Def<BehaviourRow> {
    Def {
        name: "behaviours",
        doc: "One row per emergent behaviour detected in a finished episode, with its evidence.",
        key: &[EventKind::BehaviourTagged],
        sort: &["run_id", "step", "seq"],
        columns: vec![
            req("run_id", Get::Id("r", |r| Some(r.run.0)), "The run."),
            req("episode_id", Get::Id("e", |r| Some(r.episode)), "The episode."),
            opt(
                "step",
                Get::I64(|r| r.step.and_then(u)),
                "Training step of the episode.",
            ),
            req(
                "kind",
                Get::Str(|r| Some(r.kind)),
                "`planning`, `cross_validation`, `self_reflection` or `honesty`.",
            ),
            req("turn", Get::I64(|r| i(r.turn)), "The turn holding the evidence."),
            req(
                "span_start",
                Get::I64(|r| i(r.span_start)),
                "Byte offset where the evidence starts in that turn's text.",
            ),
            req("span_end", Get::I64(|r| i(r.span_end)), "Byte offset where it ends."),
            req(
                "evidence",
                Get::Str(|r| Some(r.evidence.as_str())),
                "The evidence text.",
            ),
            req(
                "detector_version",
                Get::I64(|r| i(r.detector_version)),
                "Version of the detectors.",
            ),
            req("ts", Get::Ts(|r| Some(r.ts)), "When it was recorded."),
            req("seq", Get::I64(|r| u(r.seq)), "Sequence number of the event."),
        ],
    }
}

fn updates_def() -> Def<UpdateRow> {
    Def {
        name: "updates",
        doc: "One row per optimizer step.",
        key: &[EventKind::GradientUpdate],
        sort: &["run_id", "step", "seq"],
        columns: vec![
            req("run_id", Get::Id("r", |r| Some(r.run.0)), "The run."),
            req("step", Get::I64(|r| u(r.u.step)), "Training step."),
            req(
                "policy_version",
                Get::I64(|r| u(r.u.policy_version)),
                "Policy version after the update.",
            ),
            req("loss", Get::F64(|r| Some(r.u.loss)), "Total loss."),
            req(
                "pg_loss",
                Get::F64(|r| Some(r.u.pg_loss)),
                "Clipped-surrogate policy-gradient term.",
            ),
            req(
                "kl",
                Get::F64(|r| Some(r.u.kl)),
                "KL to the reference policy (k3), 0 when disabled.",
            ),
            req("entropy", Get::F64(|r| Some(r.u.entropy)), "Mean token entropy."),
            req(
                "clip_frac",
                Get::F64(|r| Some(r.u.clip_frac)),
                "Fraction of tokens whose ratio was clipped.",
            ),
            req(
                "grad_norm",
                Get::F64(|r| Some(r.u.grad_norm)),
                "Gradient norm before clipping.",
            ),
            req("lr", Get::F64(|r| Some(r.u.lr)), "Learning rate used."),
            req("tokens", Get::I64(|r| u(r.u.tokens)), "Tokens that carried loss."),
            req("episodes", Get::I64(|r| i(r.u.episodes)), "Episodes in the batch."),
            req(
                "micro_batches",
                Get::I64(|r| i(r.u.micro_batches)),
                "Micro-batches accumulated.",
            ),
            req(
                "duration_ms",
                Get::F64(|r| ms(r.u.duration_ns)),
                "Wall time of the update.",
            ),
            req("ts", Get::Ts(|r| Some(r.ts)), "When it finished."),
            req("seq", Get::I64(|r| u(r.seq)), "Sequence number of the event."),
        ],
    }
}

fn checkpoints_def() -> Def<CheckpointRow> {
    Def {
        name: "checkpoints",
        doc: "One row per checkpoint written.",
        key: &[EventKind::CheckpointSaved],
        sort: &["run_id", "step", "seq"],
        columns: vec![
            req("run_id", Get::Id("r", |r| Some(r.run.0)), "The run."),
            req(
                "checkpoint_id",
                Get::Id("c", |r| Some(r.c.checkpoint_id.0)),
                "The checkpoint (`c-4`).",
            ),
            req("step", Get::I64(|r| u(r.c.step)), "Training step it follows."),
            req(
                "policy_version",
                Get::I64(|r| u(r.c.policy_version)),
                "Policy version of the weights.",
            ),
            req(
                "path",
                Get::Str(|r| Some(r.c.path.as_str())),
                "Directory, relative to the data directory.",
            ),
            req(
                "data_cursor",
                Get::I64(|r| u(r.c.data_cursor)),
                "Position in the data order.",
            ),
            req("bytes", Get::I64(|r| u(r.c.bytes)), "Bytes on disk."),
            opt(
                "metric",
                Get::F64(|r| r.c.metric),
                "The retention metric, when there is one.",
            ),
            req("ts", Get::Ts(|r| Some(r.ts)), "When it was written."),
            req("seq", Get::I64(|r| u(r.seq)), "Sequence number of the event."),
        ],
    }
}

fn evals_def() -> Def<EvalRow> {
    Def {
        name: "evals",
        doc: "One row per evaluation figure (a metric of a data source of a benchmark at a step).",
        key: &[EventKind::EvalResult],
        sort: &["run_id", "step", "seq"],
        columns: vec![
            req("run_id", Get::Id("r", |r| Some(r.run.0)), "The run."),
            req("step", Get::I64(|r| u(r.e.step)), "Training step evaluated."),
            req(
                "benchmark",
                Get::Str(|r| Some(r.e.benchmark.as_str())),
                "The question set.",
            ),
            req(
                "data_source",
                Get::Str(|r| Some(r.e.data_source.as_str())),
                "Data source within it, `overall` for all, `N-hop` per hop count.",
            ),
            req(
                "metric",
                Get::Str(|r| Some(r.e.metric.as_str())),
                "`f1`, `em`, `format_ok`, …",
            ),
            req("value", Get::F64(|r| Some(r.e.value)), "The value."),
            req("n", Get::I64(|r| u(r.e.n)), "Questions it averages over."),
            req("ts", Get::Ts(|r| Some(r.ts)), "When it was recorded."),
            req("seq", Get::I64(|r| u(r.seq)), "Sequence number of the event."),
        ],
    }
}

fn events_def() -> Def<EventRow> {
    Def {
        name: "events",
        doc: "Every event of the log, its payload as JSON (the field names of `docs/EVENTS.md`), for whatever the other tables do not cover.",
        key: &[],
        sort: &["seq"],
        columns: vec![
            req("seq", Get::I64(|r| u(r.seq)), "Sequence number, dense from 1."),
            req(
                "run_id",
                Get::Id("r", |r| Some(r.run.0)),
                "The run (`r-0` for the store's own housekeeping).",
            ),
            req("ts", Get::Ts(|r| Some(r.ts)), "When it happened."),
            req(
                "kind",
                Get::Str(|r| Some(r.kind)),
                "The event kind (`turn_generated`, …).",
            ),
            opt(
                "episode_id",
                Get::Id("e", |r| r.episode),
                "The episode, for events inside one.",
            ),
            req(
                "payload_json",
                Get::Str(|r| Some(r.payload_json.as_str())),
                "The payload as JSON.",
            ),
        ],
    }
}

/// Every table, in the order of the documentation.
pub fn all() -> Vec<TableInfo> {
    vec![
        runs_def().info(),
        questions_def().info(),
        episodes_def().info(),
        turns_def().info(),
        tool_calls_def().info(),
        web_requests_def().info(),
        segments_def().info(),
        behaviours_def().info(),
        updates_def().info(),
        checkpoints_def().info(),
        evals_def().info(),
        events_def().info(),
    ]
}

/// The table called `name`.
pub fn info(name: &str) -> Option<TableInfo> {
    all().into_iter().find(|t| t.name == name)
}

// ---------------------------------------------------------------------------
// The projector

/// What an open episode's later rows need from its start.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OpenEpisode {
    episode: u64,
    run: RunId,
    step: u64,
    group_id: u32,
    group_index: u32,
    question_id: String,
    policy_version: u64,
    seed: u64,
    replay_of: Option<u64>,
    n_prompt_tokens: u32,
    started_at: i64,
}

/// What an episode row needs from its question.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct QuestionInfo {
    run: RunId,
    question_id: String,
    step: u64,
    data_source: String,
    question: String,
    ground_truth: Vec<String>,
    hops: Option<u32>,
}

/// The projector's state between snapshots, stored in the manifest.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Carry {
    runs: Vec<RunRow>,
    open_episodes: Vec<OpenEpisode>,
    questions: Vec<QuestionInfo>,
    pending_tool_calls: Vec<ToolCallRow>,
}

impl Carry {
    /// Episodes started but not finished.
    pub fn open_episodes(&self) -> usize {
        self.open_episodes.len()
    }
}

/// Rows built from a range of events, per table.
#[derive(Default)]
struct Rows {
    questions: Vec<QuestionRow>,
    episodes: Vec<EpisodeRow>,
    turns: Vec<TurnRow>,
    tool_calls: Vec<ToolCallRow>,
    web: Vec<WebRow>,
    segments: Vec<SegmentRow>,
    behaviours: Vec<BehaviourRow>,
    updates: Vec<UpdateRow>,
    checkpoints: Vec<CheckpointRow>,
    evals: Vec<EvalRow>,
    events: Vec<EventRow>,
}

/// Turns events, in log order, into table rows.
pub struct Projector {
    runs: BTreeMap<u64, RunRow>,
    open: HashMap<u64, OpenEpisode>,
    questions: HashMap<(u64, String), QuestionInfo>,
    pending: BTreeMap<(u64, u32), ToolCallRow>,
    rows: Rows,
    events_seen: u64,
}

impl Projector {
    /// A projector continuing from `carry`.
    pub fn new(carry: &Carry) -> Projector {
        Projector {
            runs: carry.runs.iter().map(|r| (r.run.0, r.clone())).collect(),
            open: carry.open_episodes.iter().map(|e| (e.episode, e.clone())).collect(),
            questions: carry
                .questions
                .iter()
                .map(|q| ((q.run.0, q.question_id.clone()), q.clone()))
                .collect(),
            pending: carry
                .pending_tool_calls
                .iter()
                .map(|t| ((t.episode, t.turn), t.clone()))
                .collect(),
            rows: Rows::default(),
            events_seen: 0,
        }
    }

    /// Events pushed so far.
    pub fn events_seen(&self) -> u64 {
        self.events_seen
    }

    fn step_of(&self, episode: u64) -> Option<u64> {
        self.open.get(&episode).map(|e| e.step)
    }

    fn bump_step(&mut self, run: RunId, step: Option<u64>) {
        if let (Some(r), Some(s)) = (self.runs.get_mut(&run.0), step) {
            r.last_step = Some(r.last_step.map_or(s, |l| l.max(s)));
        }
    }

    /// Adds one event (events must come in sequence order).
    pub fn push(&mut self, rec: &Record) {
        self.events_seen += 1;
        let seq = rec.seq.0;
        let run = rec.event.run;
        let t = rec.event.ts.0;
        let payload = &rec.event.payload;
        self.rows.events.push(EventRow {
            seq,
            run,
            ts: t,
            kind: payload.kind().name(),
            episode: payload.episode_id().map(|e| e.0),
            payload_json: serde_json::to_string(payload).expect("payloads serialise to JSON"),
        });
        match payload {
            Payload::RunStarted(p) if self.runs.contains_key(&run.0) => {
                // A later attempt of the same run (a resume): the run is
                // running again; what it recorded so far stays.
                let r = self.runs.get_mut(&run.0).expect("checked");
                r.attempt = p.attempt;
                r.status = "running".into();
                r.finished_at = None;
            }
            Payload::RunStarted(p) => {
                self.runs.insert(
                    run.0,
                    RunRow {
                        seq,
                        run,
                        name: p.name.clone(),
                        kind: p.run_kind.as_str().to_string(),
                        started_at: t,
                        finished_at: None,
                        status: "running".into(),
                        steps_completed: None,
                        message: None,
                        config_json: p.config_json.clone(),
                        seed: p.seed,
                        policy: p.policy.clone(),
                        model: p.model.clone(),
                        code_version: p.code_version.clone(),
                        attempt: p.attempt,
                        last_step: None,
                        episodes: 0,
                    },
                );
            }
            Payload::RunFinished(p) => {
                if let Some(r) = self.runs.get_mut(&run.0) {
                    r.finished_at = Some(t);
                    r.status = p.status.as_str().to_string();
                    r.steps_completed = Some(p.steps_completed);
                    r.message = Some(p.message.clone());
                }
            }
            Payload::QuestionSampled(p) => {
                self.questions.insert(
                    (run.0, p.question_id.0.clone()),
                    QuestionInfo {
                        run,
                        question_id: p.question_id.0.clone(),
                        step: p.step,
                        data_source: p.data_source.clone(),
                        question: p.question.clone(),
                        ground_truth: p.ground_truths.clone(),
                        hops: p.hops,
                    },
                );
                self.rows.questions.push(QuestionRow {
                    seq,
                    run,
                    ts: t,
                    step: p.step,
                    question_id: p.question_id.0.clone(),
                    data_source: p.data_source.clone(),
                    question: p.question.clone(),
                    ground_truth: p.ground_truths.clone(),
                    hops: p.hops,
                    data_cursor: p.data_cursor,
                });
            }
            Payload::EpisodeStarted(p) => {
                self.open.insert(
                    p.episode_id.0,
                    OpenEpisode {
                        episode: p.episode_id.0,
                        run,
                        step: p.step,
                        group_id: p.group_id,
                        group_index: p.group_index,
                        question_id: p.question_id.0.clone(),
                        policy_version: p.policy_version,
                        seed: p.seed,
                        replay_of: p.replay_of.map(|e| e.0),
                        n_prompt_tokens: p.n_prompt_tokens,
                        started_at: t,
                    },
                );
            }
            Payload::TurnGenerated(p) => self.rows.turns.push(TurnRow {
                seq,
                run,
                episode: p.episode_id.0,
                step: self.step_of(p.episode_id.0),
                turn: p.turn,
                role: "assistant",
                text: p.text.clone(),
                n_tokens: p.n_tokens,
                n_context_tokens: Some(p.n_context_tokens),
                latency_ns: Some(p.latency_ns),
                finish: Some(p.finish.as_str()),
                tool: None,
                truncated: None,
                ts: t,
            }),
            Payload::ToolCalled(p) => {
                let row = ToolCallRow {
                    seq,
                    run,
                    episode: p.episode_id.0,
                    step: self.step_of(p.episode_id.0),
                    turn: p.turn,
                    tool: p.tool.clone(),
                    arguments_json: p.arguments_json.clone(),
                    n_results: None,
                    ok: None,
                    error: None,
                    truncated: None,
                    ts: t,
                };
                if let Some(earlier) = self.pending.insert((p.episode_id.0, p.turn), row) {
                    // Two calls for one turn never happen in fathom's own
                    // logs; keep both rows rather than lose one.
                    self.rows.tool_calls.push(earlier);
                }
            }
            Payload::WebExchange(p) => {
                let episode = p.episode_id.map(|e| e.0);
                self.rows.web.push(WebRow {
                    seq,
                    run,
                    episode,
                    step: episode.and_then(|e| self.step_of(e)),
                    turn: p.turn,
                    request_id: p.request_id.0,
                    kind: p.request_kind.as_str(),
                    target: p.target.clone(),
                    canonical: p.canonical.clone(),
                    backend: p.backend.clone(),
                    status: p.status,
                    bytes: p.body.map(|b| b.len),
                    body_hash: p.body.map(|b| b.digest.to_hex()),
                    truncated: p.body_truncated,
                    latency_ns: p.latency_ns,
                    source: p.source.as_str(),
                    attempt: p.attempt,
                    error: p.error.clone(),
                    ts: t,
                });
            }
            Payload::PageSegmentRead(p) => self.rows.segments.push(SegmentRow {
                seq,
                run,
                episode: p.episode_id.0,
                step: self.step_of(p.episode_id.0),
                turn: p.turn,
                request_id: p.request_id.0,
                url: p.url.clone(),
                segment: p.segment,
                n_segments: p.n_segments,
                notes: p.notes.clone(),
                read_next: p.read_next,
                n_tokens: p.n_tokens,
                ts: t,
            }),
            Payload::ToolResult(p) => {
                let step = self.step_of(p.episode_id.0);
                self.rows.turns.push(TurnRow {
                    seq,
                    run,
                    episode: p.episode_id.0,
                    step,
                    turn: p.turn,
                    role: "tool",
                    text: p.text.clone(),
                    n_tokens: p.n_tokens,
                    n_context_tokens: None,
                    latency_ns: None,
                    finish: None,
                    tool: Some(p.tool.clone()),
                    truncated: Some(p.truncated),
                    ts: t,
                });
                if let Some(mut call) = self.pending.remove(&(p.episode_id.0, p.turn)) {
                    call.n_results = Some(p.n_results);
                    call.ok = Some(p.ok);
                    call.error = p.error.clone();
                    call.truncated = Some(p.truncated);
                    self.rows.tool_calls.push(call);
                }
            }
            Payload::EpisodeFinished(p) => {
                let e = p.episode_id.0;
                let calls: Vec<(u64, u32)> = self.pending.range((e, 0)..=(e, u32::MAX)).map(|(k, _)| *k).collect();
                for k in calls {
                    if let Some(call) = self.pending.remove(&k) {
                        self.rows.tool_calls.push(call);
                    }
                }
                let open = self.open.remove(&e);
                let question = open
                    .as_ref()
                    .and_then(|o| self.questions.get(&(o.run.0, o.question_id.clone())));
                let step = open.as_ref().map(|o| o.step);
                if p.ended_by != fathom_core::event::EndReason::Aborted
                    && let Some(r) = self.runs.get_mut(&run.0)
                {
                    r.episodes += 1;
                }
                self.rows.episodes.push(EpisodeRow {
                    seq,
                    run,
                    episode: e,
                    step,
                    group_id: open.as_ref().map(|o| o.group_id),
                    group_index: open.as_ref().map(|o| o.group_index),
                    question_id: open.as_ref().map(|o| o.question_id.clone()),
                    data_source: question.map(|q| q.data_source.clone()),
                    hops: question.and_then(|q| q.hops),
                    question: question.map(|q| q.question.clone()),
                    ground_truth: question.map(|q| q.ground_truth.clone()),
                    answer: p.answer.clone(),
                    reward: p.reward,
                    f1: p.f1,
                    em: p.em,
                    format_ok: p.format_ok,
                    format_error: p.format_error.clone(),
                    n_turns: p.n_turns,
                    n_tool_calls: p.n_tool_calls,
                    n_searches: p.n_searches,
                    n_browses: p.n_browses,
                    n_tokens: p.n_tokens,
                    n_prompt_tokens: open.as_ref().map(|o| o.n_prompt_tokens),
                    ended_by: p.ended_by.as_str(),
                    policy_version: open.as_ref().map(|o| o.policy_version),
                    seed: open.as_ref().map(|o| o.seed),
                    replay_of: open.as_ref().and_then(|o| o.replay_of),
                    started_at: open.as_ref().map(|o| o.started_at),
                    finished_at: t,
                    duration_ns: p.duration_ns,
                });
                self.bump_step(run, step);
            }
            Payload::BehaviourTagged(p) => self.rows.behaviours.push(BehaviourRow {
                seq,
                run,
                episode: p.episode_id.0,
                step: self.step_of(p.episode_id.0),
                kind: p.behaviour.as_str(),
                turn: p.turn,
                span_start: p.span_start,
                span_end: p.span_end,
                evidence: p.evidence.clone(),
                detector_version: p.detector_version,
                ts: t,
            }),
            Payload::GradientUpdate(p) => {
                self.bump_step(run, Some(p.step));
                self.rows.updates.push(UpdateRow {
                    seq,
                    run,
                    ts: t,
                    u: p.clone(),
                });
            }
            Payload::CheckpointSaved(p) => self.rows.checkpoints.push(CheckpointRow {
                seq,
                run,
                ts: t,
                c: p.clone(),
            }),
            Payload::EvalResult(p) => self.rows.evals.push(EvalRow {
                seq,
                run,
                ts: t,
                e: p.clone(),
            }),
            Payload::SnapshotCommitted(_) => {}
        }
    }

    /// The state to continue from later. Questions no open episode needs
    /// and no later episode of the run can need (an older step, or a
    /// finished run) are dropped, so the carry stays small.
    pub fn carry(&self) -> Carry {
        let referenced: HashSet<(u64, &str)> = self.open.values().map(|o| (o.run.0, o.question_id.as_str())).collect();
        let mut latest: HashMap<u64, u64> = HashMap::new();
        for q in self.questions.values() {
            let e = latest.entry(q.run.0).or_insert(q.step);
            *e = (*e).max(q.step);
        }
        let mut questions: Vec<QuestionInfo> = self
            .questions
            .values()
            .filter(|q| {
                let finished = self.runs.get(&q.run.0).is_some_and(|r| r.finished_at.is_some());
                referenced.contains(&(q.run.0, q.question_id.as_str()))
                    || (!finished && latest.get(&q.run.0) == Some(&q.step))
            })
            .cloned()
            .collect();
        questions.sort_by(|a, b| (a.run.0, &a.question_id).cmp(&(b.run.0, &b.question_id)));
        let mut open: Vec<OpenEpisode> = self.open.values().cloned().collect();
        open.sort_by_key(|o| o.episode);
        Carry {
            runs: self.runs.values().cloned().collect(),
            open_episodes: open,
            questions,
            pending_tool_calls: self.pending.values().cloned().collect(),
        }
    }

    /// Takes the rows built so far as one record batch per table (tables
    /// with no new rows are left out; `runs` is always complete).
    pub fn take_batches(&mut self) -> Vec<(&'static str, RecordBatch)> {
        let rows = std::mem::take(&mut self.rows);
        let mut out = Vec::new();
        let runs: Vec<RunRow> = self.runs.values().cloned().collect();
        out.push(("runs", runs_def().batch(&runs)));
        fn add<R>(out: &mut Vec<(&'static str, RecordBatch)>, def: Def<R>, rows: &[R]) {
            if !rows.is_empty() {
                out.push((def.name, def.batch(rows)));
            }
        }
        add(&mut out, questions_def(), &rows.questions);
        add(&mut out, episodes_def(), &rows.episodes);
        add(&mut out, turns_def(), &rows.turns);
        add(&mut out, tool_calls_def(), &rows.tool_calls);
        add(&mut out, web_requests_def(), &rows.web);
        add(&mut out, segments_def(), &rows.segments);
        add(&mut out, behaviours_def(), &rows.behaviours);
        add(&mut out, updates_def(), &rows.updates);
        add(&mut out, checkpoints_def(), &rows.checkpoints);
        add(&mut out, evals_def(), &rows.evals);
        add(&mut out, events_def(), &rows.events);
        out
    }

    /// Rows waiting in memory (to bound a window's size).
    pub fn pending_rows(&self) -> usize {
        self.rows.events.len()
    }
}
