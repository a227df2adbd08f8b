use std::sync::Arc;

use fathom_core::protocol::ToolCall;
use fathom_core::{RunId, SystemClock};
use fathom_replay::{Context, Gateway, GatewayConfig};
use fathom_sandbox::{Kind, Sandbox, SandboxWeb, ServeConfig};
use fathom_trainer::tools::{HeuristicReader, ReadRequest, ReadResult, Reader, ToolLimits, ToolRunner};

const CTX: Context = Context {
    run: RunId(1),
    episode: None,
    turn: None,
};

async fn setup() -> (Arc<SandboxWeb>, Sandbox, Gateway) {
    let web = Arc::new(SandboxWeb::generate(12, 200).unwrap());
    let sb = Sandbox::start(web.clone(), ServeConfig::default()).await.unwrap();
    let addrs = sb.addresses();
    let g = Gateway::live(GatewayConfig::sandbox(sb.search_url(), addrs), Arc::new(SystemClock)).unwrap();
    (web, sb, g)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_then_browse_returns_new_information_only() {
    let (web, _sb, g) = setup().await;
    let company = web.world.of_kind(Kind::Company).next().unwrap().name.clone();
    let question = format!("Who founded {company}?");
    let mut runner = ToolRunner::new(ToolLimits::default());
    let mut reader = HeuristicReader;

    let search = runner
        .run(
            &g,
            &mut reader,
            CTX,
            &question,
            &ToolCall::WebSearch {
                query: vec![company.clone()],
            },
        )
        .await;
    assert!(search.ok && search.n_results > 0, "{}", search.text);
    let wiki = runner
        .latest_results()
        .map(|(u, _)| u.to_string())
        .find(|u| web.pages.iter().any(|p| p.title == company && u.ends_with(&p.path)))
        .expect("the company's page is among the results");

    let call = ToolCall::BrowseWebpage {
        url_list: vec![wiki.clone()],
    };
    let first = runner.run(&g, &mut reader, CTX, &question, &call).await;
    assert!(first.ok, "{}", first.text);
    assert!(
        first.text.contains("founded in") && first.text.contains(&company),
        "{}",
        first.text
    );
    assert_eq!(first.reads.len(), 1, "the reader stopped after a useful segment");

    // The same page again holds nothing the policy has not seen.
    let again = runner.run(&g, &mut reader, CTX, &question, &call).await;
    assert!(!again.ok);
    assert!(again.text.contains("No new information"), "{}", again.text);

    // A URL that no search returned is refused.
    let outside = ToolCall::BrowseWebpage {
        url_list: vec!["http://127.0.0.1:1/elsewhere".into()],
    };
    let refused = runner.run(&g, &mut reader, CTX, &question, &outside).await;
    assert!(
        refused.text.contains("only URLs from the most recent search results"),
        "{}",
        refused.text
    );
}

/// A reader that always wants more: the page cap must stop it.
struct Greedy(u32);

impl Reader for Greedy {
    fn read(&mut self, r: ReadRequest<'_>) -> ReadResult {
        self.0 += 1;
        ReadResult {
            notes: String::new(),
            read_next: true,
            n_tokens: r.index,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_stops_is_stopped_by_the_page_cap_and_the_last_segment() {
    let (web, _sb, g) = setup().await;
    let company = web.world.of_kind(Kind::Company).next().unwrap().name.clone();
    for (segment_chars, cap, expected) in [(40, 3, 3), (100_000, 5, 1)] {
        let mut runner = ToolRunner::new(ToolLimits {
            segment_chars,
            max_segments_per_page: cap,
            ..ToolLimits::default()
        });
        let mut reader = Greedy(0);
        runner
            .run(
                &g,
                &mut reader,
                CTX,
                "q",
                &ToolCall::WebSearch {
                    query: vec![company.clone()],
                },
            )
            .await;
        let url = runner.latest_results().next().unwrap().0.to_string();
        let out = runner
            .run(
                &g,
                &mut reader,
                CTX,
                "q",
                &ToolCall::BrowseWebpage { url_list: vec![url] },
            )
            .await;
        assert_eq!(reader.0, expected, "segment size {segment_chars}, cap {cap}");
        assert_eq!(out.reads.len() as u32, expected);
        assert!(out.reads.iter().all(|r| r.read_next));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_capped_in_length() {
    let (_web, _sb, g) = setup().await;
    let mut runner = ToolRunner::new(ToolLimits {
        max_response_chars: 300,
        ..ToolLimits::default()
    });
    let out = runner
        .run(
            &g,
            &mut HeuristicReader,
            CTX,
            "q",
            &ToolCall::WebSearch {
                query: vec!["company founded".into(), "city".into(), "born".into()],
            },
        )
        .await;
    assert!(out.truncated);
    assert!(out.text.chars().count() < 360, "{}", out.text.len());
}
