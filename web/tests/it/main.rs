//! The dashboard's routes over a small fixed log: content, escaping,
//! security headers, the token, and the SQL console.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use fathom_core::event::*;
use fathom_core::{EpisodeId, Event, Payload, QuestionId, RequestId, RunId, Timestamp};
use fathom_store::{Options, Store};
use http_body_util::BodyExt;
use tower::ServiceExt;

const XSS_Q: &str = "Who founded <script>alert('q')</script> Corp?";
const XSS_TURN: &str = "<think>First <img src=x onerror=\"alert(1)\"> then search.</think>\n<tool_call>{\"name\": \"web_search\", \"arguments\": {\"query\": [\"<script>x</script>\"]}}</tool_call>";
const XSS_TOOL: &str =
    "<tool_response>[1] <a href=\"javascript:alert(3)\">click</a> <svg onload=alert(4)></tool_response>";
const XSS_ANSWER: &str = "<think>It is known.</think>\n<answer><script>alert('a')</script></answer>";

fn ev(run: u64, t: u64, p: impl Into<Payload>) -> Event {
    Event::new(
        RunId(run),
        Timestamp(1_700_000_000_000_000_000 + (t as i64) * 1_000_000),
        p,
    )
}

/// Run r-1: a training run of 2 steps × 35 episodes (70 in all, so the
/// episode list has two pages), one of them hostile; half the log is
/// snapshotted, half is read from the tail.
fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    let mut t = 0;
    let mut next = || {
        t += 1;
        t
    };
    store
        .append(&[ev(
            1,
            next(),
            RunStarted {
                name: "grpo <b>bold</b>".into(),
                run_kind: RunKind::Train,
                config_json: "{\"lr\": 0.001, \"note\": \"</pre><script>alert(5)</script>\"}".into(),
                seed: 1,
                policy: "candle:model".into(),
                model: "qwen2 tiny".into(),
                code_version: "test".into(),
                attempt: 0,
            },
        )])
        .unwrap();
    let mut episode = 0u64;
    for step in 1..=2u64 {
        let mut events = Vec::new();
        for i in 0..35u32 {
            episode += 1;
            let e = EpisodeId(episode);
            let hostile = step == 1 && i == 0;
            let qid = QuestionId(format!("q{step}-{i}"));
            let question = if hostile {
                XSS_Q.to_string()
            } else {
                format!("In which year was person {i} born?")
            };
            events.push(ev(
                1,
                next(),
                QuestionSampled {
                    step,
                    question_id: qid.clone(),
                    data_source: if i % 2 == 0 {
                        "sandbox-1hop".into()
                    } else {
                        "sandbox-2hop".into()
                    },
                    question,
                    ground_truths: vec![format!("19{i:02}")],
                    hops: Some(1 + i % 2),
                    data_cursor: u64::from(i),
                },
            ));
            events.push(ev(
                1,
                next(),
                EpisodeStarted {
                    episode_id: e,
                    step,
                    group_id: i / 5,
                    group_index: i % 5,
                    question_id: qid,
                    policy_version: step - 1,
                    seed: u64::from(i),
                    replay_of: None,
                    n_prompt_tokens: 100,
                },
            ));
            let turn0 = if hostile {
                XSS_TURN.to_string()
            } else {
                "<think>First find the person, then the year.</think>\n<tool_call>{\"name\": \"web_search\", \"arguments\": {\"query\": [\"person\"]}}</tool_call>".to_string()
            };
            events.push(ev(
                1,
                next(),
                TurnGenerated {
                    episode_id: e,
                    turn: 0,
                    text: turn0,
                    token_ids: None,
                    logprobs: None,
                    n_context_tokens: 100,
                    n_tokens: 30,
                    latency_ns: 1_000_000,
                    finish: FinishReason::Stop,
                },
            ));
            events.push(ev(
                1,
                next(),
                ToolCalled {
                    episode_id: e,
                    turn: 0,
                    tool: "web_search".into(),
                    arguments_json: "{\"query\":[\"person\"]}".into(),
                },
            ));
            events.push(ev(
                1,
                next(),
                WebExchange {
                    request_id: RequestId(episode),
                    episode_id: Some(e),
                    turn: Some(0),
                    request_kind: WebKind::Search,
                    target: if hostile {
                        "javascript:alert(6)".into()
                    } else {
                        "person".into()
                    },
                    canonical: "person".into(),
                    backend: "sandbox".into(),
                    status: 200,
                    headers: Vec::new(),
                    body: if hostile {
                        Some(
                            store
                                .put_blob(b"<html><body onload=\"alert(9)\"><script>alert(10)</script><a href=\"javascript:alert(11)\">x</a></body></html>")
                                .unwrap(),
                        )
                    } else {
                        None
                    },
                    body_truncated: false,
                    latency_ns: 2_000_000,
                    source: WebSource::Sandbox,
                    attempt: 0,
                    error: None,
                },
            ));
            events.push(ev(
                1,
                next(),
                PageSegmentRead {
                    episode_id: e,
                    turn: 0,
                    request_id: RequestId(episode),
                    url: "http://127.0.0.1:1/Person".into(),
                    segment: 0,
                    n_segments: 1,
                    notes: if hostile {
                        "<iframe src=\"javascript:alert(7)\">".into()
                    } else {
                        "born in 1950".into()
                    },
                    read_next: false,
                    n_tokens: 10,
                },
            ));
            events.push(ev(
                1,
                next(),
                ToolResult {
                    episode_id: e,
                    turn: 0,
                    tool: "web_search".into(),
                    text: if hostile {
                        XSS_TOOL.into()
                    } else {
                        "<tool_response>[1] Person born 1950</tool_response>".into()
                    },
                    n_results: 1,
                    ok: true,
                    error: None,
                    truncated: false,
                    n_tokens: 20,
                },
            ));
            let answer = if hostile {
                XSS_ANSWER.to_string()
            } else {
                format!("<think>Found it.</think>\n<answer>19{i:02}</answer>")
            };
            events.push(ev(
                1,
                next(),
                TurnGenerated {
                    episode_id: e,
                    turn: 1,
                    text: answer,
                    token_ids: None,
                    logprobs: None,
                    n_context_tokens: 150,
                    n_tokens: 12,
                    latency_ns: 1_000_000,
                    finish: FinishReason::Stop,
                },
            ));
            if i % 3 == 0 {
                events.push(ev(
                    1,
                    next(),
                    BehaviourTagged {
                        episode_id: e,
                        behaviour: Behaviour::Planning,
                        turn: 0,
                        span_start: 7,
                        span_end: 30,
                        evidence: if hostile {
                            "<script>alert(8)</script>".into()
                        } else {
                            "First find the person".into()
                        },
                        detector_version: 1,
                    },
                ));
            }
            let reward = if i < 10 + 10 * step as u32 { 1.0 } else { -1.0 };
            events.push(ev(
                1,
                next(),
                EpisodeFinished {
                    episode_id: e,
                    answer: Some(if hostile {
                        "<script>alert('a')</script>".into()
                    } else {
                        format!("19{i:02}")
                    }),
                    reward,
                    f1: reward.max(0.0),
                    em: reward.max(0.0),
                    format_ok: reward >= 0.0,
                    format_error: None,
                    n_turns: 2,
                    n_tool_calls: 1,
                    n_searches: 1,
                    n_browses: 0,
                    n_tokens: 42,
                    ended_by: EndReason::Answer,
                    duration_ns: 5_000_000,
                },
            ));
        }
        events.push(ev(
            1,
            next(),
            GradientUpdate {
                step,
                policy_version: step,
                loss: 0.5 / step as f64,
                pg_loss: 0.4,
                kl: 0.01 * step as f64,
                entropy: 2.0,
                clip_frac: 0.1,
                grad_norm: 1.5,
                lr: 1e-3,
                tokens: 1000,
                episodes: 35,
                micro_batches: 9,
                duration_ns: 1_000_000_000,
            },
        ));
        events.push(ev(
            1,
            next(),
            EvalResult {
                step,
                benchmark: "held-out".into(),
                data_source: "overall".into(),
                metric: "f1".into(),
                value: 0.25 * step as f64,
                n: 24,
            },
        ));
        store.append(&events).unwrap();
        if step == 1 {
            store.snapshot(&Default::default()).unwrap();
        }
    }
    store.close().unwrap();
    dir
}

fn app(dir: &std::path::Path, token: Option<&str>) -> Router {
    fathom_web::router(fathom_web::AppState::new(fathom_web::Config {
        data: dir.to_path_buf(),
        token: token.map(str::to_string),
        refresh: Duration::from_secs(60),
        replay: None,
    }))
}

async fn get(app: &Router, uri: &str) -> (StatusCode, axum::http::HeaderMap, String) {
    get_with(app, Request::get(uri).body(Body::empty()).unwrap()).await
}

async fn get_with(app: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

/// No recorded text became markup: every real tag on the page (recorded
/// `<` are escaped, so real tags are the server's own) is one the server
/// writes, with no event handler and no `javascript:` URL.
fn assert_inert(page: &str, uri: &str) {
    const OURS: &[&str] = &[
        "!doctype", "html", "head", "meta", "title", "link", "body", "header", "b", "a", "main", "h1", "h2", "p",
        "table", "thead", "tbody", "tr", "th", "td", "pre", "div", "span", "mark", "svg", "text", "line", "path",
        "polyline", "form", "label", "input", "button", "select", "option", "textarea", "h3", "ul", "li",
    ];
    let mut rest = page;
    let mut tags = 0;
    while let Some(i) = rest.find('<') {
        let tail = &rest[i + 1..];
        let end = tail.find('>').unwrap_or_else(|| panic!("{uri}: an unclosed tag"));
        let tag = tail[..end].to_lowercase();
        let name = tag.trim_start_matches('/').split([' ', '\n']).next().unwrap_or("");
        assert!(OURS.contains(&name), "{uri}: a tag the server does not write: <{tag}>");
        assert!(!tag.contains("javascript:"), "{uri}: a javascript: URL in <{tag}>");
        let handler = tag
            .split_whitespace()
            .skip(1)
            .any(|attr| attr.starts_with("on") && attr.contains('='));
        assert!(!handler, "{uri}: an event handler in <{tag}>");
        tags += 1;
        rest = &tail[end + 1..];
    }
    assert!(tags > 10, "{uri}: no page");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_show_the_log_and_render_recorded_content_inert() {
    let dir = fixture();
    let app = app(dir.path(), None);

    let (status, headers, runs) = get(&app, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_SECURITY_POLICY], fathom_web::CSP);
    assert!(fathom_web::CSP.contains("default-src 'none'") && !fathom_web::CSP.contains("script-src"));
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert!(runs.contains("href=\"/runs/r-1\""), "{runs}");
    assert!(runs.contains("grpo &lt;b&gt;bold&lt;/b&gt;"), "{runs}");
    // Latest step's reward: step 2 has 30 of 35 episodes at 1, 5 at -1.
    assert!(runs.contains(&format!("{:.3}", (30.0 - 5.0) / 35.0)), "{runs}");

    let (status, _, run) = get(&app, "/runs/r-1").await;
    assert_eq!(status, StatusCode::OK);
    assert!(run.matches("<svg").count() >= 12, "a chart per curve: {run}");
    assert!(
        run.contains("reward (mean ± std)") && run.contains("fill-opacity"),
        "a reward band"
    );
    assert!(run.contains("tool calls per episode, by hops") && run.contains("2-hop"));
    assert!(run.contains(">KL</text>") && run.contains("grad norm"));
    assert!(
        run.contains("held-out") && run.contains("0.500"),
        "the evaluation table"
    );
    assert!(run.contains("&lt;/pre&gt;&lt;script&gt;"), "the configuration, escaped");
    assert!(run.contains("http-equiv=\"refresh\""), "a running run reloads itself");

    let (_, _, api) = get(&app, "/api/runs/r-1").await;
    let v: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert_eq!(v["steps"].as_array().unwrap().len(), 2);
    assert_eq!(v["steps"][0]["episodes"], 35);
    assert_eq!(v["updates"][1]["kl"], 0.02);

    // The episode list: 70 episodes in pages of 50, and filters.
    let (_, _, list) = get(&app, "/runs/r-1/episodes").await;
    assert_eq!(list.matches("href=\"/episodes/e-").count(), 50);
    assert!(list.contains("next →") && !list.contains("← previous"));
    let (_, _, page2) = get(&app, "/runs/r-1/episodes?page=1").await;
    assert_eq!(page2.matches("href=\"/episodes/e-").count(), 20);
    let api = |q: &str| {
        let app = app.clone();
        let q = q.to_string();
        async move {
            let (s, _, body) = get(&app, &format!("/api/runs/r-1/episodes?{q}")).await;
            assert_eq!(s, StatusCode::OK, "{q}: {body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            v["episodes"].as_array().unwrap().len()
        }
    };
    assert_eq!(api("step=2").await, 35);
    assert_eq!(api("step=2&min_reward=0").await, 30);
    assert_eq!(api("max_reward=-0.5").await, 20);
    assert_eq!(api("hops=2").await, 34);
    assert_eq!(api("source=sandbox-1hop&step=1").await, 18);
    assert_eq!(api("behaviour=planning").await, 24);
    assert_eq!(api("q=PERSON%2012").await, 2);
    assert_eq!(api("q=it%27s").await, 0, "quotes in the text filter are data");
    let (s, _, body) = get(&app, "/api/runs/r-1/episodes?step=x").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(body.contains("step must be a number"), "{body}");
    // A page number whose offset would overflow is refused, not a panic.
    for path in ["/runs/r-1/episodes", "/api/runs/r-1/episodes"] {
        let (s, _, body) = get(&app, &format!("{path}?page=368934881474191104")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(body.contains("past the last page"), "{body}");
    }

    // The hostile episode, and a normal one.
    let (status, _, ep) = get(&app, "/episodes/e-1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ep.matches("class=\"turn\"").count(), 2, "two assistant turns");
    assert_eq!(ep.matches("class=\"turn tool\"").count(), 1, "one tool response");
    assert!(
        ep.contains("class=\"tag\"") && ep.contains("planning (turn 0)"),
        "the behaviour tag"
    );
    assert!(ep.contains("<mark>"), "the evidence highlighted");
    assert!(ep.contains("&lt;iframe"), "the reader's notes, escaped");
    assert!(ep.contains("javascript:alert(6)"), "the request target, as text");
    assert!(
        ep.contains("href=\"/episodes/e-1/web/w-1\""),
        "a link to the recorded body"
    );
    let (status, _, raw) = get(&app, "/episodes/e-1/web/w-1").await;
    assert_eq!(status, StatusCode::OK, "{raw}");
    assert!(raw.contains("&lt;script&gt;alert(10)&lt;/script&gt;"), "{raw}");
    let (status, _, _) = get(&app, "/episodes/e-2/web/w-1").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a request of another episode");
    let (_, _, ep2) = get(&app, "/episodes/e-40").await;
    assert!(ep2.contains("born in 1950") && ep2.contains("1904"), "{ep2}");
    assert!(ep2.contains("<span class=\"answer\">&lt;answer&gt;1904"), "{ep2}");
    // The ground truth the answer is judged against is in the episode's row
    // (it is a list in the table; it used to print as an empty cell).
    let row = ep2
        .split("<th>ground truth</th>")
        .nth(1)
        .and_then(|t| t.split("</tr>").nth(1))
        .unwrap_or_default();
    assert!(
        row.starts_with("</thead><tbody><tr><td>1904</td><td>1904</td><td class=\"num\">"),
        "answer, then the ground-truth cell: {row}"
    );

    let (_, _, beh) = get(&app, "/behaviours").await;
    assert!(beh.contains("planning") && beh.contains("href=\"/episodes/e-"), "{beh}");
    let (_, _, cmp) = get(&app, "/compare?runs=r-1").await;
    assert_eq!(cmp.matches("<svg").count(), 4);

    for uri in [
        "/",
        "/runs/r-1",
        "/runs/r-1/episodes",
        "/runs/r-1/episodes?q=%3Cscript%3E",
        "/episodes/e-1",
        "/episodes/e-1/web/w-1",
        "/behaviours",
        "/compare?runs=r-1",
        "/sql?q=SELECT%20question%2C%20answer%20FROM%20episodes",
        "/sql?q=SELECT%20%27%3Cscript%3Ealert(1)%3C%2Fscript%3E%27%20AS%20x",
        "/runs/%3Cscript%3E",
    ] {
        let (_, headers, page) = get(&app, uri).await;
        assert_inert(&page, uri);
        assert_eq!(headers[header::CONTENT_SECURITY_POLICY], fathom_web::CSP, "{uri}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paths_sql_and_missing_tokens_are_refused() {
    let dir = fixture();
    let app = app(dir.path(), None);
    let (s, _, body) = get(&app, "/runs/r-99").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(body.contains("there is no run r-99"));
    for uri in ["/runs/..%2F..%2Fetc%2Fpasswd", "/episodes/e-1%27%20OR%201=1", "/runs/1"] {
        let (s, _, body) = get(&app, uri).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {body}");
    }
    let (s, _, _) = get(&app, "/assets/../Cargo.toml").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The console: read-only, errors shown, CSV and JSON.
    let (s, _, page) = get(&app, "/sql?q=DROP%20TABLE%20episodes").await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains("read-only"), "{page}");
    let (s, _, body) = get(&app, "/api/sql?q=DELETE%20FROM%20episodes").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    let (s, headers, csv) = get(
        &app,
        "/sql.csv?q=SELECT%20step%2C%20count(*)%20AS%20n%20FROM%20episodes%20GROUP%20BY%20step%20ORDER%20BY%20step",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/csv"));
    assert_eq!(csv.trim(), "step,n\n1,35\n2,35");
    let (_, _, page) = get(
        &app,
        "/sql?q=SELECT%20step%2C%20count(*)%20AS%20n%20FROM%20episodes%20GROUP%20BY%20step",
    )
    .await;
    assert!(
        page.contains("2 rows") && page.find("<th>step</th>") < page.find("<th>n</th>"),
        "{page}"
    );
    assert_eq!(headers["x-fathom-rows-capped"], "no");
    // Five million rows asked for: the console plans at most 1,001 and
    // says there are more, instead of holding them all.
    let (s, _, body) = get(&app, "/api/sql?q=SELECT%20*%20FROM%20generate_series(1%2C5000000)").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["rows"].as_array().unwrap().len(), 1000);
    assert_eq!(v["more"], true);
    let (_, _, page) = get(&app, "/sql?q=SELECT%20*%20FROM%20generate_series(1%2C5000000)").await;
    assert!(page.contains("the first 1000 rows (there are more"), "{page}");

    // With a token, nothing is served without it.
    let token = "s3cret-token-123";
    let app = self::app(dir.path(), Some(token));
    let (s, headers, _) = get(&app, "/runs/r-1").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[header::CONTENT_SECURITY_POLICY], fathom_web::CSP);
    let (s, _, _) = get(&app, "/api/runs?token=wrong-token-1234").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let req = Request::get("/api/runs")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let (s, _, body) = get_with(&app, req).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, headers, _) = get(&app, &format!("/?token={token}")).await;
    assert_eq!(s, StatusCode::OK);
    let cookie = headers[header::SET_COOKIE].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let req = Request::get("/runs/r-1")
        .header(header::COOKIE, cookie.split(';').next().unwrap())
        .body(Body::empty())
        .unwrap();
    let (s, _, _) = get_with(&app, req).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_pages_follow_new_events() {
    let dir = fixture();
    let app = fathom_web::router(fathom_web::AppState::new(fathom_web::Config {
        data: dir.path().to_path_buf(),
        token: None,
        refresh: Duration::ZERO,
        replay: None,
    }));
    let runs = |body: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["run_id"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, _, first) = get(&app, "/api/runs").await;
    let (_, _, again) = get(&app, "/api/runs").await;
    assert_eq!(first, again);
    assert_eq!(runs(&first), ["r-1"]);
    {
        let store = Store::open(dir.path(), Options::default()).unwrap();
        store
            .append(&[ev(
                2,
                999,
                RunStarted {
                    name: "second".into(),
                    run_kind: RunKind::Eval,
                    config_json: "{}".into(),
                    seed: 0,
                    policy: "scripted".into(),
                    model: String::new(),
                    code_version: "test".into(),
                    attempt: 0,
                },
            )])
            .unwrap();
        store.close().unwrap();
    }
    let (_, _, after) = get(&app, "/api/runs").await;
    assert_eq!(runs(&after), ["r-2", "r-1"], "the new run appears");
}

/// A replay check standing in for the binary's: identical for even
/// episode numbers, diverging (with hostile recorded text) for odd ones.
struct FakeReplay(std::sync::Mutex<Vec<String>>);

impl fathom_web::ReplayCheck for FakeReplay {
    fn check(
        &self,
        episode: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<fathom_web::ReplayVerdict, String>> + Send + '_>>
    {
        self.0.lock().unwrap().push(episode.clone());
        Box::pin(async move {
            let n: u64 = episode.trim_start_matches("e-").parse().unwrap();
            if n == 999 {
                return Err("the log is in use by another fathom process".into());
            }
            let identical = n.is_multiple_of(2);
            Ok(fathom_web::ReplayVerdict {
                identical,
                summary: format!("{episode}: 3 turn(s), 40 sampled token(s)"),
                turn: (!identical).then_some(2),
                cause: (!identical).then(|| "a sampled token differs".to_string()),
                recorded: (!identical).then(|| "</pre><script>alert(1)</script>".to_string()),
                produced: (!identical).then(|| "<img src=x onerror=alert(2)>".to_string()),
                details: vec!["token 7: recorded 12 \"<b>\" | produced 99 \"x\"".into()],
            })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_action_runs_the_supplied_check_and_shows_its_verdict_inert() {
    let dir = fixture();
    let fake = Arc::new(FakeReplay(std::sync::Mutex::new(Vec::new())));
    let app = fathom_web::router(fathom_web::AppState::new(fathom_web::Config {
        data: dir.path().to_path_buf(),
        token: None,
        refresh: Duration::from_secs(60),
        replay: Some(fathom_web::Replay(fake.clone())),
    }));
    let (_, _, episode) = get(&app, "/episodes/e-3").await;
    assert!(
        episode.contains("<form method=\"post\" action=\"/episodes/e-3/replay\">"),
        "{episode}"
    );
    let (_, _, without) = get(&self::app(dir.path(), None), "/episodes/e-3").await;
    assert!(!without.contains("/replay"), "no action without a check");

    let post = |uri: &str| Request::post(uri).body(Body::empty()).unwrap();
    let (status, _, page) = get_with(&app, post("/episodes/e-3/replay")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_inert(&page, "/episodes/e-3/replay");
    assert!(
        page.contains("Diverges at turn 2") && page.contains("a sampled token differs"),
        "{page}"
    );
    assert!(
        page.contains("&lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(page.contains("&lt;img src=x onerror=alert(2)&gt;"), "{page}");
    let (_, _, page) = get_with(&app, post("/episodes/e-4/replay")).await;
    assert!(page.contains("Identical") && page.contains("e-4: 3 turn(s)"), "{page}");
    let (status, _, api) = get_with(&app, post("/api/episodes/e-3/replay")).await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert_eq!(v["verdict"]["identical"], false);
    assert_eq!(v["verdict"]["turn"], 2);
    assert_eq!(*fake.0.lock().unwrap(), vec!["e-3", "e-4", "e-3"]);

    // Errors are pages that say why; a GET runs nothing; ids are parsed.
    let (status, _, page) = get_with(&app, post("/episodes/e-999/replay")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(page.contains("in use by another fathom process"), "{page}");
    let (status, _, _) = get(&app, "/episodes/e-3/replay").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _, _) = get_with(&app, post("/episodes/x';--/replay")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(fake.0.lock().unwrap().len(), 4, "nothing else ran");
    let (status, _, _) = get_with(&self::app(dir.path(), None), post("/episodes/e-3/replay")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A form on another site posting to the dashboard (CSRF) runs nothing;
    // the dashboard's own form (its Origin is the Host it posts to) does.
    let from = |origin: Option<&str>, site: Option<&str>| {
        let mut r = Request::post("/episodes/e-4/replay").header("host", "127.0.0.1:8080");
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        if let Some(s) = site {
            r = r.header("sec-fetch-site", s);
        }
        r.body(Body::empty()).unwrap()
    };
    for (origin, site) in [
        (Some("http://evil.example"), Some("cross-site")),
        (Some("http://127.0.0.1:9999"), None),
        (Some("null"), None),
        (Some("null"), Some("cross-site")),
        (None, Some("cross-site")),
    ] {
        let (status, _, body) = get_with(&app, from(origin, site)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{origin:?} {site:?}: {body}");
        assert!(body.contains("may not run actions on this dashboard"), "{body}");
    }
    assert_eq!(fake.0.lock().unwrap().len(), 4, "no cross-site request ran a check");
    let (status, _, page) = get_with(&app, from(Some("http://127.0.0.1:8080"), Some("same-origin"))).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    // The dashboard's own form under its no-referrer policy: Origin null.
    let (status, _, page) = get_with(&app, from(Some("null"), Some("same-origin"))).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(fake.0.lock().unwrap().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn episodes_read_through_the_writers_index_equal_the_tables() {
    let dir = fixture();
    let ids: Vec<String> = (1..=70).step_by(3).map(|n| format!("e-{n}")).collect();
    let fetch = |app: Router, ids: Vec<String>| async move {
        let mut out = Vec::new();
        for e in &ids {
            let (status, _, body) = get(&app, &format!("/api/episodes/{e}")).await;
            assert_eq!(status, StatusCode::OK, "{e}: {body}");
            out.push(serde_json::from_str::<serde_json::Value>(&body).unwrap());
        }
        out
    };
    // No writer: the tables answer.
    let from_tables = fetch(app(dir.path(), None), ids.clone()).await;
    // A writer holding the log serves each episode from its index.
    let store = Arc::new(Store::open(dir.path(), Options::default()).unwrap());
    let server = fathom_store::tail::TailServer::start(store.clone()).unwrap();
    let from_log = fetch(app(dir.path(), None), ids.clone()).await;
    drop(server);
    for ((e, mut a), mut b) in ids.iter().zip(from_tables).zip(from_log) {
        assert_eq!(a["source"], "tables", "{e}");
        assert_eq!(b["source"], "log", "{e}");
        a.as_object_mut().unwrap().remove("source");
        b.as_object_mut().unwrap().remove("source");
        assert_eq!(a, b, "{e}: the same rows from both sources");
        for part in ["turns", "web_requests"] {
            assert!(!a[part].as_array().unwrap().is_empty(), "{e}: {part}");
        }
    }
}
