use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fathom_sandbox::faults::FaultSpec;
use fathom_sandbox::{Sandbox, SandboxWeb, ServeConfig, Site};

/// One generated web shared by the tests (generation is the slow part).
fn web() -> Arc<SandboxWeb> {
    static WEB: OnceLock<Arc<SandboxWeb>> = OnceLock::new();
    WEB.get_or_init(|| Arc::new(SandboxWeb::generate(4, 200).unwrap()))
        .clone()
}

async fn start(faults: &str) -> Sandbox {
    let config = ServeConfig {
        faults: FaultSpec::parse(faults).unwrap(),
        ..ServeConfig::default()
    };
    Sandbox::start(web(), config).await.unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_then_fetch_like_an_agent() {
    let sb = start("none").await;
    assert!(sb.search_addr.ip().is_loopback());
    let subject = web()
        .world
        .of_kind(fathom_sandbox::Kind::Company)
        .next()
        .unwrap()
        .name
        .clone();
    let resp: serde_json::Value = client()
        .post(sb.search_url())
        .json(&serde_json::json!({"q": subject, "num": 5}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let organic = resp["organic"].as_array().unwrap();
    assert!(!organic.is_empty() && organic.len() <= 5);
    assert_eq!(organic[0]["position"], 1);
    let wiki_base = format!("http://{}", sb.site_addrs[Site::Wiki.index()].1);
    let link = organic
        .iter()
        .map(|r| r["link"].as_str().unwrap().to_string())
        .find(|l| l.starts_with(&wiki_base))
        .expect("the wiki page is among the results");
    let page = client().get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let html = page.text().await.unwrap();
    assert!(html.contains(&format!("<h1>{subject}</h1>")), "{link}");

    // SearXNG's JSON protocol answers the same query.
    let sx: serde_json::Value = client()
        .get(sb.search_url())
        .query(&[("q", subject.as_str()), ("format", "json")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sx["results"][0]["url"], organic[0]["link"]);

    // The description names every site.
    let about: serde_json::Value = client()
        .get(format!("http://{}/", sb.search_addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(about["sites"]["wiki"], wiki_base);
    assert_eq!(about["seed"], 4);

    let missing = client().get(format!("{wiki_base}/No_Such_Page")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

async fn get_page(sb: &Sandbox, timeout: Duration) -> reqwest::Result<reqwest::Response> {
    let page = &web().pages[0];
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .unwrap()
        .get(sb.page_url(page))
        .send()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_kind_is_injected() {
    let normal = web().pages[0].html.len();

    let sb = start("latency=1:250ms").await;
    let started = tokio::time::Instant::now();
    let r = get_page(&sb, Duration::from_secs(10)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(250));

    let sb = start("404=1").await;
    assert_eq!(get_page(&sb, Duration::from_secs(10)).await.unwrap().status(), 404);

    let sb = start("429=1:2s").await;
    let r = get_page(&sb, Duration::from_secs(10)).await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "2");

    let sb = start("500=1").await;
    assert_eq!(get_page(&sb, Duration::from_secs(10)).await.unwrap().status(), 500);

    let sb = start("truncate=1").await;
    // The connection is cut mid-body: the client sees either a broken body
    // or, when the headers were still buffered, an incomplete message.
    let broken = match get_page(&sb, Duration::from_secs(10)).await {
        Ok(r) => r.bytes().await.is_err(),
        Err(e) => e.to_string().contains("error sending request") || e.is_request(),
    };
    assert!(broken, "a truncated response must not read as complete");

    let sb = start("stall=1:5s").await;
    let err = get_page(&sb, Duration::from_millis(300)).await.unwrap_err();
    assert!(err.is_timeout(), "{err}");

    let sb = start("non_utf8=1").await;
    let body = get_page(&sb, Duration::from_secs(10))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(std::str::from_utf8(&body).is_err());
    assert_eq!(body.len(), normal + 5);

    let sb = start("huge=1:1mb").await;
    let body = get_page(&sb, Duration::from_secs(10))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(body.len() >= 1 << 20);

    // Search is faulted too.
    let sb = start("500=1").await;
    let r = client()
        .post(sb.search_url())
        .json(&serde_json::json!({"q": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
}

#[test]
fn the_same_seed_serves_the_same_bytes() {
    let a = SandboxWeb::generate(4, 200).unwrap();
    assert_eq!(a.pages, web().pages);
    for p in a.pages.iter().take(50) {
        assert_eq!(a.page(p.site, &p.path).unwrap().html, p.html);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_corpus_is_searchable_and_served_escaped() {
    let corpus = fathom_sandbox::pages::read_corpus(
        r#"{"url": "https://example.org/zyxel", "title": "Zyxelquartz notes", "text": "The zyxelquartz mineral glows.\n\nIt was <script>alert(1)</script> found in 1901."}
{"url": "https://example.org/other", "title": "Other", "text": "Nothing to see."}"#,
    )
    .unwrap();
    let web = Arc::new(SandboxWeb::with_corpus(4, 100, &corpus).unwrap());
    let sb = Sandbox::start(web, ServeConfig::default()).await.unwrap();
    let resp: serde_json::Value = client()
        .post(sb.search_url())
        .json(&serde_json::json!({"q": "zyxelquartz"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let link = resp["organic"][0]["link"].as_str().unwrap().to_string();
    let corpus_base = format!("http://{}", sb.site_addrs[Site::Corpus.index()].1);
    assert_eq!(link, format!("{corpus_base}/doc/0"));
    let html = client().get(&link).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("Source: https://example.org/zyxel"));
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && !html.contains("<script>alert"));

    let err = fathom_sandbox::pages::read_corpus("{\"url\": \"u\", \"title\": \"t\", \"text\": \"x\"}\n{\"url\": 3}")
        .unwrap_err();
    assert!(err.starts_with("line 2: expected"), "{err}");
}
