use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fathom_core::{EpisodeId, ManualClock, RunId, SystemClock, Timestamp};
use fathom_replay::policy::AddressPolicy;
use fathom_replay::{Context, Gateway, GatewayConfig, Recording, WebError};
use fathom_sandbox::faults::FaultSpec;
use fathom_sandbox::{Sandbox, SandboxWeb, ServeConfig, Site};
use fathom_store::{Options, Store};

fn web() -> Arc<SandboxWeb> {
    static WEB: OnceLock<Arc<SandboxWeb>> = OnceLock::new();
    WEB.get_or_init(|| Arc::new(SandboxWeb::generate(8, 200).unwrap()))
        .clone()
}

async fn sandbox(faults: &str) -> Sandbox {
    let config = ServeConfig {
        faults: FaultSpec::parse(faults).unwrap(),
        ..ServeConfig::default()
    };
    Sandbox::start(web(), config).await.unwrap()
}

fn config_for(sb: &Sandbox) -> GatewayConfig {
    let addrs = sb.addresses();
    let mut c = GatewayConfig::sandbox(sb.search_url(), addrs);
    c.backoff = Duration::from_millis(10);
    c
}

const CTX: Context = Context {
    run: RunId(1),
    episode: Some(EpisodeId(5)),
    turn: Some(2),
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_then_replay_gives_identical_bytes_without_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), Options::default()).unwrap());
    let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1_800_000_000)));
    let sb = sandbox("none").await;
    let subject = web()
        .world
        .of_kind(fathom_sandbox::Kind::Person)
        .next()
        .unwrap()
        .name
        .clone();
    let queries = vec![
        subject.clone(),
        format!("{subject} born"),
        "a third".into(),
        "a fourth is dropped".into(),
    ];

    let (recorded_results, recorded_page) = {
        let g = Gateway::record(config_for(&sb), store.clone(), clock.clone()).unwrap();
        let results = g.search(CTX, &queries).await;
        assert_eq!(results.len(), 3, "only the first three queries run");
        let hits = results[0].1.as_ref().unwrap();
        assert!(!hits.is_empty() && hits.len() <= 10);
        let page = g.fetch(CTX, &hits[0].url).await.unwrap();
        assert_eq!(page.status, 200);
        assert!(!page.text.contains("<nav>") && !page.text.contains("window.dataLayer"));
        (results, page)
    };
    drop(sb); // The network is gone.

    let records: Vec<_> = store.run_events(RunId(1)).map(Result::unwrap).collect();
    assert_eq!(records.len(), 4, "three searches and one fetch were recorded");
    let recording = Recording::from_records(&store, &records).unwrap();
    let g = Gateway::replay(
        GatewayConfig::new(fathom_replay::SearchBackend::Serper {
            url: "http://127.0.0.1:1/search".into(),
            key: None,
        }),
        recording,
        Arc::new(SystemClock),
    );
    let replayed = g.search(CTX, &queries).await;
    assert_eq!(replayed, recorded_results);
    let page = g.fetch(CTX, &recorded_page.url).await.unwrap();
    assert_eq!(page, recorded_page, "byte for byte");

    // A request never recorded is a divergence, named precisely.
    let err = g.fetch(CTX, "http://127.0.0.1:1/never").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "replay divergence: run r-1, episode e-5, turn 2: request 'GET http://127.0.0.1:1/never' was never recorded"
    );
    // Each recorded exchange answers once: asking again diverges too.
    assert!(matches!(
        g.fetch(CTX, &recorded_page.url).await,
        Err(WebError::Divergence { .. })
    ));
}

fn first_page_url(sb: &Sandbox) -> String {
    let page = web().pages.iter().find(|p| p.site == Site::Wiki).unwrap().clone();
    sb.page_url(&page)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_are_survived_or_reported() {
    let clock = Arc::new(SystemClock);

    // Every request fails with 429: retried, then reported.
    let sb = sandbox("429=1:1s").await;
    let mut c = config_for(&sb);
    c.retries = 1;
    let g = Gateway::live(c, clock.clone()).unwrap();
    let started = tokio::time::Instant::now();
    assert_eq!(
        g.fetch(CTX, &first_page_url(&sb)).await.unwrap_err(),
        WebError::Status(429)
    );
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After was honoured");

    // Half the requests fail with 500: retries get through.
    let sb = sandbox("500=0.5").await;
    let g = Gateway::live(config_for(&sb), clock.clone()).unwrap();
    for _ in 0..5 {
        assert_eq!(g.fetch(CTX, &first_page_url(&sb)).await.unwrap().status, 200);
    }

    // Stalls end at the timeout, never hang.
    let sb = sandbox("stall=1:30s").await;
    let mut c = config_for(&sb);
    c.timeout = Duration::from_millis(300);
    c.retries = 1;
    let g = Gateway::live(c, clock.clone()).unwrap();
    let started = tokio::time::Instant::now();
    assert!(matches!(
        g.fetch(CTX, &first_page_url(&sb)).await,
        Err(WebError::Timeout(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(5));

    // A truncated body is an error the agent can read.
    let sb = sandbox("truncate=1").await;
    let mut c = config_for(&sb);
    c.retries = 0;
    let g = Gateway::live(c, clock.clone()).unwrap();
    let err = g.fetch(CTX, &first_page_url(&sb)).await.unwrap_err();
    assert!(matches!(err, WebError::Transport(_)), "{err:?}");

    // Bad UTF-8 is decoded lossily.
    let sb = sandbox("non_utf8=1").await;
    let g = Gateway::live(config_for(&sb), clock.clone()).unwrap();
    let page = g.fetch(CTX, &first_page_url(&sb)).await.unwrap();
    assert!(std::str::from_utf8(&page.body).is_err());
    assert!(fathom_replay::gateway::decode_body(&page.content_type, &page.body).contains('\u{FFFD}'));
    assert!(
        page.text.contains("<h1>") || page.text.starts_with('#'),
        "the page still reads: {}",
        page.text
    );

    // A huge page is cut at the cap.
    let sb = sandbox("huge=1:2mb").await;
    let mut c = config_for(&sb);
    c.max_body_bytes = 256 << 10;
    let g = Gateway::live(c, clock.clone()).unwrap();
    let page = g.fetch(CTX, &first_page_url(&sb)).await.unwrap();
    assert!(page.truncated);
    assert_eq!(page.body.len(), 256 << 10);

    // A search that fails is reported per query, not as a panic.
    let sb = sandbox("404=1").await;
    let mut c = config_for(&sb);
    c.retries = 0;
    let g = Gateway::live(c, clock).unwrap();
    let results = g.search(CTX, &["anything".into()]).await;
    assert_eq!(results[0].1, Err(WebError::Status(404)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_addresses_are_refused_in_live_mode() {
    let sb = sandbox("none").await;
    let g = Gateway::live(config_for(&sb), Arc::new(SystemClock)).unwrap();
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[::1]/",
        "http://localhost/",
        "http://127.0.0.1:1/",
    ] {
        let err = g.fetch(CTX, url).await.unwrap_err();
        assert!(matches!(err, WebError::Refused(_)), "{url}: {err:?}");
    }
    // The sandbox is reachable because its addresses are allowed by name.
    assert!(g.fetch(CTX, &first_page_url(&sb)).await.is_ok());

    // A redirect from an allowed host to an internal address is refused.
    let redirector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raddr = redirector.local_addr().unwrap();
    let app = axum::Router::new()
        .route(
            "/to-private",
            axum::routing::get(|| async { axum::response::Redirect::temporary("http://10.0.0.1/admin") }),
        )
        .route(
            "/to-loopback",
            axum::routing::get(|| async { axum::response::Redirect::temporary("http://127.0.0.1:9/") }),
        );
    tokio::spawn(async move { axum::serve(redirector, app).await.unwrap() });
    let mut c = config_for(&sb);
    c.policy = AddressPolicy {
        allowed: vec![raddr],
        allow_internal: false,
    };
    c.retries = 0;
    let g = Gateway::live(c, Arc::new(SystemClock)).unwrap();
    for path in ["to-private", "to-loopback"] {
        let err = g.fetch(CTX, &format!("http://{raddr}/{path}")).await.unwrap_err();
        assert!(matches!(err, WebError::Refused(_)), "{path}: {err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_gives_back_retries_errors_and_refusals_as_they_were_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), Options::default()).unwrap());
    let clock = Arc::new(SystemClock);
    // Half the requests fail with 500, stalls time out: retries happen.
    let sb = sandbox("500=0.4,stall=0.2:5s").await;
    let mut c = config_for(&sb);
    c.retries = 2;
    c.timeout = Duration::from_millis(200);
    let g = Gateway::record(c, store.clone(), clock.clone()).unwrap();
    let url = first_page_url(&sb);
    let mut live = Vec::new();
    for _ in 0..8 {
        live.push(g.fetch(CTX, &url).await.map(|p| p.text).map_err(|e| e.to_string()));
    }
    // Refused before any attempt: recorded with attempt 0.
    let refused = g.fetch(CTX, "http://10.0.0.1/admin").await.unwrap_err().to_string();
    drop(sb);
    let records: Vec<_> = store.run_events(RunId(1)).map(Result::unwrap).collect();
    let attempts: Vec<u32> = records
        .iter()
        .filter_map(|r| match &r.event.payload {
            fathom_core::Payload::WebExchange(w) => Some(w.attempt),
            _ => None,
        })
        .collect();
    assert!(
        attempts.iter().any(|&a| a > 1),
        "some requests were retried: {attempts:?}"
    );
    assert_eq!(attempts.last(), Some(&0), "the refusal is recorded");

    // Replayed with another retry setting: the recorded attempts decide.
    let mut c = GatewayConfig::new(fathom_replay::SearchBackend::Serper {
        url: "http://127.0.0.1:1/search".into(),
        key: None,
    });
    c.retries = 0;
    let recording = Recording::from_records(&store, &records).unwrap();
    let g = Gateway::replay(c, recording, clock);
    let mut replayed = Vec::new();
    for _ in 0..8 {
        replayed.push(g.fetch(CTX, &url).await.map(|p| p.text).map_err(|e| e.to_string()));
    }
    assert_eq!(replayed, live, "the same pages and the same error texts");
    assert_eq!(
        g.fetch(CTX, "http://10.0.0.1/admin").await.unwrap_err().to_string(),
        refused
    );
    assert!(g.misses().is_empty());
    assert!(g.fetch(CTX, &url).await.is_err());
    assert_eq!(g.misses().len(), 1, "the one request too many is a miss");
}

/// A remote gateway service that makes the attempt for real and then
/// labels the page text it returns (`text`) with the reader `reader`.
async fn labelling_service(config: GatewayConfig, text: &'static str, reader: String) -> String {
    use axum::body::Bytes;
    use fathom_replay::gateway::WireRequest;
    let service = Arc::new(Gateway::live(config, Arc::new(SystemClock)).unwrap());
    let app = axum::Router::new().route(
        "/v1/attempt",
        axum::routing::post(move |body: Bytes| {
            let service = service.clone();
            let reader = reader.clone();
            async move {
                let (mut request, request_body): (WireRequest, Vec<u8>) =
                    fathom_replay::remote::unframe(&body).unwrap();
                request.body = request_body;
                let mut ex = service.perform(&request).await;
                if let Some(page) = &mut ex.page {
                    page.text = text.to_string();
                    page.reader = reader;
                }
                fathom_replay::remote::frame(&ex, &ex.body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_service_reads_pages_only_with_the_trainers_own_reader() {
    use fathom_replay::gateway::{read_page, reader_fingerprint};
    use fathom_replay::remote::Remotes;
    let sb = sandbox("none").await;
    let url = first_page_url(&sb);
    let local = Gateway::live(config_for(&sb), Arc::new(SystemClock)).unwrap();
    let here = local.fetch(CTX, &url).await.unwrap();
    assert_eq!(here.text, read_page(&here.content_type, &here.body).unwrap());
    assert!(here.text.len() > 200, "{}", here.text);

    // The service reads the page itself: what it sends is the text used.
    let same = labelling_service(config_for(&sb), "READ BY THE SERVICE", reader_fingerprint().into()).await;
    let mut config = config_for(&sb);
    config.remote = Some(Arc::new(Remotes::new(&[same], None, Arc::new(SystemClock)).unwrap()));
    let through = Gateway::live(config, Arc::new(SystemClock)).unwrap();
    let page = through.fetch(CTX, &url).await.unwrap();
    assert_eq!(page.text, "READ BY THE SERVICE");
    assert_eq!(page.body, here.body, "the body travels as it was received");
    // Searches are not pages: nothing is read for them.
    let results = through.search(CTX, &["anything".to_string()]).await;
    assert!(results[0].1.is_ok(), "{:?}", results[0].1);

    // Another reader (another fathom version): its text is ignored and the
    // page is read here, as replay will read it.
    let other = labelling_service(config_for(&sb), "READ BY ANOTHER VERSION", "0123456789abcdef".into()).await;
    let mut config = config_for(&sb);
    config.remote = Some(Arc::new(Remotes::new(&[other], None, Arc::new(SystemClock)).unwrap()));
    let through = Gateway::live(config, Arc::new(SystemClock)).unwrap();
    let page = through.fetch(CTX, &url).await.unwrap();
    assert_eq!(page.text, here.text);
}
