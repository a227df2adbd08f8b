//! Serving the sandbox on loopback: a search API speaking the Serper and
//! SearXNG protocols, and one page server per site, each on its own port so
//! that the sites' hosts differ as real domains do.
//!
//! `GET /` on the search address describes the sandbox (seed, sites and
//! their base URLs, page and entity counts) as JSON.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::faults::{Fault, FaultSpec};
use crate::pages::{self, Page, Site};
use crate::search::{SearchError, SearchIndex};
use crate::world::World;

/// The generated web: world, pages and search index.
#[derive(Debug)]
pub struct SandboxWeb {
    /// The world.
    pub world: World,
    /// Every page.
    pub pages: Vec<Page>,
    /// BM25 over the pages.
    pub index: SearchIndex,
    by_path: HashMap<(Site, String), usize>,
}

impl SandboxWeb {
    /// Generates the web of a seed.
    pub fn generate(seed: u64, entities: usize) -> Result<SandboxWeb, SearchError> {
        SandboxWeb::with_corpus(seed, entities, &[])
    }

    /// Generates the web of a seed and adds a user's documents to it (on
    /// the corpus site, searchable with everything else).
    pub fn with_corpus(seed: u64, entities: usize, corpus: &[pages::CorpusDoc]) -> Result<SandboxWeb, SearchError> {
        let world = World::generate(seed, entities);
        let mut pages = pages::render(&world);
        pages.extend(pages::corpus_pages(corpus));
        let index = SearchIndex::build(&pages)?;
        let by_path = pages
            .iter()
            .enumerate()
            .map(|(i, p)| ((p.site, p.path.clone()), i))
            .collect();
        Ok(SandboxWeb {
            world,
            pages,
            index,
            by_path,
        })
    }

    /// The page a site serves at `path`.
    pub fn page(&self, site: Site, path: &str) -> Option<&Page> {
        self.by_path.get(&(site, path.to_string())).map(|&i| &self.pages[i])
    }
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to bind (127.0.0.1 by default).
    pub host: IpAddr,
    /// Port of the search API. 0 picks free ports for everything; any other
    /// port puts the sites on the next five ports, so URLs stay the same
    /// from one run to the next.
    pub search_port: u16,
    /// Faults to inject.
    pub faults: FaultSpec,
    /// Seed of the fault draws.
    pub fault_seed: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            host: IpAddr::from([127, 0, 0, 1]),
            search_port: 0,
            faults: FaultSpec::none(),
            fault_seed: 0,
        }
    }
}

struct AppState {
    web: Arc<SandboxWeb>,
    site_bases: Vec<String>,
    faults: FaultSpec,
    fault_seed: u64,
    requests: AtomicU64,
}

/// A running sandbox. Dropping it stops the servers.
#[derive(Debug)]
pub struct Sandbox {
    /// Where the search API listens.
    pub search_addr: SocketAddr,
    /// Where each site listens, in [`Site::ALL`] order.
    pub site_addrs: Vec<(Site, SocketAddr)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Sandbox {
    /// Binds the search API and the sites and starts serving on the
    /// current tokio runtime.
    pub async fn start(web: Arc<SandboxWeb>, config: ServeConfig) -> std::io::Result<Sandbox> {
        let search = tokio::net::TcpListener::bind((config.host, config.search_port)).await?;
        let mut site_listeners = Vec::new();
        for (i, site) in Site::ALL.into_iter().enumerate() {
            let port = match config.search_port {
                0 => 0,
                p => p.checked_add(1 + i as u16).ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "search port too high to fit the sites after it",
                    )
                })?,
            };
            site_listeners.push((site, tokio::net::TcpListener::bind((config.host, port)).await?));
        }
        let site_addrs: Vec<(Site, SocketAddr)> = site_listeners
            .iter()
            .map(|(s, l)| l.local_addr().map(|a| (*s, a)))
            .collect::<std::io::Result<_>>()?;
        let state = Arc::new(AppState {
            web,
            site_bases: site_addrs.iter().map(|(_, a)| format!("http://{a}")).collect(),
            faults: config.faults,
            fault_seed: config.fault_seed,
            requests: AtomicU64::new(0),
        });
        let search_addr = search.local_addr()?;
        let search_app = Router::new()
            .route("/", get(describe))
            .route("/search", post(serper).get(searxng))
            .layer(middleware::from_fn_with_state(state.clone(), inject_faults))
            .with_state(state.clone());
        let mut tasks = vec![tokio::spawn(async move {
            let _ = axum::serve(search, search_app).await;
        })];
        for (site, listener) in site_listeners {
            let app = Router::new()
                .fallback(move |State(s): State<Arc<AppState>>, req: Request| serve_page(s, site, req))
                .layer(middleware::from_fn_with_state(state.clone(), inject_faults))
                .with_state(state.clone());
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }));
        }
        Ok(Sandbox {
            search_addr,
            site_addrs,
            tasks,
        })
    }

    /// Every address the sandbox listens on (the search API and each
    /// site), for a gateway's allow-list.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        std::iter::once(self.search_addr)
            .chain(self.site_addrs.iter().map(|(_, a)| *a))
            .collect()
    }

    /// The Serper-compatible search endpoint.
    pub fn search_url(&self) -> String {
        format!("http://{}/search", self.search_addr)
    }

    /// The URL of a page.
    pub fn page_url(&self, page: &Page) -> String {
        let addr = self.site_addrs[page.site.index()].1;
        format!("http://{addr}{}", page.path)
    }
}

#[derive(serde::Deserialize)]
struct SerperRequest {
    q: String,
    #[serde(default)]
    num: Option<usize>,
}

#[derive(serde::Deserialize)]
struct SearxRequest {
    q: String,
}

fn link(state: &AppState, page: &Page) -> String {
    format!("{}{}", state.site_bases[page.site.index()], page.path)
}

async fn serper(State(s): State<Arc<AppState>>, Json(req): Json<SerperRequest>) -> Response {
    let num = req.num.unwrap_or(10).clamp(1, 100);
    match s.web.index.search(&req.q, num) {
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Ok(hits) => {
            let organic: Vec<serde_json::Value> = hits
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    serde_json::json!({
                        "title": h.title,
                        "link": link(&s, &s.web.pages[h.page]),
                        "snippet": h.snippet,
                        "position": i + 1,
                    })
                })
                .collect();
            Json(serde_json::json!({"searchParameters": {"q": req.q, "num": num}, "organic": organic})).into_response()
        }
    }
}

async fn searxng(State(s): State<Arc<AppState>>, Query(req): Query<SearxRequest>) -> Response {
    match s.web.index.search(&req.q, 10) {
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Ok(hits) => {
            let results: Vec<serde_json::Value> = hits
                .iter()
                .map(|h| {
                    serde_json::json!({
                        "title": h.title,
                        "url": link(&s, &s.web.pages[h.page]),
                        "content": h.snippet,
                        "score": h.score,
                    })
                })
                .collect();
            Json(serde_json::json!({"query": req.q, "results": results})).into_response()
        }
    }
}

async fn describe(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let sites: serde_json::Map<String, serde_json::Value> = Site::ALL
        .iter()
        .map(|site| (site.name().to_string(), s.site_bases[site.index()].clone().into()))
        .collect();
    Json(serde_json::json!({
        "seed": s.web.world.seed,
        "entities": s.web.world.entities.len(),
        "pages": s.web.pages.len(),
        "sites": sites,
    }))
}

async fn serve_page(s: Arc<AppState>, site: Site, req: Request) -> Response {
    let path = req.uri().path();
    match s.web.page(site, path) {
        Some(page) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            )],
            page.html.clone(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            )],
            format!(
                "<html><body><h1>Not found</h1><p>No page at {}.</p></body></html>",
                pages_escape(path)
            ),
        )
            .into_response(),
    }
}

fn pages_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Applies the fault drawn for this request.
async fn inject_faults(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let n = s.requests.fetch_add(1, Ordering::SeqCst);
    let Some(fault) = s.faults.draw(s.fault_seed, n) else {
        return next.run(req).await;
    };
    match fault {
        Fault::Latency(d) => {
            tokio::time::sleep(d).await;
            next.run(req).await
        }
        Fault::NotFound => (StatusCode::NOT_FOUND, "not found (injected)").into_response(),
        Fault::TooManyRequests(d) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, d.as_secs().max(1).to_string())],
            "slow down (injected)",
        )
            .into_response(),
        Fault::ServerError => (StatusCode::INTERNAL_SERVER_ERROR, "internal error (injected)").into_response(),
        Fault::Stall(d) => {
            tokio::time::sleep(d).await;
            (StatusCode::GATEWAY_TIMEOUT, "stalled (injected)").into_response()
        }
        Fault::Truncated | Fault::NonUtf8 | Fault::Huge(_) => {
            let resp = next.run(req).await;
            let (parts, body) = resp.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
                return (StatusCode::INTERNAL_SERVER_ERROR, "body error").into_response();
            };
            let body = match fault {
                Fault::Truncated => {
                    // Half the body, then the connection is cut mid-stream.
                    let half = Bytes::copy_from_slice(&bytes[..bytes.len() / 2]);
                    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                        Ok(half),
                        Err(std::io::Error::new(
                            std::io::ErrorKind::ConnectionAborted,
                            "truncated (injected)",
                        )),
                    ];
                    let mut parts = parts;
                    parts.headers.remove(header::CONTENT_LENGTH);
                    return Response::from_parts(parts, Body::from_stream(futures_util::stream::iter(chunks)));
                }
                Fault::NonUtf8 => {
                    let mut v = bytes.to_vec();
                    let at = v.len() / 3;
                    v.splice(at..at, [0xff, 0xfe, 0xc3, 0x28, 0xa0]);
                    v
                }
                Fault::Huge(size) => {
                    let mut v = bytes.to_vec();
                    let filler = b"<p>Lorem ipsum filler text repeated to make this page very large.</p>\n";
                    while v.len() < size {
                        v.extend_from_slice(filler);
                    }
                    v
                }
                _ => unreachable!("matched above"),
            };
            let mut parts = parts;
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(body))
        }
    }
}
