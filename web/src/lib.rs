//! The dashboard (`fathom serve`): an axum server over the SQL layer.
//! Pages are rendered on the server (charts as SVG, no JavaScript), and
//! every page has a JSON twin under `/api` built by the same function, so
//! the HTML shows exactly what the API returns. Documented in `docs/API.md`.
//!
//! Security: the binary binds to 127.0.0.1 unless told otherwise; with a
//! token, every route needs it (`Authorization: Bearer T`, or `?token=T`
//! once, which sets an HttpOnly cookie); every response carries a strict
//! Content-Security-Policy that allows no script at all; everything
//! recorded is escaped ([`html::esc`]); ids in paths are parsed, never
//! pasted into SQL; SQL is read-only (the query layer refuses the rest).
//!
//! **Architecture Invariant:** this crate never writes to the log.

pub mod html;
mod pages;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fathom_core::Clock;
use fathom_query::{Db, OpenOptions, QueryError};
use tokio::sync::Mutex;

/// The server's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data directory.
    pub data: PathBuf,
    /// A token every request must carry, when set.
    pub token: Option<String>,
    /// How long one opened view of the tables serves requests before it
    /// is reopened to see newer events.
    pub refresh: Duration,
    /// What the episode page's replay action runs; without it the page
    /// offers none.
    pub replay: Option<Replay>,
}

/// What a replay check found (`fathom replay --episode … --check`), in
/// words ready to show.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReplayVerdict {
    /// Whether the re-run was identical.
    pub identical: bool,
    /// One line: the policy, the turns, tokens and web exchanges compared, the times.
    pub summary: String,
    /// The first diverging turn, when there is one.
    pub turn: Option<u32>,
    /// Why it diverged.
    pub cause: Option<String>,
    /// What was recorded at the divergence.
    pub recorded: Option<String>,
    /// What the re-run produced there.
    pub produced: Option<String>,
    /// The first differing token and other details, one per line.
    pub details: Vec<String>,
}

/// Re-runs a recorded episode from the log and compares it with its
/// recording. The web crate only defines it: the binary implements it with
/// the trainer's replayer, so the dashboard depends on no model code.
pub trait ReplayCheck: Send + Sync {
    /// Checks episode `episode` (`e-12`); `Err` says why it could not run.
    fn check(
        &self,
        episode: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<ReplayVerdict, String>> + Send + '_>>;
}

/// A shared [`ReplayCheck`].
#[derive(Clone)]
pub struct Replay(pub Arc<dyn ReplayCheck>);

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Replay")
    }
}

/// The tables, reopened now and then so that pages follow a training run.
struct Tables {
    db: Option<(Arc<Db>, fathom_core::Timestamp)>,
    /// A newer view is being opened in the background.
    opening: bool,
    /// The last event the open tables cover: page data computed over the
    /// same events is reused.
    last_seq: u64,
    /// Page data by route and query, with the `last_seq` it is for.
    pages: std::collections::HashMap<String, CachedPage>,
}

/// One page's data: the newest computed, and the computation for newer
/// tables when one is under way.
#[derive(Default)]
struct CachedPage {
    ready: Option<(u64, Arc<serde_json::Value>)>,
    pending: Option<(u64, Arc<tokio::sync::OnceCell<Arc<serde_json::Value>>>)>,
}

/// Page data kept at most (the oldest entries go first).
const CACHED_PAGES: usize = 512;

/// Shared by every request.
#[derive(Clone)]
pub struct AppState {
    config: Arc<Config>,
    tables: Arc<Mutex<Tables>>,
    /// Questions by id per run and step (`r-1/3`) or per run (`r-1`), as
    /// the `questions` table gave them at a `last_seq` (a recorded question
    /// never changes; they are read again only when one is missing and the
    /// tables moved on).
    questions: Arc<Mutex<std::collections::HashMap<String, (u64, pages::QuestionsCell)>>>,
    clock: Arc<dyn Clock>,
}

impl AppState {
    /// State for `config`.
    pub fn new(config: Config) -> AppState {
        AppState {
            config: Arc::new(config),
            tables: Arc::new(Mutex::new(Tables {
                db: None,
                opening: false,
                last_seq: 0,
                pages: Default::default(),
            })),
            questions: Default::default(),
            clock: Arc::new(fathom_core::SystemClock),
        }
    }

    async fn db(&self, fresh: bool) -> Result<Arc<Db>, QueryError> {
        let now = self.clock.now();
        {
            let mut t = self.tables.lock().await;
            if let Some((db, at)) = &t.db
                && !fresh
            {
                let stale = now.nanos_since(*at) >= self.config.refresh.as_nanos() as u64;
                if !stale {
                    return Ok(db.clone());
                }
                // Readers keep the tables they have while newer ones open
                // in the background (opening reads the log's tail, which
                // takes a while during a busy run).
                if !self.config.refresh.is_zero() {
                    let db = db.clone();
                    if !t.opening {
                        t.opening = true;
                        let this = self.clone();
                        tokio::spawn(async move {
                            let opened = Db::open(&this.config.data, open_options()).await;
                            let mut t = this.tables.lock().await;
                            t.opening = false;
                            if let Ok(db) = opened {
                                t.last_seq = db.source().last_seq;
                                t.db = Some((Arc::new(db), this.clock.now()));
                            }
                        });
                    }
                    return Ok(db);
                }
            }
        }
        let db = Arc::new(Db::open(&self.config.data, open_options()).await?);
        let mut t = self.tables.lock().await;
        t.last_seq = db.source().last_seq;
        t.db = Some((db.clone(), now));
        Ok(db)
    }

    /// The data of a page, computed by `make` or reused when the tables
    /// have not changed since it was computed: many readers of a training
    /// run share one computation per refresh. When the tables have moved
    /// on, the first reader computes the page again and the others are
    /// served the previous data meanwhile, so no reader queues behind it.
    pub(crate) async fn cached<F, Fut>(&self, key: String, make: F) -> Result<serde_json::Value, WebError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<serde_json::Value, WebError>>,
    {
        self.db(false).await?;
        self.cached_now(key, make).await
    }

    /// [`AppState::cached`] against the tables as last opened.
    async fn cached_now<F, Fut>(&self, key: String, make: F) -> Result<serde_json::Value, WebError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<serde_json::Value, WebError>>,
    {
        let (seq, cell) = {
            let mut t = self.tables.lock().await;
            let seq = t.last_seq;
            if t.pages.len() >= CACHED_PAGES && !t.pages.contains_key(&key) {
                t.pages.retain(|_, c| c.ready.as_ref().is_some_and(|(s, _)| *s == seq));
                if t.pages.len() >= CACHED_PAGES {
                    t.pages.clear();
                }
            }
            let page = t.pages.entry(key.clone()).or_default();
            let stale = match &page.ready {
                Some((s, v)) if *s == seq => return Ok(v.as_ref().clone()),
                Some((_, v)) => Some(v.clone()),
                None => None,
            };
            match &page.pending {
                // Newer tables: the first request computes the page again
                // while the others are served the previous data.
                Some((s, _)) if *s == seq && stale.is_some() => {
                    drop(t);
                    return Ok(stale.expect("checked").as_ref().clone());
                }
                Some((s, cell)) if *s == seq => (seq, cell.clone()),
                _ => {
                    let cell = Arc::new(tokio::sync::OnceCell::new());
                    page.pending = Some((seq, cell.clone()));
                    (seq, cell)
                }
            }
        };
        let made = cell
            .get_or_try_init(|| async { make().await.map(Arc::new) })
            .await
            .cloned();
        let mut t = self.tables.lock().await;
        let value = match made {
            Ok(v) => v,
            Err(e) => {
                // The next request tries again.
                if let Some(page) = t.pages.get_mut(&key)
                    && page.pending.as_ref().is_some_and(|(s, _)| *s == seq)
                {
                    page.pending = None;
                }
                return Err(e);
            }
        };
        let page = t.pages.entry(key).or_default();
        if page.ready.as_ref().is_none_or(|(s, _)| *s < seq) {
            page.ready = Some((seq, value.clone()));
        }
        if page.pending.as_ref().is_some_and(|(s, _)| *s <= seq) {
            page.pending = None;
        }
        drop(t);
        Ok(value.as_ref().clone())
    }

    /// Rows of a read-only query as JSON objects.
    pub(crate) async fn rows(&self, sql: &str) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, WebError> {
        Ok(self.table(sql, None).await?.1)
    }

    /// A read-only query's column names, in order, and its rows (at most
    /// `max_rows`, for queries a visitor wrote).
    pub(crate) async fn table(
        &self,
        sql: &str,
        max_rows: Option<usize>,
    ) -> Result<(Vec<String>, Vec<pages::Row>), WebError> {
        let mut fresh = false;
        loop {
            let db = self.db(fresh).await?;
            let result = match max_rows {
                Some(n) => db.query_limited(sql, n).await,
                None => db.query(sql).await,
            };
            match result {
                Err(e) if e.is_stale() && !fresh => fresh = true,
                Err(e) => return Err(e.into()),
                Ok(batches) => {
                    let columns = batches
                        .first()
                        .map(|b| b.schema().fields().iter().map(|f| f.name().clone()).collect())
                        .unwrap_or_default();
                    let text = fathom_query::format::json(&batches).map_err(WebError::Internal)?;
                    let v: serde_json::Value =
                        serde_json::from_str(&text).map_err(|e| WebError::Internal(e.to_string()))?;
                    let rows = match v {
                        serde_json::Value::Array(a) => a
                            .into_iter()
                            .filter_map(|r| match r {
                                serde_json::Value::Object(m) => Some(m),
                                _ => None,
                            })
                            .collect(),
                        _ => Vec::new(),
                    };
                    return Ok((columns, rows));
                }
            }
        }
    }

    /// The last event the open tables cover.
    pub(crate) async fn last_seq(&self) -> u64 {
        self.tables.lock().await.last_seq
    }

    /// The data directory.
    pub fn data(&self) -> &std::path::Path {
        &self.config.data
    }
}

/// What can go wrong serving a request.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// Nothing there.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// A query failed (for the SQL console: the user's query).
    #[error(transparent)]
    Query(#[from] QueryError),
    /// Something else.
    #[error("{0}")]
    Internal(String),
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let status = match &self {
            WebError::NotFound(_) => StatusCode::NOT_FOUND,
            WebError::BadRequest(_) | WebError::Query(QueryError::Sql(_) | QueryError::ReadOnly(_)) => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = html::page(
            status.canonical_reason().unwrap_or("error"),
            &format!("<pre>{}</pre>", html::esc(&self.to_string())),
        );
        (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
    }
}

/// The Content-Security-Policy of every response: no script, no plugin,
/// no frame, styles and images only from the server itself.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Why a request that would change something comes from another site
/// (a cross-site form post, CSRF), if it does: its `Origin` is not this
/// server (the `Host` it was sent to), or the browser says it is cross-site.
/// Requests without either header (curl, scripts) are not a browser's.
/// Under this server's `Referrer-Policy: no-referrer` a browser sends
/// `Origin: null` even for its own forms; `Sec-Fetch-Site` then decides.
fn cross_site(h: &HeaderMap) -> Option<String> {
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let origin = h.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if let Some(origin) = origin.filter(|o| *o != "null") {
        let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
        return (origin_host != host)
            .then(|| format!("a page of {origin} may not run actions on this dashboard ({host})"));
    }
    match h.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some("same-origin" | "none") => None,
        Some(site) => Some(format!(
            "a {site} request may not run actions on this dashboard ({host})"
        )),
        None if origin.is_some() => Some(format!(
            "a request of unknown origin (Origin: null, no Sec-Fetch-Site) may not run actions on this dashboard ({host})"
        )),
        None => None,
    }
}

async fn headers_and_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !matches!(*req.method(), Method::GET | Method::HEAD)
        && let Some(why) = cross_site(req.headers())
    {
        let mut r = (
            StatusCode::FORBIDDEN,
            format!("{why}; open the dashboard itself and use its buttons\n"),
        )
            .into_response();
        secure(r.headers_mut());
        return r;
    }
    let mut set_cookie = None;
    if let Some(token) = &state.config.token {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let cookie = cookie_token(req.headers());
        let query = req.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .map(|v| v.to_string())
        });
        let ok = bearer.is_some_and(|b| eq(b, token))
            || cookie.as_deref().is_some_and(|c| eq(c, token))
            || query.as_deref().is_some_and(|q| eq(q, token));
        if !ok {
            let mut r = (
                StatusCode::UNAUTHORIZED,
                "this dashboard needs its token: open it with ?token=… or send Authorization: Bearer …\n",
            )
                .into_response();
            secure(r.headers_mut());
            return r;
        }
        if query.is_some() {
            set_cookie = Some(format!("fathom_token={token}; HttpOnly; SameSite=Strict; Path=/"));
        }
    }
    let started = state.clock.now();
    let mut response = next.run(req).await;
    secure(response.headers_mut());
    // How long the server took, for the load benchmark and browsers' tools.
    let ms = state.clock.now().nanos_since(started) as f64 / 1e6;
    if let Ok(v) = HeaderValue::from_str(&format!("app;dur={ms:.2}")) {
        response.headers_mut().insert("server-timing", v);
    }
    if let Some(c) = set_cookie
        && let Ok(v) = HeaderValue::from_str(&c)
    {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

fn secure(h: &mut HeaderMap) {
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

fn cookie_token(h: &HeaderMap) -> Option<String> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix("fathom_token=").map(|s| s.to_string()))
}

/// Compares in time independent of where the strings differ.
fn eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        html::STYLE,
    )
}

/// The dashboard's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(pages::runs_page))
        .route("/api/runs", get(pages::runs_api))
        .route("/runs/{id}", get(pages::run_page))
        .route("/api/runs/{id}", get(pages::run_api))
        .route("/runs/{id}/episodes", get(pages::episodes_page))
        .route("/api/runs/{id}/episodes", get(pages::episodes_api))
        .route("/compare", get(pages::compare_page))
        .route("/episodes/{id}", get(pages::episode_page))
        .route("/api/episodes/{id}", get(pages::episode_api))
        .route("/episodes/{id}/web/{request}", get(pages::recorded_page))
        .route("/episodes/{id}/replay", post(pages::replay_page))
        .route("/api/episodes/{id}/replay", post(pages::replay_api))
        .route("/behaviours", get(pages::behaviours_page))
        .route("/api/behaviours", get(pages::behaviours_api))
        .route("/sql", get(pages::sql_page))
        .route("/sql.csv", get(pages::sql_csv))
        .route("/api/sql", get(pages::sql_api))
        .route("/assets/style.css", get(style))
        .fallback(|| async { WebError::NotFound("no such page".into()) })
        .layer(middleware::from_fn_with_state(state.clone(), headers_and_token))
        .with_state(state)
}

/// Serves the dashboard on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, config: Config) -> std::io::Result<()> {
    axum::serve(listener, router(AppState::new(config))).await
}

/// One partition per query: the server runs many queries at once, so
/// splitting each over the cores only adds overhead.
fn open_options() -> OpenOptions {
    OpenOptions {
        target_partitions: 1,
        ..OpenOptions::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn state() -> AppState {
        AppState::new(Config {
            data: PathBuf::from("unused"),
            token: None,
            refresh: Duration::from_secs(1),
            replay: None,
        })
    }

    async fn tables_at(state: &AppState, seq: u64) {
        state.tables.lock().await.last_seq = seq;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn newer_tables_are_computed_once_while_other_readers_get_the_previous_page() {
        let state = state();
        let made = Arc::new(AtomicU32::new(0));
        let page = |v: u64, gate: Option<Arc<tokio::sync::Notify>>| {
            let made = made.clone();
            move || async move {
                made.fetch_add(1, Ordering::SeqCst);
                if let Some(g) = gate {
                    g.notified().await;
                }
                Ok::<_, WebError>(serde_json::json!({ "v": v }))
            }
        };
        tables_at(&state, 1).await;
        let first = state.cached_now("k".into(), page(1, None)).await.unwrap();
        assert_eq!(first["v"], 1);
        // Same tables: served from the cache, nothing computed.
        let again = state.cached_now("k".into(), page(99, None)).await.unwrap();
        assert_eq!((again["v"].as_u64(), made.load(Ordering::SeqCst)), (Some(1), 1));

        // The tables move on; the first reader's computation is held back.
        tables_at(&state, 2).await;
        let gate = Arc::new(tokio::sync::Notify::new());
        let slow = {
            let state = state.clone();
            let make = page(2, Some(gate.clone()));
            tokio::spawn(async move { state.cached_now("k".into(), make).await })
        };
        while made.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        // Eight readers meanwhile: each gets the previous page at once and
        // none starts a computation of its own.
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let state = state.clone();
                let make = page(77, None);
                tokio::spawn(async move { state.cached_now("k".into(), make).await })
            })
            .collect();
        for r in readers {
            assert_eq!(r.await.unwrap().unwrap()["v"], 1);
        }
        assert_eq!(made.load(Ordering::SeqCst), 2, "one computation for the newer tables");
        gate.notify_one();
        assert_eq!(slow.await.unwrap().unwrap()["v"], 2);
        let now = state.cached_now("k".into(), page(88, None)).await.unwrap();
        assert_eq!((now["v"].as_u64(), made.load(Ordering::SeqCst)), (Some(2), 2));

        // A failed computation is not kept: the next reader tries again.
        tables_at(&state, 3).await;
        let failing = || async { Err::<serde_json::Value, _>(WebError::Internal("boom".into())) };
        assert!(state.cached_now("k".into(), failing).await.is_err());
        let retried = state.cached_now("k".into(), page(3, None)).await.unwrap();
        assert_eq!((retried["v"].as_u64(), made.load(Ordering::SeqCst)), (Some(3), 3));
    }
}
