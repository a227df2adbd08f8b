//! The pages and their JSON twins. Each page is one function that gathers
//! its data as JSON (served as is under `/api`) and one that renders that
//! JSON as HTML.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::html::{self, Series, esc, link, num, td};
use crate::{AppState, WebError};

/// A result row.
pub(crate) type Row = Map<String, Value>;

/// The highest page number of the episode list (a billion episodes).
const MAX_PAGE: usize = 1_000_000_000 / PAGE_SIZE;

/// Episodes per page of the episode list.
pub const PAGE_SIZE: usize = 50;

fn id(text: &str, prefix: &str, what: &str) -> Result<String, WebError> {
    let ok = text
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|n| !n.is_empty() && n.len() < 20 && n.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(text.to_string())
    } else {
        Err(WebError::BadRequest(format!(
            "'{text}' is not a {what} id (they look like {prefix}-12)"
        )))
    }
}

/// A SQL string literal.
fn lit(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn f(r: &Row, k: &str) -> Option<f64> {
    r.get(k).and_then(Value::as_f64)
}

fn s<'a>(r: &'a Row, k: &str) -> &'a str {
    r.get(k).and_then(Value::as_str).unwrap_or("")
}

fn text_of(r: &Row, k: &str) -> String {
    match r.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}

/// A list column (the ground truths) as text: its items joined by " | ".
fn list_text(r: &Row, k: &str) -> String {
    match r.get(k) {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" | "),
        _ => text_of(r, k),
    }
}

fn series(rows: &[Row], x: &str, y: &str, name: &str) -> Series {
    Series {
        name: name.into(),
        points: rows.iter().filter_map(|r| Some((f(r, x)?, f(r, y)?))).collect(),
        band: Vec::new(),
    }
}

fn html_response(body: String) -> Response {
    Html(body).into_response()
}

// ---------------------------------------------------------------- runs

async fn runs_data(state: &AppState) -> Result<Value, WebError> {
    state.cached("runs".into(), || runs_query(state)).await
}

async fn runs_query(state: &AppState) -> Result<Value, WebError> {
    let runs = state
        .rows(
            "SELECT run_id, name, kind, status, started_at, finished_at, last_step, episodes, policy, attempt \
             FROM runs ORDER BY seq DESC",
        )
        .await?;
    let latest = state
        .rows(
            "SELECT m.run_id, m.step, m.reward_mean, m.f1 FROM step_metrics m JOIN \
             (SELECT run_id, max(step) AS step FROM step_metrics GROUP BY run_id) l \
             ON m.run_id = l.run_id AND m.step = l.step",
        )
        .await?;
    let latest: HashMap<String, Row> = latest.into_iter().map(|r| (s(&r, "run_id").to_string(), r)).collect();
    let runs: Vec<Value> = runs
        .into_iter()
        .map(|mut r| {
            if let Some(l) = latest.get(s(&r, "run_id")) {
                r.insert(
                    "latest_reward".into(),
                    l.get("reward_mean").cloned().unwrap_or(Value::Null),
                );
                r.insert("latest_f1".into(), l.get("f1").cloned().unwrap_or(Value::Null));
            }
            Value::Object(r)
        })
        .collect();
    Ok(json!({ "runs": runs }))
}

pub(crate) async fn runs_api(State(state): State<AppState>) -> Result<Json<Value>, WebError> {
    Ok(Json(runs_data(&state).await?))
}

pub(crate) async fn runs_page(State(state): State<AppState>) -> Result<Response, WebError> {
    let data = runs_data(&state).await?;
    let runs = data["runs"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = runs
        .iter()
        .filter_map(Value::as_object)
        .map(|r| {
            let rid = s(r, "run_id");
            vec![
                link(&format!("/runs/{rid}"), rid),
                td(s(r, "name")),
                td(s(r, "kind")),
                td(s(r, "status")),
                td(&text_of(r, "last_step")),
                td(&text_of(r, "episodes")),
                num(f(r, "latest_reward"), 3),
                num(f(r, "latest_f1"), 3),
                td(s(r, "started_at")),
                td(s(r, "policy")),
            ]
        })
        .collect();
    let mut body = format!("<p class=\"muted\">{} runs.</p>", runs.len());
    body.push_str(&html::table(
        &[
            "run", "name", "kind", "status", "steps", "episodes", "reward", "F1", "started", "policy",
        ],
        &rows,
    ));
    body.push_str(
        "<form method=\"get\" action=\"/compare\"><label>Compare runs (comma-separated ids) \
         <input name=\"runs\" placeholder=\"r-3,r-7\"></label> <button>Compare</button></form>",
    );
    Ok(html_response(html::page("Runs", &body)))
}

// ---------------------------------------------------------------- run

async fn run_data(state: &AppState, rid: &str) -> Result<Value, WebError> {
    state.cached(format!("run {rid}"), || run_query(state, rid)).await
}

async fn run_query(state: &AppState, rid: &str) -> Result<Value, WebError> {
    let q = lit(rid);
    let run = state.rows(&format!("SELECT * FROM runs WHERE run_id = {q}")).await?;
    let Some(run) = run.into_iter().next() else {
        return Err(WebError::NotFound(format!("there is no run {rid}")));
    };
    let steps = state
        .rows(&format!("SELECT * FROM step_metrics WHERE run_id = {q} ORDER BY step"))
        .await?;
    let updates = state
        .rows(&format!(
            "SELECT step, loss, pg_loss, kl, entropy, clip_frac, grad_norm, lr, tokens, duration_ms \
             FROM updates WHERE run_id = {q} ORDER BY step"
        ))
        .await?;
    let behaviours = state
        .rows(&format!(
            "SELECT * FROM behaviour_rates WHERE run_id = {q} ORDER BY step"
        ))
        .await?;
    let by_hops = state
        .rows(&format!(
            "SELECT step, hops, count(*) AS episodes, avg(CAST(n_tool_calls AS DOUBLE)) AS tool_calls, \
             avg(CAST(n_tokens AS DOUBLE)) AS tokens FROM episodes \
             WHERE run_id = {q} AND ended_by <> 'aborted' AND hops IS NOT NULL \
             GROUP BY step, hops ORDER BY hops, step"
        ))
        .await?;
    let evals = state
        .rows(&format!(
            "SELECT step, benchmark, data_source, metric, value, n FROM evals WHERE run_id = {q} \
             ORDER BY step, benchmark, data_source, metric"
        ))
        .await?;
    let checkpoints = state
        .rows(&format!(
            "SELECT checkpoint_id, step, path, bytes, metric FROM checkpoints WHERE run_id = {q} ORDER BY step"
        ))
        .await?;
    Ok(json!({
        "run": run, "steps": steps, "updates": updates, "behaviour_rates": behaviours,
        "by_hops": by_hops, "evals": evals, "checkpoints": checkpoints,
    }))
}

fn rows_of(v: &Value, k: &str) -> Vec<Row> {
    v[k].as_array()
        .map(|a| a.iter().filter_map(|x| x.as_object().cloned()).collect())
        .unwrap_or_default()
}

pub(crate) async fn run_api(State(state): State<AppState>, Path(rid): Path<String>) -> Result<Json<Value>, WebError> {
    let rid = id(&rid, "r", "run")?;
    Ok(Json(run_data(&state, &rid).await?))
}

fn by_hop_series(rows: &[Row], y: &str) -> Vec<Series> {
    let mut by: BTreeMap<i64, Vec<Row>> = BTreeMap::new();
    for r in rows {
        if let Some(h) = r.get("hops").and_then(Value::as_i64) {
            by.entry(h).or_default().push(r.clone());
        }
    }
    by.iter()
        .map(|(h, rs)| series(rs, "step", y, &format!("{h}-hop")))
        .collect()
}

pub(crate) async fn run_page(State(state): State<AppState>, Path(rid): Path<String>) -> Result<Response, WebError> {
    let rid = id(&rid, "r", "run")?;
    // The rendered page is kept like its data: a long run's charts take
    // longer to draw than its data takes to read.
    let page = state
        .cached(format!("run page {rid}"), || async {
            Ok(Value::String(run_html(&state, &rid).await?))
        })
        .await?;
    Ok(html_response(page.as_str().unwrap_or_default().to_string()))
}

async fn run_html(state: &AppState, rid: &str) -> Result<String, WebError> {
    let data = run_data(state, rid).await?;
    let run = data["run"].as_object().cloned().unwrap_or_default();
    let steps = rows_of(&data, "steps");
    let updates = rows_of(&data, "updates");
    let rates = rows_of(&data, "behaviour_rates");
    let hops = rows_of(&data, "by_hops");
    let mut body = String::new();
    body.push_str(&html::table(
        &[
            "name", "kind", "status", "steps", "episodes", "attempt", "policy", "model", "started", "finished",
        ],
        &[vec![
            td(s(&run, "name")),
            td(s(&run, "kind")),
            td(s(&run, "status")),
            td(&text_of(&run, "last_step")),
            td(&text_of(&run, "episodes")),
            td(&text_of(&run, "attempt")),
            td(s(&run, "policy")),
            td(s(&run, "model")),
            td(s(&run, "started_at")),
            td(s(&run, "finished_at")),
        ]],
    ));
    let _ = write!(
        body,
        "<p><a href=\"/runs/{rid}/episodes\">Episodes of this run</a> · <a href=\"/api/runs/{rid}\">JSON</a></p>"
    );
    let mut reward = series(&steps, "step", "reward_mean", "reward");
    reward.band = steps
        .iter()
        .filter_map(|r| {
            let (m, sd) = (f(r, "reward_mean")?, f(r, "reward_std").unwrap_or(0.0));
            Some((f(r, "step")?, m - sd, m + sd))
        })
        .collect();
    let mut charts = vec![
        html::line_chart("reward (mean ± std)", &[reward]),
        html::line_chart("F1", &[series(&steps, "step", "f1", "F1")]),
        html::line_chart("EM", &[series(&steps, "step", "em", "EM")]),
        html::line_chart(
            "format failures",
            &[series(&steps, "step", "format_failure_rate", "format failures")],
        ),
        html::line_chart("tool calls per episode, by hops", &by_hop_series(&hops, "tool_calls")),
        html::line_chart("response tokens per episode, by hops", &by_hop_series(&hops, "tokens")),
    ];
    if !updates.is_empty() {
        for (title, col) in [
            ("loss", "loss"),
            ("KL", "kl"),
            ("entropy", "entropy"),
            ("grad norm", "grad_norm"),
            ("learning rate", "lr"),
            ("clip fraction", "clip_frac"),
        ] {
            charts.push(html::line_chart(title, &[series(&updates, "step", col, title)]));
        }
    }
    charts.push(html::line_chart(
        "behaviour rates",
        &["planning", "cross_validation", "self_reflection", "honesty"]
            .iter()
            .map(|b| series(&rates, "step", b, b))
            .collect::<Vec<_>>(),
    ));
    let _ = write!(body, "<h2>Curves</h2><div class=\"charts\">{}</div>", charts.join(""));
    let evals = rows_of(&data, "evals");
    if !evals.is_empty() {
        body.push_str("<h2>Evaluations</h2>");
        let rows: Vec<Vec<String>> = evals
            .iter()
            .map(|r| {
                vec![
                    td(&text_of(r, "step")),
                    td(s(r, "benchmark")),
                    td(s(r, "data_source")),
                    td(s(r, "metric")),
                    num(f(r, "value"), 3),
                    td(&text_of(r, "n")),
                ]
            })
            .collect();
        body.push_str(&html::table(
            &["step", "benchmark", "source", "metric", "value", "n"],
            &rows,
        ));
    }
    let checkpoints = rows_of(&data, "checkpoints");
    if !checkpoints.is_empty() {
        body.push_str("<h2>Checkpoints</h2>");
        let rows: Vec<Vec<String>> = checkpoints
            .iter()
            .map(|r| {
                vec![
                    td(s(r, "checkpoint_id")),
                    td(&text_of(r, "step")),
                    td(s(r, "path")),
                    td(&text_of(r, "bytes")),
                    num(f(r, "metric"), 3),
                ]
            })
            .collect();
        body.push_str(&html::table(&["checkpoint", "step", "path", "bytes", "metric"], &rows));
    }
    let config = s(&run, "config_json");
    let pretty = serde_json::from_str::<Value>(config)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| config.to_string());
    let _ = write!(body, "<h2>Configuration</h2><pre>{}</pre>", esc(&pretty));
    // A run still going reloads itself, so its curves follow the training.
    let refresh = (s(&run, "status") == "running").then_some(10);
    Ok(html::page_refreshing(
        &format!("Run {rid}: {}", s(&run, "name")),
        &body,
        refresh,
    ))
}

#[derive(Debug, Deserialize)]
pub(crate) struct CompareQuery {
    runs: String,
}

pub(crate) async fn compare_page(
    State(state): State<AppState>,
    Query(q): Query<CompareQuery>,
) -> Result<Response, WebError> {
    let ids: Vec<String> = q
        .runs
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| id(x, "r", "run"))
        .collect::<Result<_, _>>()?;
    if ids.is_empty() || ids.len() > 6 {
        return Err(WebError::BadRequest(
            "compare names 1 to 6 runs, like ?runs=r-3,r-7".into(),
        ));
    }
    let list = ids.iter().map(|i| lit(i)).collect::<Vec<_>>().join(", ");
    let steps = state
        .rows(&format!(
            "SELECT run_id, step, reward_mean, f1, tool_calls, format_failure_rate FROM step_metrics \
             WHERE run_id IN ({list}) ORDER BY run_id, step"
        ))
        .await?;
    let mut body = String::from("<div class=\"charts\">");
    for (title, col) in [
        ("reward", "reward_mean"),
        ("F1", "f1"),
        ("tool calls per episode", "tool_calls"),
        ("format failures", "format_failure_rate"),
    ] {
        let ss: Vec<Series> = ids
            .iter()
            .map(|rid| {
                let rows: Vec<Row> = steps.iter().filter(|r| s(r, "run_id") == rid).cloned().collect();
                series(&rows, "step", col, rid)
            })
            .collect();
        body.push_str(&html::line_chart(title, &ss));
    }
    body.push_str("</div>");
    Ok(html_response(html::page(&format!("Compare {}", ids.join(", ")), &body)))
}

// ---------------------------------------------------------------- episodes

/// Filters of the episode list.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct EpisodeFilter {
    step: Option<String>,
    min_reward: Option<String>,
    max_reward: Option<String>,
    source: Option<String>,
    hops: Option<String>,
    behaviour: Option<String>,
    q: Option<String>,
    page: Option<usize>,
}

fn parse_num<T: std::str::FromStr>(name: &str, v: &Option<String>) -> Result<Option<T>, WebError> {
    match v.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) => t
            .parse()
            .map(Some)
            .map_err(|_| WebError::BadRequest(format!("{name} must be a number, got '{t}'"))),
    }
}

fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|x| !x.is_empty())
}

async fn episodes_data(state: &AppState, rid: &str, fl: &EpisodeFilter) -> Result<Value, WebError> {
    let mut wh = vec![format!("run_id = {}", lit(rid))];
    if let Some(step) = parse_num::<u64>("step", &fl.step)? {
        wh.push(format!("step = {step}"));
    }
    if let Some(v) = parse_num::<f64>("min_reward", &fl.min_reward)? {
        wh.push(format!("reward >= {v}"));
    }
    if let Some(v) = parse_num::<f64>("max_reward", &fl.max_reward)? {
        wh.push(format!("reward <= {v}"));
    }
    if let Some(v) = parse_num::<u32>("hops", &fl.hops)? {
        wh.push(format!("hops = {v}"));
    }
    if let Some(src) = nonempty(&fl.source) {
        wh.push(format!("data_source = {}", lit(src)));
    }
    if let Some(b) = nonempty(&fl.behaviour) {
        wh.push(format!(
            "episode_id IN (SELECT episode_id FROM behaviours WHERE run_id = {} AND kind = {})",
            lit(rid),
            lit(b)
        ));
    }
    if let Some(text) = nonempty(&fl.q) {
        let t = lit(&text.to_lowercase());
        wh.push(format!(
            "(strpos(lower(question), {t}) > 0 OR strpos(lower(coalesce(answer, '')), {t}) > 0)"
        ));
    }
    let page = fl.page.unwrap_or(0);
    if page > MAX_PAGE {
        return Err(WebError::BadRequest(format!(
            "page {page} is past the last page there can be ({MAX_PAGE}); narrow the list with the filters instead"
        )));
    }
    let rows = state
        .rows(&format!(
            "SELECT episode_id, step, group_id, group_index, data_source, hops, question, answer, reward, f1, \
             n_turns, n_tool_calls, ended_by FROM episodes WHERE {} ORDER BY step, group_id, group_index, seq \
             LIMIT {} OFFSET {}",
            wh.join(" AND "),
            PAGE_SIZE + 1,
            page * PAGE_SIZE
        ))
        .await?;
    let more = rows.len() > PAGE_SIZE;
    let rows: Vec<Value> = rows.into_iter().take(PAGE_SIZE).map(Value::Object).collect();
    Ok(json!({ "run_id": rid, "page": page, "page_size": PAGE_SIZE, "more": more, "episodes": rows }))
}

pub(crate) async fn episodes_api(
    State(state): State<AppState>,
    Path(rid): Path<String>,
    Query(fl): Query<EpisodeFilter>,
) -> Result<Json<Value>, WebError> {
    let rid = id(&rid, "r", "run")?;
    Ok(Json(episodes_data(&state, &rid, &fl).await?))
}

fn query_string(fl: &EpisodeFilter, page: usize) -> String {
    let mut parts = vec![format!("page={page}")];
    for (k, v) in [
        ("step", &fl.step),
        ("min_reward", &fl.min_reward),
        ("max_reward", &fl.max_reward),
        ("source", &fl.source),
        ("hops", &fl.hops),
        ("behaviour", &fl.behaviour),
        ("q", &fl.q),
    ] {
        if let Some(v) = nonempty(v) {
            parts.push(format!("{k}={}", html::url_part(v)));
        }
    }
    parts.join("&")
}

pub(crate) async fn episodes_page(
    State(state): State<AppState>,
    Path(rid): Path<String>,
    Query(fl): Query<EpisodeFilter>,
) -> Result<Response, WebError> {
    let rid = id(&rid, "r", "run")?;
    let data = episodes_data(&state, &rid, &fl).await?;
    let val = |v: &Option<String>| esc(v.as_deref().unwrap_or(""));
    let mut body = format!(
        "<form class=\"filters\" method=\"get\">\
         <input name=\"step\" placeholder=\"step\" size=\"5\" value=\"{}\">\
         <input name=\"min_reward\" placeholder=\"min reward\" size=\"8\" value=\"{}\">\
         <input name=\"max_reward\" placeholder=\"max reward\" size=\"8\" value=\"{}\">\
         <input name=\"source\" placeholder=\"data source\" size=\"12\" value=\"{}\">\
         <input name=\"hops\" placeholder=\"hops\" size=\"4\" value=\"{}\">\
         <select name=\"behaviour\"><option value=\"\">any behaviour</option>{}</select>\
         <input name=\"q\" placeholder=\"text in question or answer\" size=\"24\" value=\"{}\">\
         <button>Filter</button></form>",
        val(&fl.step),
        val(&fl.min_reward),
        val(&fl.max_reward),
        val(&fl.source),
        val(&fl.hops),
        ["planning", "cross_validation", "self_reflection", "honesty"]
            .iter()
            .map(|b| format!(
                "<option{}>{b}</option>",
                if fl.behaviour.as_deref() == Some(b) {
                    " selected"
                } else {
                    ""
                }
            ))
            .collect::<String>(),
        val(&fl.q),
    );
    let rows: Vec<Vec<String>> = rows_of(&data, "episodes")
        .iter()
        .map(|r| {
            let eid = s(r, "episode_id");
            vec![
                link(&format!("/episodes/{eid}"), eid),
                td(&text_of(r, "step")),
                td(&format!("{}/{}", text_of(r, "group_id"), text_of(r, "group_index"))),
                td(s(r, "data_source")),
                td(&text_of(r, "hops")),
                td(s(r, "question")),
                td(s(r, "answer")),
                num(f(r, "reward"), 3),
                num(f(r, "f1"), 3),
                td(&text_of(r, "n_turns")),
                td(&text_of(r, "n_tool_calls")),
                td(s(r, "ended_by")),
            ]
        })
        .collect();
    body.push_str(&html::table(
        &[
            "episode", "step", "group", "source", "hops", "question", "answer", "reward", "F1", "turns", "tools",
            "ended",
        ],
        &rows,
    ));
    let page = data["page"].as_u64().unwrap_or(0) as usize;
    if page > 0 {
        let _ = write!(
            body,
            "<a href=\"?{}\">← previous</a> ",
            esc(&query_string(&fl, page - 1))
        );
    }
    if data["more"].as_bool() == Some(true) {
        let _ = write!(body, "<a href=\"?{}\">next →</a>", esc(&query_string(&fl, page + 1)));
    }
    Ok(html_response(html::page(&format!("Episodes of {rid}"), &body)))
}

// ---------------------------------------------------------------- episode

async fn episode_data(state: &AppState, eid: &str) -> Result<Value, WebError> {
    state
        .cached(format!("episode {eid}"), || episode_query(state, eid))
        .await
}

async fn episode_query(state: &AppState, eid: &str) -> Result<Value, WebError> {
    let q = lit(eid);
    if let Some(records) = episode_records(state, eid).await? {
        return episode_from_records(state, eid, records).await;
    }
    let ep = state
        .rows(&format!("SELECT * FROM episodes WHERE episode_id = {q}"))
        .await?;
    let Some(ep) = ep.into_iter().next() else {
        return Err(WebError::NotFound(format!("there is no finished episode {eid}")));
    };
    let turns = state
        .rows(&format!(
            "SELECT turn, role, text, tool, n_tokens, finish, truncated FROM turns WHERE episode_id = {q} ORDER BY turn, seq"
        ))
        .await?;
    let calls = state
        .rows(&format!(
            "SELECT turn, tool, arguments_json, n_results, ok, error FROM tool_calls WHERE episode_id = {q} ORDER BY turn, seq"
        ))
        .await?;
    let web = state
        .rows(&format!(
            "SELECT turn, request_id, kind, url_or_query, status, bytes, body_hash, source, latency_ms, error \
             FROM web_requests WHERE episode_id = {q} ORDER BY seq"
        ))
        .await?;
    let segments = state
        .rows(&format!(
            "SELECT turn, request_id, url, segment, n_segments, notes, read_next FROM segments WHERE episode_id = {q} ORDER BY seq"
        ))
        .await?;
    let behaviours = state
        .rows(&format!(
            "SELECT kind, turn, span_start, span_end, evidence FROM behaviours WHERE episode_id = {q} ORDER BY seq"
        ))
        .await?;
    Ok(json!({
        "episode": ep, "turns": turns, "tool_calls": calls, "web_requests": web,
        "segments": segments, "behaviours": behaviours, "source": "tables",
    }))
}

/// The columns of each part of the episode page, in the order the tables'
/// queries above select them.
const EPISODE_PARTS: &[(&str, &str, &[&str])] = &[
    (
        "turns",
        "turns",
        &["turn", "role", "text", "tool", "n_tokens", "finish", "truncated"],
    ),
    (
        "tool_calls",
        "tool_calls",
        &["turn", "tool", "arguments_json", "n_results", "ok", "error"],
    ),
    (
        "web_requests",
        "web_requests",
        &[
            "turn",
            "request_id",
            "kind",
            "url_or_query",
            "status",
            "bytes",
            "body_hash",
            "source",
            "latency_ms",
            "error",
        ],
    ),
    (
        "segments",
        "segments",
        &[
            "turn",
            "request_id",
            "url",
            "segment",
            "n_segments",
            "notes",
            "read_next",
        ],
    ),
    (
        "behaviours",
        "behaviours",
        &["kind", "turn", "span_start", "span_end", "evidence"],
    ),
];

/// The episode's events, which the writer of a running command serves
/// from the log's per-episode index; `None` when no writer serves the
/// endpoint (the tables answer then).
async fn episode_records(state: &AppState, eid: &str) -> Result<Option<Vec<fathom_core::Record>>, WebError> {
    let n: u64 = eid
        .trim_start_matches("e-")
        .parse()
        .map_err(|_| WebError::BadRequest(format!("'{eid}' is not an episode id")))?;
    let data = state.data().to_path_buf();
    let records =
        tokio::task::spawn_blocking(move || fathom_store::tail::fetch_episode(&data, fathom_core::EpisodeId(n)))
            .await
            .map_err(|e| WebError::Internal(e.to_string()))?
            .map_err(|e| WebError::Internal(format!("reading the episode from the writer: {e}")))?;
    Ok(records.filter(|r| !r.is_empty()))
}

/// A run's questions by id, read once for many episode pages.
pub(crate) type QuestionsCell = Arc<tokio::sync::OnceCell<Arc<HashMap<String, Row>>>>;

/// A recorded question's columns of the episode row (`data_source`,
/// `hops`, `question`, `ground_truth`): the questions of the episode's run
/// and step are read from the `questions` table (sorted by run and step,
/// so the query reads a few pages) in one query and kept.
async fn question_of(state: &AppState, run: &str, step: Option<i64>, question: &str) -> Result<Option<Row>, WebError> {
    let last = state.last_seq().await;
    let key = match step {
        Some(s) => format!("{run}/{s}"),
        None => run.to_string(),
    };
    let cell = {
        let mut known = state.questions.lock().await;
        match known.get(&key) {
            Some((_, cell)) if cell.get().is_some_and(|m| m.contains_key(question)) => {
                return Ok(cell.get().and_then(|m| m.get(question).cloned()));
            }
            // Being read, or read over the same tables: wait for it.
            Some((seq, cell)) if *seq >= last => cell.clone(),
            _ => {
                let cell: QuestionsCell = Default::default();
                known.insert(key, (last, cell.clone()));
                cell
            }
        }
    };
    let map = cell
        .get_or_try_init(|| async {
            let mut filter = format!("run_id = {}", lit(run));
            if let Some(s) = step {
                let _ = write!(filter, " AND step = {s}");
            }
            let rows = state
                .rows(&format!(
                    "SELECT question_id, data_source, hops, question, ground_truth FROM questions WHERE {filter}"
                ))
                .await?;
            let mut map = HashMap::with_capacity(rows.len());
            for mut row in rows {
                if let Some(Value::String(id)) = row.remove("question_id") {
                    map.insert(id, row);
                }
            }
            Ok::<_, WebError>(Arc::new(map))
        })
        .await?;
    match map.get(question) {
        Some(row) => Ok(Some(row.clone())),
        // A question sampled at another step than its episode's: the run's.
        None if step.is_some() => Box::pin(question_of(state, run, None, question)).await,
        None => Ok(None),
    }
}

/// The episode's rows built from its events by the snapshotter's own
/// projector: one request to the writer instead of six table scans.
async fn episode_from_records(
    state: &AppState,
    eid: &str,
    mut records: Vec<fathom_core::Record>,
) -> Result<Value, WebError> {
    // Only what the tables have seen, so both sources show the same.
    let last = state.last_seq().await;
    records.retain(|r| r.seq.0 <= last);
    let mut projector = fathom_store::snapshot::Projector::new(&fathom_store::snapshot::Carry::default());
    for r in &records {
        projector.push(r);
    }
    let mut rows: HashMap<&str, Vec<(u64, i64, Row)>> = HashMap::new();
    for (table, batch) in projector.take_batches() {
        let text = fathom_query::format::json(&[batch]).map_err(WebError::Internal)?;
        let Value::Array(list) = serde_json::from_str(&text).map_err(|e| WebError::Internal(e.to_string()))? else {
            continue;
        };
        for r in list {
            if let Value::Object(m) = r {
                let seq = m.get("seq").and_then(Value::as_u64).unwrap_or(0);
                let turn = m.get("turn").and_then(Value::as_i64).unwrap_or(-1);
                rows.entry(table).or_default().push((seq, turn, m));
            }
        }
    }
    // The episode's row; its question's columns come from the run's
    // `question_sampled`, which is not among the episode's own events.
    let Some((_, _, mut ep)) = rows.remove("episodes").and_then(|mut v| v.pop()) else {
        return Err(WebError::NotFound(format!("there is no finished episode {eid}")));
    };
    if let (Some(run), Some(qid)) = (
        ep.get("run_id").and_then(Value::as_str).map(str::to_string),
        ep.get("question_id").and_then(Value::as_str).map(str::to_string),
    ) && let Some(question) = question_of(state, &run, ep.get("step").and_then(Value::as_i64), &qid).await?
    {
        ep.extend(question);
    }
    let mut out = Map::new();
    out.insert("episode".into(), Value::Object(ep));
    for (key, table, columns) in EPISODE_PARTS {
        let mut part = rows.remove(table).unwrap_or_default();
        // The tables' order: turns and tool calls by turn then seq, the rest by seq.
        if matches!(*table, "turns" | "tool_calls") {
            part.sort_by_key(|(seq, turn, _)| (*turn, *seq));
        } else {
            part.sort_by_key(|(seq, _, _)| *seq);
        }
        let picked: Vec<Value> = part
            .into_iter()
            .map(|(_, _, m)| {
                let mut row = Map::new();
                for c in *columns {
                    if let Some(v) = m.get(*c) {
                        row.insert((*c).to_string(), v.clone());
                    }
                }
                Value::Object(row)
            })
            .collect();
        out.insert((*key).to_string(), Value::Array(picked));
    }
    out.insert("source".into(), "log".into());
    Ok(Value::Object(out))
}

pub(crate) async fn episode_api(
    State(state): State<AppState>,
    Path(eid): Path<String>,
) -> Result<Json<Value>, WebError> {
    let eid = id(&eid, "e", "episode")?;
    Ok(Json(episode_data(&state, &eid).await?))
}

pub(crate) async fn episode_page(State(state): State<AppState>, Path(eid): Path<String>) -> Result<Response, WebError> {
    let eid = id(&eid, "e", "episode")?;
    let data = episode_data(&state, &eid).await?;
    let ep = data["episode"].as_object().cloned().unwrap_or_default();
    let rid = s(&ep, "run_id").to_string();
    let behaviours = rows_of(&data, "behaviours");
    let mut body = format!(
        "<p>Run <a href=\"/runs/{}\">{}</a>, step {}, group {}/{}, {} · <a href=\"/api/episodes/{eid}\">JSON</a></p>",
        esc(&rid),
        esc(&rid),
        esc(&text_of(&ep, "step")),
        esc(&text_of(&ep, "group_id")),
        esc(&text_of(&ep, "group_index")),
        esc(s(&ep, "data_source")),
    );
    if state.config.replay.is_some() {
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/episodes/{eid}/replay\"><button type=\"submit\">Replay check</button> \
             re-runs this episode from the log (its policy, seed and recorded web) and says whether it is identical</form>"
        );
    }
    let _ = write!(body, "<h2>Question</h2><pre>{}</pre>", esc(s(&ep, "question")));
    body.push_str(&html::table(
        &[
            "answer",
            "ground truth",
            "reward",
            "F1",
            "EM",
            "well-formed",
            "turns",
            "tool calls",
            "ended by",
        ],
        &[vec![
            td(s(&ep, "answer")),
            td(&list_text(&ep, "ground_truth")),
            num(f(&ep, "reward"), 3),
            num(f(&ep, "f1"), 3),
            num(f(&ep, "em"), 3),
            td(&text_of(&ep, "format_ok")),
            td(&text_of(&ep, "n_turns")),
            td(&text_of(&ep, "n_tool_calls")),
            td(s(&ep, "ended_by")),
        ]],
    ));
    if !behaviours.is_empty() {
        body.push_str("<h2>Behaviours</h2><p>");
        for b in &behaviours {
            let _ = write!(
                body,
                "<span class=\"tag\" title=\"{}\">{} (turn {})</span>",
                esc(s(b, "evidence")),
                esc(s(b, "kind")),
                esc(&text_of(b, "turn"))
            );
        }
        body.push_str("</p>");
    }
    body.push_str("<h2>Turns</h2>");
    let segments = rows_of(&data, "segments");
    let web = rows_of(&data, "web_requests");
    for t in rows_of(&data, "turns") {
        let turn = t.get("turn").and_then(Value::as_i64).unwrap_or(-1);
        let role = s(&t, "role");
        let text = s(&t, "text");
        if role == "assistant" {
            let mark = behaviours
                .iter()
                .find(|b| b.get("turn").and_then(Value::as_i64) == Some(turn));
            let shown = match mark {
                Some(b) => {
                    let (a, z) = (
                        b.get("span_start").and_then(Value::as_u64).unwrap_or(0) as usize,
                        b.get("span_end").and_then(Value::as_u64).unwrap_or(0) as usize,
                    );
                    html::highlight(text, a, z)
                }
                None => html::turn_text(text),
            };
            let _ = write!(
                body,
                "<div class=\"turn\"><b>turn {turn}</b> <span class=\"muted\">{} tokens{}</span><pre>{shown}</pre></div>",
                esc(&text_of(&t, "n_tokens")),
                if t.get("truncated").and_then(Value::as_bool) == Some(true) {
                    ", truncated"
                } else {
                    ""
                },
            );
        } else {
            let _ = write!(
                body,
                "<div class=\"turn tool\"><b>{} response</b><pre>{}</pre>",
                esc(s(&t, "tool")),
                esc(text)
            );
            let reads: Vec<&Row> = segments
                .iter()
                .filter(|r| r.get("turn").and_then(Value::as_i64) == Some(turn))
                .collect();
            if !reads.is_empty() {
                let rows: Vec<Vec<String>> = reads
                    .iter()
                    .map(|r| {
                        vec![
                            td(s(r, "url")),
                            td(&format!("{}/{}", text_of(r, "segment"), text_of(r, "n_segments"))),
                            td(s(r, "notes")),
                            td(&text_of(r, "read_next")),
                        ]
                    })
                    .collect();
                body.push_str(&html::table(
                    &["page read", "segment", "reader's notes", "read on"],
                    &rows,
                ));
            }
            body.push_str("</div>");
        }
    }
    if !web.is_empty() {
        body.push_str("<h2>Web requests</h2>");
        let rows: Vec<Vec<String>> = web
            .iter()
            .map(|r| {
                let req = s(r, "request_id");
                vec![
                    td(&text_of(r, "turn")),
                    if s(r, "body_hash").is_empty() {
                        td(req)
                    } else {
                        link(&format!("/episodes/{eid}/web/{req}"), req)
                    },
                    td(s(r, "kind")),
                    td(s(r, "url_or_query")),
                    td(&text_of(r, "status")),
                    td(&text_of(r, "bytes")),
                    td(s(r, "source")),
                    td(s(r, "body_hash")),
                    td(s(r, "error")),
                ]
            })
            .collect();
        body.push_str(&html::table(
            &[
                "turn",
                "request",
                "kind",
                "URL or query",
                "status",
                "bytes",
                "source",
                "body (BLAKE3)",
                "error",
            ],
            &rows,
        ));
    }
    Ok(html_response(html::page(&format!("Episode {eid}"), &body)))
}

/// Recorded bodies shown at most (the rest is cut, with a note).
const BODY_CHARS: usize = 200_000;

pub(crate) async fn recorded_page(
    State(state): State<AppState>,
    Path((eid, req)): Path<(String, String)>,
) -> Result<Response, WebError> {
    let eid = id(&eid, "e", "episode")?;
    let req = id(&req, "w", "web request")?;
    let rows = state
        .rows(&format!(
            "SELECT turn, kind, url_or_query, status, bytes, body_hash, truncated, source, backend \
             FROM web_requests WHERE episode_id = {} AND request_id = {}",
            lit(&eid),
            lit(&req)
        ))
        .await?;
    let Some(r) = rows.into_iter().next() else {
        return Err(WebError::NotFound(format!("episode {eid} made no web request {req}")));
    };
    let hash = s(&r, "body_hash").to_string();
    let digest = fathom_core::Digest::from_hex(&hash)
        .ok_or_else(|| WebError::NotFound(format!("request {req} recorded no body")))?;
    let data = state.data().to_path_buf();
    let body = tokio::task::spawn_blocking(move || fathom_store::tail::read_blob(&data, &digest))
        .await
        .map_err(|e| WebError::Internal(e.to_string()))?
        .map_err(|e| WebError::Internal(format!("reading the recorded body: {e}")))?
        .ok_or_else(|| WebError::NotFound(format!("the body of {req} is not in the log's blob store")))?;
    let mut text = String::from_utf8_lossy(&body).into_owned();
    let mut note = String::new();
    if text.chars().count() > BODY_CHARS {
        text = text.chars().take(BODY_CHARS).collect();
        note = format!(" (first {BODY_CHARS} characters shown)");
    }
    let mut page = html::table(
        &[
            "turn",
            "kind",
            "URL or query",
            "status",
            "bytes",
            "source",
            "backend",
            "cut at record time",
            "body (BLAKE3)",
        ],
        &[vec![
            td(&text_of(&r, "turn")),
            td(s(&r, "kind")),
            td(s(&r, "url_or_query")),
            td(&text_of(&r, "status")),
            td(&body.len().to_string()),
            td(s(&r, "source")),
            td(s(&r, "backend")),
            td(&text_of(&r, "truncated")),
            td(&hash),
        ]],
    );
    let _ = write!(
        page,
        "<p><a href=\"/episodes/{eid}\">Back to episode {eid}</a> · the response exactly as recorded, as text{note}</p><pre>{}</pre>",
        esc(&text)
    );
    Ok(html_response(html::page(&format!("Recorded response {req}"), &page)))
}

// ---------------------------------------------------------------- behaviours

async fn behaviours_data(state: &AppState) -> Result<Value, WebError> {
    state.cached("behaviours".into(), || behaviours_query(state)).await
}

async fn behaviours_query(state: &AppState) -> Result<Value, WebError> {
    let rates = state
        .rows("SELECT * FROM behaviour_rates ORDER BY run_id, step")
        .await?;
    let examples = state
        .rows(
            "SELECT kind, run_id, episode_id, turn, evidence FROM (SELECT *, row_number() OVER \
             (PARTITION BY kind ORDER BY seq DESC) AS k FROM behaviours) WHERE k <= 5 ORDER BY kind, seq DESC",
        )
        .await?;
    Ok(json!({ "rates": rates, "examples": examples }))
}

pub(crate) async fn behaviours_api(State(state): State<AppState>) -> Result<Json<Value>, WebError> {
    Ok(Json(behaviours_data(&state).await?))
}

pub(crate) async fn behaviours_page(State(state): State<AppState>) -> Result<Response, WebError> {
    let data = behaviours_data(&state).await?;
    let rates = rows_of(&data, "rates");
    let mut runs: Vec<String> = rates.iter().map(|r| s(r, "run_id").to_string()).collect();
    runs.dedup();
    runs.truncate(6);
    let mut body = String::from("<div class=\"charts\">");
    for b in ["planning", "cross_validation", "self_reflection", "honesty"] {
        let ss: Vec<Series> = runs
            .iter()
            .map(|rid| {
                let rows: Vec<Row> = rates.iter().filter(|r| s(r, "run_id") == rid).cloned().collect();
                series(&rows, "step", b, rid)
            })
            .collect();
        body.push_str(&html::line_chart(b, &ss));
    }
    body.push_str("</div><h2>Recent examples</h2>");
    let rows: Vec<Vec<String>> = rows_of(&data, "examples")
        .iter()
        .map(|r| {
            let eid = s(r, "episode_id");
            vec![
                td(s(r, "kind")),
                td(s(r, "run_id")),
                link(&format!("/episodes/{eid}"), eid),
                td(&text_of(r, "turn")),
                td(s(r, "evidence")),
            ]
        })
        .collect();
    body.push_str(&html::table(
        &["behaviour", "run", "episode", "turn", "evidence"],
        &rows,
    ));
    Ok(html_response(html::page("Behaviours", &body)))
}

// ---------------------------------------------------------------- SQL

#[derive(Debug, Deserialize)]
pub(crate) struct SqlQuery {
    q: Option<String>,
}

/// Rows the SQL page and `/api/sql` return at most (the CSV has more).
const SQL_ROWS: usize = 1000;

/// Rows the CSV download holds at most.
const CSV_ROWS: usize = 1_000_000;

pub(crate) async fn sql_api(State(state): State<AppState>, Query(q): Query<SqlQuery>) -> Result<Json<Value>, WebError> {
    let Some(sql) = nonempty(&q.q) else {
        return Err(WebError::BadRequest("give a query: /api/sql?q=SELECT …".into()));
    };
    let (_, mut rows) = state.table(sql, Some(SQL_ROWS + 1)).await?;
    let more = rows.len() > SQL_ROWS;
    rows.truncate(SQL_ROWS);
    Ok(Json(json!({ "rows": rows, "more": more, "max_rows": SQL_ROWS })))
}

pub(crate) async fn sql_csv(State(state): State<AppState>, Query(q): Query<SqlQuery>) -> Result<Response, WebError> {
    let Some(sql) = nonempty(&q.q) else {
        return Err(WebError::BadRequest("give a query: /sql.csv?q=SELECT …".into()));
    };
    let db = state.db(false).await?;
    let batches = db.query_limited(sql, CSV_ROWS + 1).await?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    // One row past the cap says there were more; it is not sent.
    let batches = if rows > CSV_ROWS {
        let mut kept = Vec::new();
        let mut left = CSV_ROWS;
        for b in &batches {
            let n = b.num_rows().min(left);
            kept.push(b.slice(0, n));
            left -= n;
        }
        kept
    } else {
        batches
    };
    let csv = fathom_query::format::csv(&batches).map_err(WebError::Internal)?;
    let capped = if rows > CSV_ROWS {
        CSV_ROWS.to_string()
    } else {
        "no".into()
    };
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"fathom.csv\"".to_string(),
            ),
            (header::HeaderName::from_static("x-fathom-rows-capped"), capped),
        ],
        csv,
    )
        .into_response())
}

pub(crate) async fn sql_page(State(state): State<AppState>, Query(q): Query<SqlQuery>) -> Result<Response, WebError> {
    let sql = nonempty(&q.q).unwrap_or("SELECT * FROM step_metrics ORDER BY run_id, step LIMIT 20");
    let mut body = format!(
        "<form method=\"get\" action=\"/sql\"><textarea name=\"q\" rows=\"5\">{}</textarea>\
         <button>Run</button> <span class=\"muted\">read-only; tables and columns in docs/TABLES.md</span></form>",
        esc(sql)
    );
    if nonempty(&q.q).is_some() {
        match state.table(sql, Some(SQL_ROWS + 1)).await {
            Ok((cols, rows)) => {
                let shown: Vec<Vec<String>> = rows
                    .iter()
                    .take(SQL_ROWS)
                    .map(|r| cols.iter().map(|c| td(&text_of(r, c))).collect())
                    .collect();
                let _ = write!(
                    body,
                    "<p>{} · <a href=\"/sql.csv?q={}\">CSV</a></p>",
                    if rows.len() > SQL_ROWS {
                        format!("the first {SQL_ROWS} rows (there are more; the CSV has up to {CSV_ROWS})")
                    } else {
                        format!("{} rows", rows.len())
                    },
                    esc(&html::url_part(sql))
                );
                let headers: Vec<&str> = cols.iter().map(String::as_str).collect();
                body.push_str(&html::table(&headers, &shown));
            }
            Err(WebError::Query(e)) => {
                let _ = write!(body, "<pre class=\"answer\">{}</pre>", esc(&e.to_string()));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(html_response(html::page("SQL", &body)))
}

async fn replay_data(state: &AppState, eid: &str) -> Result<Value, WebError> {
    let eid = id(eid, "e", "episode")?;
    let Some(replay) = &state.config.replay else {
        return Err(WebError::NotFound(
            "this dashboard was started without a replay action; run: fathom replay --episode ID --check".into(),
        ));
    };
    let verdict = replay.0.check(eid.clone()).await.map_err(WebError::Internal)?;
    Ok(json!({"episode": eid, "verdict": verdict}))
}

pub(crate) async fn replay_api(
    State(state): State<AppState>,
    Path(eid): Path<String>,
) -> Result<Json<Value>, WebError> {
    Ok(Json(replay_data(&state, &eid).await?))
}

pub(crate) async fn replay_page(State(state): State<AppState>, Path(eid): Path<String>) -> Result<Response, WebError> {
    let data = replay_data(&state, &eid).await?;
    let eid = data["episode"].as_str().unwrap_or_default().to_string();
    let v = data["verdict"].as_object().cloned().unwrap_or_default();
    let identical = v.get("identical").and_then(Value::as_bool).unwrap_or(false);
    let mut body = format!("<p><a href=\"/episodes/{eid}\">Back to episode {eid}</a></p>");
    if identical {
        let _ = write!(body, "<h2 class=\"ok\">Identical</h2><p>{}</p>", esc(s(&v, "summary")));
    } else {
        let at = v
            .get("turn")
            .and_then(Value::as_u64)
            .map_or("before the first turn".to_string(), |t| format!("at turn {t}"));
        let _ = write!(
            body,
            "<h2 class=\"bad\">Diverges {}</h2><p>{}</p><p><b>Cause:</b> {}</p>",
            esc(&at),
            esc(s(&v, "summary")),
            esc(s(&v, "cause"))
        );
        for (label, key) in [("Recorded", "recorded"), ("Produced", "produced")] {
            if let Some(text) = v.get(key).and_then(Value::as_str) {
                let _ = write!(body, "<h3>{label}</h3><pre>{}</pre>", esc(text));
            }
        }
        let details: Vec<String> = v
            .get("details")
            .and_then(Value::as_array)
            .map(|d| {
                d.iter()
                    .filter_map(|x| x.as_str())
                    .map(|x| format!("<li>{}</li>", esc(x)))
                    .collect()
            })
            .unwrap_or_default();
        if !details.is_empty() {
            let _ = write!(body, "<ul>{}</ul>", details.concat());
        }
    }
    Ok(Html(html::page(&format!("Replay check of {eid}"), &body)).into_response())
}
