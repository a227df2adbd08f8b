//! Run with: `cargo bench -p fathom-replay --bench gateway`
//!
//! - `fetch/gateway` against `fetch/reqwest`: one page from the sandbox on
//!   loopback, through the live gateway (SSRF checks, per-host limit, body
//!   cap, charset decoding, HTML to text) and through a plain reqwest client
//!   that only downloads and decodes the body. Target: the gateway within
//!   1.1× of plain reqwest.
//! - `replay/search`: answering a search from a recording of 10,000
//!   exchanges (lookup by canonical key and parsing the recorded results).
//!   Target: median under 50 µs.
//! - `sandbox/search`: BM25 queries on a 2,000-entity sandbox, in process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use fathom_core::event::{WebExchange, WebKind, WebSource};
use fathom_core::{Event, RequestId, RunId, SystemClock, Timestamp};
use fathom_replay::{Context, Gateway, GatewayConfig, Recording, SearchBackend};
use fathom_sandbox::{Sandbox, SandboxWeb, ServeConfig, Site};
use fathom_store::{Options, Store};

const CTX: Context = Context {
    run: RunId(1),
    episode: None,
    turn: None,
};

fn fetch(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let web = Arc::new(SandboxWeb::generate(1, 2000).unwrap());
    let sb = rt
        .block_on(Sandbox::start(web.clone(), ServeConfig::default()))
        .unwrap();
    let page = web.pages.iter().find(|p| p.site == Site::Wiki).unwrap();
    let url = sb.page_url(page);
    let addrs = sb.addresses();
    let gateway = Gateway::live(GatewayConfig::sandbox(sb.search_url(), addrs), Arc::new(SystemClock)).unwrap();
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();

    let mut g = c.benchmark_group("fetch");
    g.sample_size(30);
    g.bench_function("gateway", |b| {
        b.iter(|| rt.block_on(gateway.fetch(CTX, &url)).unwrap().text.len());
    });
    g.bench_function("reqwest", |b| {
        b.iter(|| {
            rt.block_on(async { plain.get(&url).send().await.unwrap().text().await.unwrap() })
                .len()
        });
    });
    g.finish();

    // BM25 on the same world, without HTTP.
    let queries: Vec<String> = web.world.entities.iter().take(200).map(|e| e.name.clone()).collect();
    let mut i = 0;
    c.bench_function("sandbox/search", |b| {
        b.iter(|| {
            i = (i + 1) % queries.len();
            web.index.search(&queries[i], 10).unwrap().len()
        });
    });
}

fn replay(c: &mut Criterion) {
    // 10,000 recorded searches sharing one realistic results body.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    let body = serde_json::json!({"organic": (0..10).map(|i| serde_json::json!({
        "title": format!("Result {i} about the question"),
        "link": format!("http://127.0.0.1:8931/Page_{i}"),
        "snippet": "A snippet of about two hundred characters that says something relevant to the query, as search engines do, with names and dates such as Ada Lind, 2011, and Zest Mobile headquarters.",
    })).collect::<Vec<_>>()})
    .to_string();
    let blob = store.put_blob(body.as_bytes()).unwrap();
    let n = 10_000;
    let events: Vec<Event> = (0..n)
        .map(|i| {
            Event::new(
                RunId(1),
                Timestamp(i as i64),
                WebExchange {
                    request_id: RequestId(i + 1),
                    episode_id: None,
                    turn: None,
                    request_kind: WebKind::Search,
                    target: format!("query {i}"),
                    canonical: fathom_replay::canonical::search_key("serper", &format!("query {i}"), 10),
                    backend: "serper".into(),
                    status: 200,
                    headers: vec![],
                    body: Some(blob),
                    body_truncated: false,
                    latency_ns: 1,
                    source: WebSource::Sandbox,
                    attempt: 1,
                    error: None,
                },
            )
        })
        .collect();
    store.append(&events).unwrap();
    let records: Vec<_> = store.iter().map(Result::unwrap).collect();
    let template = Recording::from_records(&store, &records).unwrap();
    let config = GatewayConfig::new(SearchBackend::Serper {
        url: "http://127.0.0.1:1/search".into(),
        key: None,
    });
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let queries: Vec<Vec<String>> = (0..n).map(|i| vec![format!("query {i}")]).collect();
    c.bench_function("replay/search", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0u64;
            while done < iters {
                // A fresh copy of the recording, since replay consumes it.
                let gw = Gateway::replay(config.clone(), template.clone(), Arc::new(SystemClock));
                let chunk = (iters - done).min(n);
                #[allow(clippy::disallowed_methods)] // Timing is this function's purpose.
                let start = Instant::now();
                for q in &queries[..chunk as usize] {
                    let r = rt.block_on(gw.search(CTX, q));
                    assert!(r[0].1.is_ok());
                }
                total += start.elapsed();
                done += chunk;
            }
            total
        });
    });
}

criterion_group!(benches, fetch, replay);
criterion_main!(benches);
