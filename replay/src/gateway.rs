//! The gateway: every search and page fetch an agent makes goes through
//! here, in one of three modes.
//!
//! - **live**: real HTTP (reqwest): timeouts, retries with backoff on 429
//!   and 5xx (honouring `Retry-After`), a per-host concurrency limit, a
//!   response size cap, content-type handling and charset decoding, and the
//!   SSRF guard of [`crate::policy`].
//! - **record**: live, plus every exchange (each attempt) appended to the
//!   log as a `WebExchange` event with its body in the blob store.
//! - **replay**: answers only from recorded exchanges, matched on the
//!   canonical request key and consumed in recorded order; no socket is
//!   opened, and a request the recording does not hold is a divergence
//!   error naming the run, episode, turn and request. A replay gateway can
//!   also record what it serves into a log (source `replay`, for
//!   counterfactual re-runs that become episodes of their own) and fall
//!   back to a live or sandbox web on a miss ([`Gateway::on_miss`]).
//!
//! A request the address guard refuses before any attempt is recorded
//! too, with `attempt = 0`, so a replay gives the policy the same refusal.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fathom_core::event::{Header, WebExchange, WebKind, WebSource};
use fathom_core::{Clock, EpisodeId, Event, IdKind, Payload, Record, RequestId, RunId};
use fathom_store::{LogRead, Store};

use crate::canonical;
use crate::html;
use crate::policy::{AddressPolicy, Refused};

/// How the gateway reaches the web.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Real HTTP, nothing recorded.
    Live,
    /// Real HTTP, every exchange recorded.
    Record,
    /// Recorded exchanges only; no network.
    Replay,
}

/// A search API. Its `Debug` form never shows the key (configurations are
/// recorded in the log).
#[derive(Clone, PartialEq, Eq)]
pub enum SearchBackend {
    /// Serper-compatible: `POST {url}` with `{"q", "num"}` and `X-API-KEY`.
    Serper {
        /// The endpoint (the sandbox's `/search`, or Serper's).
        url: String,
        /// The API key, if the service needs one.
        key: Option<String>,
    },
    /// SearXNG: `GET {url}?q=…&format=json`.
    Searxng {
        /// The endpoint.
        url: String,
    },
}

impl std::fmt::Debug for SearchBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SearchBackend::Serper { url, key } => f
                .debug_struct("Serper")
                .field("url", url)
                .field("key", &key.as_ref().map(|_| "<redacted>"))
                .finish(),
            SearchBackend::Searxng { url } => f.debug_struct("Searxng").field("url", url).finish(),
        }
    }
}

impl SearchBackend {
    fn name(&self) -> &'static str {
        match self {
            SearchBackend::Serper { .. } => "serper",
            SearchBackend::Searxng { .. } => "searxng",
        }
    }
}

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The search API.
    pub search: SearchBackend,
    /// Which addresses may be reached.
    pub policy: AddressPolicy,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Retries after the first attempt, on 429, 5xx, timeouts and transport errors.
    pub retries: u32,
    /// First backoff delay; doubles per retry (a `Retry-After` wins, up to 30 s).
    pub backoff: Duration,
    /// Bodies are cut at this many bytes (and marked truncated).
    pub max_body_bytes: usize,
    /// Concurrent requests per host.
    pub per_host: usize,
    /// Results per search query.
    pub results_per_query: usize,
    /// What to record as the source of live responses.
    pub source: WebSource,
    /// Remote gateway services that make the HTTP attempts (`fathom
    /// gateway serve`); `None` makes them from this process.
    pub remote: Option<Arc<crate::remote::Remotes>>,
}

impl GatewayConfig {
    /// Settings for a search backend, with the defaults.
    pub fn new(search: SearchBackend) -> Self {
        GatewayConfig {
            search,
            policy: AddressPolicy::default(),
            timeout: Duration::from_secs(15),
            retries: 3,
            backoff: Duration::from_millis(250),
            max_body_bytes: 5 << 20,
            per_host: 4,
            results_per_query: fathom_core::protocol::RESULTS_PER_QUERY,
            source: WebSource::Live,
            remote: None,
        }
    }

    /// Settings for the sandbox: its addresses allowed, its source label.
    pub fn sandbox(search_url: String, addrs: Vec<SocketAddr>) -> Self {
        let mut c = GatewayConfig::new(SearchBackend::Serper {
            url: search_url,
            key: None,
        });
        c.policy.allowed = addrs;
        c.source = WebSource::Sandbox;
        c
    }
}

/// On whose behalf a request is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// The run.
    pub run: RunId,
    /// The episode, if any.
    pub episode: Option<EpisodeId>,
    /// The turn, if any.
    pub turn: Option<u32>,
}

/// Why a web request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WebError {
    /// The SSRF guard refused it.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// No answer in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The connection failed.
    #[error("transport error: {0}")]
    Transport(String),
    /// The server answered with an error status (after retries).
    #[error("HTTP {0}")]
    Status(u16),
    /// The content is neither HTML nor text.
    #[error("unsupported content type '{0}'")]
    Unsupported(String),
    /// The search API's answer could not be read.
    #[error("search backend answered something unreadable: {0}")]
    BadSearchResponse(String),
    /// Replay: the recording does not hold this request.
    #[error("replay divergence: run {run}, episode {episode}, turn {turn}: request '{request}' was never recorded")]
    Divergence {
        /// The run.
        run: RunId,
        /// The episode (`-` when none).
        episode: String,
        /// The turn (`-` when none).
        turn: String,
        /// The canonical request.
        request: String,
    },
    /// Recording to the log failed.
    #[error("recording the exchange failed: {0}")]
    Record(String),
    /// Replay: the recorded error of the exchange, worded as it was.
    #[error("{0}")]
    Recorded(String),
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SearchResult {
    /// Title.
    pub title: String,
    /// URL.
    pub url: String,
    /// Snippet.
    pub snippet: String,
}

/// A fetched page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The URL asked for.
    pub url: String,
    /// HTTP status.
    pub status: u16,
    /// Declared content type.
    pub content_type: String,
    /// The body as received (up to the cap).
    pub body: Vec<u8>,
    /// Whether the body was cut at the cap.
    pub truncated: bool,
    /// Readable text: HTML converted, plain text decoded.
    pub text: String,
    /// The recorded exchange's id, when the gateway records or replays.
    pub request_id: Option<RequestId>,
}

/// One exchange as seen on the wire (or in the recording).
#[derive(Debug, Clone, PartialEq)]
struct Exchange {
    /// The recorded request's id (record and replay modes).
    request_id: Option<RequestId>,
    /// The attempt (from 1; 0 for a request refused before any attempt).
    attempt: u32,
    status: u16,
    headers: Vec<Header>,
    body: Vec<u8>,
    truncated: bool,
    error: Option<WebError>,
    latency_ns: u64,
    /// The page's text as a remote gateway service read it (with this
    /// process's reader); never recorded: replay reads the recorded body.
    text: Option<String>,
}

impl Exchange {
    /// An attempt that got no answer, only `error`.
    fn failed(attempt: u32, error: WebError) -> Exchange {
        Exchange {
            request_id: None,
            attempt,
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
            truncated: false,
            error: Some(error),
            latency_ns: 0,
            text: None,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|h| h.name == name).map(|h| h.value.as_str())
    }

    fn retryable(&self) -> bool {
        self.attempt > 0
            && matches!(
                self.error,
                Some(WebError::Timeout(_)) | Some(WebError::Transport(_)) | Some(WebError::Recorded(_))
            )
            || self.status == 429
            || (500..600).contains(&self.status)
    }
}

/// One HTTP attempt as data: what a gateway sends, from this process or
/// through a remote gateway service. The body travels beside it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WireRequest {
    /// `GET` or `POST`.
    pub method: String,
    /// Where to.
    pub url: String,
    /// Request headers.
    pub headers: Vec<(String, String)>,
    /// Request body.
    #[serde(skip)]
    pub body: Vec<u8>,
    /// Whole-request timeout.
    pub timeout_ms: u64,
    /// The response body is cut at this many bytes.
    pub max_body_bytes: usize,
    /// The response is a page for the browsing agent: a remote service
    /// reads it to text too ([`read_page`]), sparing the trainer's CPU.
    #[serde(default)]
    pub read: bool,
}

/// What one attempt gave, as a remote gateway service returns it. The
/// body travels beside it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WireExchange {
    /// HTTP status (0 when there was no answer).
    pub status: u16,
    /// The response headers kept for the record.
    pub headers: Vec<Header>,
    /// The body as received, up to the cap.
    #[serde(skip)]
    pub body: Vec<u8>,
    /// Whether the body was cut at the cap.
    pub truncated: bool,
    /// Why the attempt failed, when it did.
    pub error: Option<WireError>,
    /// How long the attempt took.
    pub latency_ns: u64,
    /// The page read to text, when the request asked for it and the
    /// response is a readable page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<WirePage>,
}

/// A page as a remote gateway service read it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WirePage {
    /// [`read_page`]'s text.
    pub text: String,
    /// The service's [`reader_fingerprint`]: the text is used only when it
    /// equals the trainer's own, so that replay (which reads the recorded
    /// body here) gives the same text.
    pub reader: String,
}

/// A failed attempt's error, as data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WireError {
    /// No answer in time.
    Timeout {
        /// The timeout.
        ms: u64,
    },
    /// The connection failed.
    Transport {
        /// What happened.
        message: String,
    },
    /// The address guard refused it.
    Refused {
        /// What was asked for.
        target: String,
        /// Why.
        reason: String,
    },
}

impl From<&WebError> for WireError {
    fn from(e: &WebError) -> WireError {
        match e {
            WebError::Timeout(d) => WireError::Timeout {
                ms: d.as_millis() as u64,
            },
            WebError::Refused(r) => WireError::Refused {
                target: r.target.clone(),
                reason: r.reason.clone(),
            },
            other => WireError::Transport {
                message: match other {
                    WebError::Transport(m) => m.clone(),
                    e => e.to_string(),
                },
            },
        }
    }
}

impl From<WireError> for WebError {
    fn from(e: WireError) -> WebError {
        match e {
            WireError::Timeout { ms } => WebError::Timeout(Duration::from_millis(ms)),
            WireError::Transport { message } => WebError::Transport(message),
            WireError::Refused { target, reason } => WebError::Refused(Refused { target, reason }),
        }
    }
}

impl WireExchange {
    fn from_exchange(ex: Exchange) -> WireExchange {
        WireExchange {
            status: ex.status,
            headers: ex.headers,
            body: ex.body,
            truncated: ex.truncated,
            error: ex.error.as_ref().map(WireError::from),
            latency_ns: ex.latency_ns,
            page: None,
        }
    }

    fn into_exchange(self) -> Exchange {
        Exchange {
            request_id: None,
            attempt: 1,
            status: self.status,
            headers: self.headers,
            body: self.body,
            truncated: self.truncated,
            error: self.error.map(WebError::from),
            latency_ns: self.latency_ns,
            text: self.page.map(|p| p.text),
        }
    }
}

/// Recorded exchanges, by canonical key, in recorded order.
#[derive(Debug, Default)]
pub struct Recording {
    by_key: Mutex<HashMap<String, VecDeque<Exchange>>>,
}

impl Clone for Recording {
    fn clone(&self) -> Self {
        Recording {
            by_key: Mutex::new(self.by_key.lock().unwrap_or_else(|e| e.into_inner()).clone()),
        }
    }
}

impl Recording {
    /// Loads the `WebExchange` events among `records` (with their bodies
    /// from the store's blobs).
    pub fn from_records(store: &dyn LogRead, records: &[Record]) -> Result<Recording, fathom_store::Error> {
        let mut by_key: HashMap<String, VecDeque<Exchange>> = HashMap::new();
        for r in records {
            let Payload::WebExchange(w) = &r.event.payload else {
                continue;
            };
            let body = match &w.body {
                Some(b) => store.blob(&b.digest)?.unwrap_or_default(),
                None => Vec::new(),
            };
            let error = w.error.as_ref().map(|e| WebError::Recorded(e.clone()));
            by_key.entry(w.canonical.clone()).or_default().push_back(Exchange {
                attempt: w.attempt,
                status: w.status,
                headers: w.headers.clone(),
                body,
                truncated: w.body_truncated,
                error,
                latency_ns: w.latency_ns,
                request_id: Some(w.request_id),
                text: None,
            });
        }
        Ok(Recording {
            by_key: Mutex::new(by_key),
        })
    }

    /// How many recorded exchanges are left to answer requests.
    pub fn remaining(&self) -> usize {
        self.by_key
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(VecDeque::len)
            .sum()
    }

    fn take(&self, key: &str) -> Option<Exchange> {
        self.by_key
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(key)
            .and_then(VecDeque::pop_front)
    }

    /// Whether the next recorded exchange of `key` is attempt `attempt`
    /// (a retry of the one just served, rather than a later request).
    fn next_is_attempt(&self, key: &str, attempt: u32) -> bool {
        self.by_key
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .and_then(VecDeque::front)
            .is_some_and(|e| e.attempt == attempt)
    }
}

/// One logical request: on whose behalf, what kind, as asked, its
/// canonical key and the URL it goes to.
#[derive(Clone, Copy)]
struct Asked<'a> {
    ctx: Context,
    kind: WebKind,
    target: &'a str,
    key: &'a str,
    url: &'a url::Url,
}

/// A request a replay gateway's recording did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Miss {
    /// On whose behalf it was made.
    pub context: Context,
    /// The canonical request.
    pub request: String,
    /// Whether the fallback web answered it (`on_miss`), rather than an error.
    pub answered: bool,
}

/// The gateway.
pub struct Gateway {
    mode: Mode,
    config: GatewayConfig,
    http: Option<reqwest::Client>,
    store: Option<Arc<Store>>,
    recording: Option<Recording>,
    misses: Mutex<Vec<Miss>>,
    clock: Arc<dyn Clock>,
    hosts: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// A DNS resolver that refuses names resolving to internal addresses.
struct GuardedResolver {
    policy: AddressPolicy,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            // Every address must pass: a name that resolves to one public
            // and one private address could be steered to the private one.
            for a in &addrs {
                if policy.allow_internal {
                    break;
                }
                if crate::policy::is_internal(a.ip()) {
                    return Err(Box::new(Refused {
                        target: host.clone(),
                        reason: format!("{host} resolves to the internal address {}", a.ip()),
                    }) as Box<dyn std::error::Error + Send + Sync>);
                }
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

fn build_client(config: &GatewayConfig) -> Result<reqwest::Client, WebError> {
    let policy = config.policy.clone();
    let redirect = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            return attempt.error("more than 5 redirects");
        }
        match policy.check_url(attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(refused) => attempt.error(refused),
        }
    });
    reqwest::Client::builder()
        .timeout(config.timeout)
        .redirect(redirect)
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver {
            policy: config.policy.clone(),
        }))
        .user_agent(concat!("fathom/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| WebError::Transport(e.to_string()))
}

/// Reads a fetched page to the text the browsing agent works on: HTML
/// converted ([`html::to_text`]), plain text and Markdown decoded, other
/// types refused. The same function runs in a remote gateway service, in
/// the trainer and in replay.
pub fn read_page(content_type: &str, body: &[u8]) -> Result<String, WebError> {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "text/html" | "application/xhtml+xml" | "" => Ok(html::to_text(&decode_body(content_type, body))),
        "text/plain" | "text/markdown" => Ok(decode_body(content_type, body)),
        other => Err(WebError::Unsupported(other.to_string())),
    }
}

/// What [`read_page`] makes of a fixed set of awkward pages (headings,
/// lists, tables, entities, scripts, comments, broken tags, other
/// charsets), hashed: two processes with the same fingerprint read pages
/// alike, so a remote service's text is used only when its fingerprint is
/// this process's own.
pub fn reader_fingerprint() -> &'static str {
    static FINGERPRINT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FINGERPRINT.get_or_init(|| fingerprint_of(&read_page))
}

/// A page reader: content type and body to text.
type ReadPage = dyn Fn(&str, &[u8]) -> Result<String, WebError>;

/// The fingerprint of a page reader (see [`reader_fingerprint`]).
fn fingerprint_of(read: &ReadPage) -> String {
    const PROBES: &[(&str, &[u8])] = &[
        (
            "text/html; charset=utf-8",
            b"<!DOCTYPE html><html><head><title>T</title><style>p{color:red}</style>\
              <script>var x = '<p>no</p>';</script></head><body><nav>menu</nav>\
              <h1>Heading &amp; more</h1><p>First  paragraph,\n wrapped.</p><!-- gone -->\
              <ul><li>one</li><li>two <b>bold</b></li></ul><table><tr><th>a</th><th>b</th></tr>\
              <tr><td>1</td><td>2</td></tr></table><p>a &lt; b &gt; c &#233; &#x4e2d; &nbsp;x</p>\
              <h3>Deep</h3><div>block<br>break</div><pre>  kept  </pre><p>broken <b",
        ),
        ("text/html; charset=iso-8859-1", b"<p>caf\xe9 na\xefve</p>"),
        ("", b"<article><h2>No type</h2><p>x < y and y > z</p></article>"),
        ("text/plain", b"plain  text\n\nkept as is"),
        ("text/markdown; charset=utf-8", "# Title\n- \u{4e2d}\u{6587}".as_bytes()),
        ("application/pdf", b"%PDF-1.7"),
    ];
    let mut h = blake3::Hasher::new();
    for (content_type, body) in PROBES {
        let read = read(content_type, body).unwrap_or_else(|e| format!("error: {e}"));
        h.update(&(read.len() as u64).to_le_bytes());
        h.update(read.as_bytes());
    }
    h.finalize().to_hex()[..16].to_string()
}

/// Decodes a body by the charset its content type declares (UTF-8 when
/// none, or when the label is unknown), replacing bad bytes.
pub fn decode_body(content_type: &str, body: &[u8]) -> String {
    let label = content_type
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("charset="))
        .next()
        .map(|c| c.trim_matches('"'));
    let encoding = label
        .and_then(|l| encoding_rs::Encoding::for_label(l.as_bytes()))
        .unwrap_or(encoding_rs::UTF_8);
    encoding.decode(body).0.into_owned()
}

fn describe(e: &reqwest::Error, timeout: Duration) -> WebError {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Refused>() {
            return WebError::Refused(r.clone());
        }
        source = s.source();
    }
    if e.is_timeout() {
        WebError::Timeout(timeout)
    } else {
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        WebError::Transport(msg)
    }
}

impl Gateway {
    /// A live gateway (records nothing).
    pub fn live(config: GatewayConfig, clock: Arc<dyn Clock>) -> Result<Gateway, WebError> {
        let http = Some(build_client(&config)?);
        Ok(Gateway {
            mode: Mode::Live,
            config,
            http,
            store: None,
            recording: None,
            misses: Mutex::default(),
            clock,
            hosts: Mutex::default(),
        })
    }

    /// A live gateway that records every exchange into `store`.
    pub fn record(config: GatewayConfig, store: Arc<Store>, clock: Arc<dyn Clock>) -> Result<Gateway, WebError> {
        let mut g = Gateway::live(config, clock)?;
        g.mode = Mode::Record;
        g.store = Some(store);
        Ok(g)
    }

    /// A gateway that answers only from `recording` and opens no socket.
    pub fn replay(config: GatewayConfig, recording: Recording, clock: Arc<dyn Clock>) -> Gateway {
        Gateway {
            mode: Mode::Replay,
            config,
            http: None,
            store: None,
            recording: Some(recording),
            misses: Mutex::default(),
            clock,
            hosts: Mutex::default(),
        }
    }

    /// Replay: records every exchange it serves into `store` (replayed
    /// ones with source `replay` and new request ids), so the re-run's
    /// episode has its web requests like any other.
    pub fn recording_into(mut self, store: Arc<Store>) -> Gateway {
        self.store = Some(store);
        self
    }

    /// Replay: a request the recording lacks goes to the web `live`
    /// describes (the sandbox or the live web, with its address guard)
    /// instead of failing.
    pub fn on_miss(mut self, live: GatewayConfig) -> Result<Gateway, WebError> {
        self.http = Some(build_client(&live)?);
        self.config = live;
        Ok(self)
    }

    /// Replay: the requests the recording did not hold, in order.
    pub fn misses(&self) -> Vec<Miss> {
        self.misses.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Runs up to three queries (the protocol's limit) and returns each
    /// query's results or error, in order.
    pub async fn search(&self, ctx: Context, queries: &[String]) -> Vec<(String, Result<Vec<SearchResult>, WebError>)> {
        let mut out = Vec::new();
        for q in queries.iter().take(fathom_core::protocol::MAX_SEARCH_QUERIES) {
            out.push((q.clone(), self.search_one(ctx, q).await));
        }
        out
    }

    async fn search_one(&self, ctx: Context, query: &str) -> Result<Vec<SearchResult>, WebError> {
        let n = self.config.results_per_query;
        let key = canonical::search_key(self.config.search.name(), query, n);
        let backend = self.config.search.clone();
        let target_url = match &backend {
            SearchBackend::Serper { url, .. } | SearchBackend::Searxng { url } => {
                url::Url::parse(url).map_err(|e| WebError::Transport(format!("bad search endpoint '{url}': {e}")))?
            }
        };
        let request = match &backend {
            SearchBackend::Serper { url, key } => {
                let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
                if let Some(k) = key {
                    headers.push(("x-api-key".to_string(), k.clone()));
                }
                self.wire(
                    "POST",
                    url.clone(),
                    headers,
                    serde_json::to_vec(&serde_json::json!({"q": query, "num": n})).expect("JSON of strings"),
                )
            }
            SearchBackend::Searxng { .. } => {
                let mut u = target_url.clone();
                u.query_pairs_mut()
                    .append_pair("q", query)
                    .append_pair("format", "json");
                self.wire("GET", u.to_string(), Vec::new(), Vec::new())
            }
        };
        let ex = self
            .exchange(
                Asked {
                    ctx,
                    kind: WebKind::Search,
                    target: query,
                    key: &key,
                    url: &target_url,
                },
                &request,
            )
            .await?;
        parse_search_results(&self.config.search, &ex.body, n)
    }

    /// Fetches a page and converts it to readable text.
    pub async fn fetch(&self, ctx: Context, url: &str) -> Result<Page, WebError> {
        let key = canonical::fetch_key(url);
        let parsed = url::Url::parse(url.trim()).map_err(|e| WebError::Transport(format!("bad URL '{url}': {e}")))?;
        if self.mode != Mode::Replay
            && let Err(refused) = self.config.policy.check_url(&parsed)
        {
            if self.mode == Mode::Record {
                let ex = Exchange::failed(0, WebError::Refused(refused.clone()));
                let asked = Asked {
                    ctx,
                    kind: WebKind::Fetch,
                    target: url,
                    key: &key,
                    url: &parsed,
                };
                self.record_exchange(&asked, &ex, self.config.source).await?;
            }
            return Err(refused.into());
        }
        let mut ex = self
            .exchange(
                Asked {
                    ctx,
                    kind: WebKind::Fetch,
                    target: url,
                    key: &key,
                    url: &parsed,
                },
                &WireRequest {
                    read: true,
                    ..self.wire("GET", parsed.to_string(), Vec::new(), Vec::new())
                },
            )
            .await?;
        let content_type = ex.header("content-type").unwrap_or("text/html").to_string();
        // Read by the remote service that made the attempt, or here.
        let text = match ex.text.take() {
            Some(text) => text,
            None => read_page(&content_type, &ex.body)?,
        };
        Ok(Page {
            url: url.to_string(),
            status: ex.status,
            content_type,
            body: ex.body,
            truncated: ex.truncated,
            text,
            request_id: ex.request_id,
        })
    }

    fn host_limit(&self, url: &url::Url) -> Arc<tokio::sync::Semaphore> {
        let host = format!(
            "{}:{}",
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or(0)
        );
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(limit) = hosts.get(&host) {
            return limit.clone();
        }
        hosts
            .entry(host)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.config.per_host.max(1))))
            .clone()
    }

    /// One logical request: attempts with retries, each recorded; returns
    /// the final successful exchange or the error.
    async fn exchange(&self, asked: Asked<'_>, request: &WireRequest) -> Result<Exchange, WebError> {
        if self.mode == Mode::Replay {
            return self.replayed(asked, request).await;
        }
        self.over_the_wire(asked, request).await
    }

    /// An attempt's request with this gateway's timeout and body cap.
    fn wire(&self, method: &str, url: String, headers: Vec<(String, String)>, body: Vec<u8>) -> WireRequest {
        WireRequest {
            method: method.to_string(),
            url,
            headers,
            body,
            timeout_ms: self.config.timeout.as_millis() as u64,
            max_body_bytes: self.config.max_body_bytes,
            read: false,
        }
    }

    /// Live and record modes, and a replay's fallback: attempts with
    /// retries, each recorded when there is a log.
    async fn over_the_wire(&self, asked: Asked<'_>, request: &WireRequest) -> Result<Exchange, WebError> {
        let attempts = self.config.retries + 1;
        for attempt in 1..=attempts {
            let mut ex = self.attempt(asked, request).await;
            ex.attempt = attempt;
            if self.store.is_some() {
                ex.request_id = Some(self.record_exchange(&asked, &ex, self.config.source).await?);
            }
            if ex.retryable() && attempt < attempts {
                let retry_after = ex
                    .header("retry-after")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|s| Duration::from_secs(s.min(30)));
                let backoff = self.config.backoff * 2u32.saturating_pow(attempt - 1);
                tokio::time::sleep(retry_after.unwrap_or(backoff)).await;
                continue;
            }
            return finished(ex);
        }
        unreachable!("the last attempt always returns")
    }

    /// Replay mode: the recorded attempts of the request, in order (as many
    /// as were recorded, whatever the retry setting now), or a miss.
    async fn replayed(&self, asked: Asked<'_>, request: &WireRequest) -> Result<Exchange, WebError> {
        let recording = self.recording.as_ref().expect("replay gateways hold a recording");
        let Asked {
            ctx, kind, key, url, ..
        } = asked;
        let Some(mut ex) = recording.take(key) else {
            let answered = self.http.is_some() || self.config.remote.is_some();
            self.misses.lock().unwrap_or_else(|e| e.into_inner()).push(Miss {
                context: ctx,
                request: key.to_string(),
                answered,
            });
            if !answered {
                return Err(WebError::Divergence {
                    run: ctx.run,
                    episode: ctx.episode.map_or("-".into(), |e| e.to_string()),
                    turn: ctx.turn.map_or("-".into(), |t| t.to_string()),
                    request: key.to_string(),
                });
            }
            if kind == WebKind::Fetch {
                self.config.policy.check_url(url)?;
            }
            return self.over_the_wire(asked, request).await;
        };
        loop {
            if self.store.is_some() {
                ex.request_id = Some(self.record_exchange(&asked, &ex, WebSource::Replay).await?);
            }
            if ex.retryable() && recording.next_is_attempt(key, ex.attempt + 1) {
                ex = recording.take(key).expect("the next attempt was just seen");
                continue;
            }
            return finished(ex);
        }
    }

    /// One attempt: through a remote gateway service when the config
    /// names some (sticky per episode), else from this process.
    async fn attempt(&self, asked: Asked<'_>, request: &WireRequest) -> Exchange {
        let limit = self.host_limit(asked.url);
        let _permit = limit.acquire().await.expect("semaphores are never closed");
        if let Some(remote) = &self.config.remote {
            let sticky = asked.ctx.episode.map_or(asked.ctx.run.0, |e| e.0);
            return match remote.send(sticky, request).await {
                Ok(wire) => wire.into_exchange(),
                Err(message) => Exchange::failed(1, WebError::Transport(message)),
            };
        }
        self.attempt_here(request).await
    }

    /// What a remote gateway service does for each request it gets: one
    /// attempt from this process, under this gateway's address guard.
    pub async fn perform(&self, request: &WireRequest) -> WireExchange {
        let checked = url::Url::parse(&request.url)
            .map_err(|e| WebError::Transport(format!("bad URL '{}': {e}", request.url)))
            .and_then(|u| self.config.policy.check_url(&u).map(|()| u).map_err(WebError::from));
        let url = match checked {
            Ok(u) => u,
            Err(error) => return WireExchange::from_exchange(Exchange::failed(1, error)),
        };
        let limit = self.host_limit(&url);
        let _permit = limit.acquire().await.expect("semaphores are never closed");
        let ex = self.attempt_here(request).await;
        let page = if request.read && ex.error.is_none() && ex.status != 0 {
            let content_type = ex.header("content-type").unwrap_or("text/html").to_string();
            let body = ex.body.clone();
            // Reading a large page is CPU work: off the async threads.
            tokio::task::spawn_blocking(move || read_page(&content_type, &body).ok())
                .await
                .ok()
                .flatten()
                .map(|text| WirePage {
                    text,
                    reader: reader_fingerprint().to_string(),
                })
        } else {
            None
        };
        WireExchange {
            page,
            ..WireExchange::from_exchange(ex)
        }
    }

    async fn attempt_here(&self, request: &WireRequest) -> Exchange {
        let client = self.http.as_ref().expect("live gateways hold a client");
        let timeout = Duration::from_millis(request.timeout_ms.max(1));
        let start = self.clock.now();
        let mut ex = Exchange {
            attempt: 1,
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
            truncated: false,
            error: None,
            latency_ns: 0,
            request_id: None,
            text: None,
        };
        let method = if request.method.eq_ignore_ascii_case("POST") {
            reqwest::Method::POST
        } else {
            reqwest::Method::GET
        };
        let mut rb = client.request(method, &request.url).timeout(timeout);
        for (name, value) in &request.headers {
            rb = rb.header(name.as_str(), value.as_str());
        }
        if !request.body.is_empty() {
            rb = rb.body(request.body.clone());
        }
        match rb.send().await {
            Err(e) => ex.error = Some(describe(&e, timeout)),
            Ok(mut resp) => {
                ex.status = resp.status().as_u16();
                for name in ["content-type", "retry-after", "content-length", "location"] {
                    if let Some(v) = resp.headers().get(name) {
                        ex.headers.push(Header {
                            name: name.to_string(),
                            value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        });
                    }
                }
                loop {
                    match resp.chunk().await {
                        Ok(Some(chunk)) => {
                            let room = request.max_body_bytes.saturating_sub(ex.body.len());
                            if chunk.len() > room {
                                ex.body.extend_from_slice(&chunk[..room]);
                                ex.truncated = true;
                                break;
                            }
                            ex.body.extend_from_slice(&chunk);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            ex.error = Some(describe(&e, timeout));
                            break;
                        }
                    }
                }
            }
        }
        ex.latency_ns = self.clock.now().nanos_since(start);
        ex
    }

    async fn record_exchange(
        &self,
        asked: &Asked<'_>,
        ex: &Exchange,
        source: WebSource,
    ) -> Result<RequestId, WebError> {
        let store = self.store.clone().expect("recording gateways hold a store");
        let ts = self.clock.now();
        let Asked {
            ctx, kind, target, key, ..
        } = *asked;
        let backend = match kind {
            WebKind::Search => self.config.search.name().to_string(),
            WebKind::Fetch => "http".to_string(),
        };
        let (target, key, attempt) = (target.to_string(), key.to_string(), ex.attempt);
        let ex = ex.clone();
        tokio::task::spawn_blocking(move || -> Result<RequestId, fathom_store::Error> {
            let body = if ex.body.is_empty() && ex.status == 0 {
                None
            } else {
                Some(store.put_blob(&ex.body)?)
            };
            let request_id = RequestId(store.next_id(IdKind::Request)?);
            let event = Event::new(
                ctx.run,
                ts,
                WebExchange {
                    request_id,
                    episode_id: ctx.episode,
                    turn: ctx.turn,
                    request_kind: kind,
                    target,
                    canonical: key,
                    backend,
                    status: ex.status,
                    headers: ex.headers,
                    body,
                    body_truncated: ex.truncated,
                    latency_ns: ex.latency_ns,
                    source,
                    attempt,
                    error: ex.error.map(|e| e.to_string()),
                },
            );
            // Relaxed: the episode (or command) that made the request ends with a
            // durable append, whose flush covers this one.
            store.append_with(&[event], fathom_store::Durability::Relaxed)?;
            Ok(request_id)
        })
        .await
        .map_err(|e| WebError::Record(e.to_string()))?
        .map_err(|e| WebError::Record(e.to_string()))
    }
}

/// The result of a request's last attempt.
fn finished(ex: Exchange) -> Result<Exchange, WebError> {
    if let Some(e) = ex.error {
        return Err(e);
    }
    if ex.status >= 400 {
        return Err(WebError::Status(ex.status));
    }
    Ok(ex)
}

/// Asks a running fathom sandbox (at its search address) where its sites
/// are, so a gateway can be allowed to reach exactly those addresses.
pub async fn sandbox_addresses(search_addr: SocketAddr) -> Result<Vec<SocketAddr>, WebError> {
    Ok(sandbox_about(search_addr).await?.addresses)
}

/// The first `n` results of a search API's JSON answer (Serper's `organic`
/// list, or SearXNG's `results`); results without a title or URL are left
/// out, and an answer without the list is an error.
pub fn parse_search_results(backend: &SearchBackend, body: &[u8], n: usize) -> Result<Vec<SearchResult>, WebError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| WebError::BadSearchResponse(e.to_string()))?;
    let (list, url_key, snippet_key) = match backend {
        SearchBackend::Serper { .. } => ("organic", "link", "snippet"),
        SearchBackend::Searxng { .. } => ("results", "url", "content"),
    };
    let items = value
        .get(list)
        .and_then(|v| v.as_array())
        .ok_or_else(|| WebError::BadSearchResponse(format!("no \"{list}\" list")))?;
    Ok(items
        .iter()
        .take(n)
        .filter_map(|r| {
            Some(SearchResult {
                title: r.get("title")?.as_str()?.to_string(),
                url: r.get(url_key)?.as_str()?.to_string(),
                snippet: r
                    .get(snippet_key)
                    .and_then(|s| s.as_str())
                    .unwrap_or_default()
                    .to_string(),
            })
        })
        .collect())
}

/// What a running sandbox says about itself at `GET /`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxAbout {
    /// Its search address, then its sites'.
    pub addresses: Vec<SocketAddr>,
    /// The seed of its world.
    pub seed: Option<u64>,
    /// The entities of its world.
    pub entities: Option<u64>,
}

/// [`sandbox_addresses`], with the world the sandbox serves.
pub async fn sandbox_about(search_addr: SocketAddr) -> Result<SandboxAbout, WebError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .map_err(|e| WebError::Transport(e.to_string()))?;
    let about: serde_json::Value = client
        .get(format!("http://{search_addr}/"))
        .send()
        .await
        .map_err(|e| describe(&e, Duration::from_secs(5)))?
        .json()
        .await
        .map_err(|e| WebError::BadSearchResponse(format!("{search_addr} is not a fathom sandbox: {e}")))?;
    let sites = about
        .get("sites")
        .and_then(|s| s.as_object())
        .ok_or_else(|| WebError::BadSearchResponse(format!("{search_addr} is not a fathom sandbox (no \"sites\")")))?;
    let mut addrs = vec![search_addr];
    for base in sites.values().filter_map(|v| v.as_str()) {
        let addr = base
            .trim_start_matches("http://")
            .parse()
            .map_err(|_| WebError::BadSearchResponse(format!("site address '{base}' is not host:port")))?;
        addrs.push(addr);
    }
    Ok(SandboxAbout {
        addresses: addrs,
        seed: about.get("seed").and_then(serde_json::Value::as_u64),
        entities: about.get("entities").and_then(serde_json::Value::as_u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::dns::Resolve;

    #[test]
    fn the_reader_fingerprint_changes_with_what_reading_gives() {
        assert_eq!(reader_fingerprint(), fingerprint_of(&read_page));
        assert_eq!(reader_fingerprint().len(), 16);
        // A reader that differs on one probe only (tables kept without
        // their cell separators) has another fingerprint.
        let no_cells = |ct: &str, body: &[u8]| read_page(ct, body).map(|t| t.replace(" | ", " "));
        assert_ne!(reader_fingerprint(), fingerprint_of(&no_cells));
        // So does one that no longer refuses PDFs.
        let lenient = |ct: &str, body: &[u8]| read_page(ct, body).or_else(|_| Ok(decode_body(ct, body)));
        assert_ne!(reader_fingerprint(), fingerprint_of(&lenient));
    }

    #[tokio::test]
    async fn names_that_resolve_to_internal_addresses_are_refused() {
        // `localhost` stands for any name whose DNS answer is internal (a
        // rebinding domain, an intranet name): the resolver sees only the
        // answer, and refuses it.
        let guarded = GuardedResolver {
            policy: AddressPolicy::default(),
        };
        let err = match guarded.resolve("localhost".parse().unwrap()).await {
            Ok(_) => panic!("localhost resolved"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("resolves to the internal address"), "{err}");
        let open = GuardedResolver {
            policy: AddressPolicy {
                allowed: vec![],
                allow_internal: true,
            },
        };
        assert!(open.resolve("localhost".parse().unwrap()).await.is_ok());
    }

    #[test]
    fn the_search_key_never_shows_in_debug_output() {
        let b = SearchBackend::Serper {
            url: "https://search.example/search".into(),
            key: Some("sk-secret-123".into()),
        };
        let shown = format!("{b:?} {:?}", GatewayConfig::new(b.clone()));
        assert!(!shown.contains("sk-secret-123"), "{shown}");
        assert!(
            shown.contains("<redacted>") && shown.contains("search.example"),
            "{shown}"
        );
    }

    #[test]
    fn bodies_decode_by_their_declared_charset() {
        assert_eq!(decode_body("text/html; charset=ISO-8859-1", b"caf\xe9"), "café");
        assert_eq!(decode_body("text/html", b"caf\xc3\xa9"), "café");
        assert_eq!(decode_body("text/plain; charset=\"utf-8\"", b"a\xffb"), "a\u{FFFD}b");
        assert_eq!(decode_body("text/html; charset=no-such-charset", b"ok"), "ok");
    }
}
