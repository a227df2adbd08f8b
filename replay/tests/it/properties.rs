//! Property tests of what the gateway parses from the web: HTML pages,
//! bodies of any content type, and search APIs' JSON answers.

use fathom_replay::SearchBackend;
use fathom_replay::gateway::{parse_search_results, read_page};
use fathom_replay::html::to_text;
use proptest::prelude::*;

/// HTML-ish text: tags, entities, scripts and words in any order.
fn html() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("<p>".to_string()),
        Just("</p>".to_string()),
        Just("<script>".to_string()),
        Just("</script>".to_string()),
        Just("<table><tr><td>".to_string()),
        Just("</td></tr></table>".to_string()),
        Just("<a href=\"x\">".to_string()),
        Just("&amp;&lt;&#x1F600;&#99999999;&bogus;".to_string()),
        Just("<!-- ".to_string()),
        Just("<".to_string()),
        any::<String>(),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any markup becomes text without a panic.
    #[test]
    fn any_html_becomes_text(page in html()) {
        let _ = to_text(&page);
    }

    /// Plain words (no markup, no entities) come through as the same words.
    #[test]
    fn plain_words_are_kept(words in proptest::collection::vec("[A-Za-z0-9]{1,12}", 1..40)) {
        let page = words.join(" ");
        let text = to_text(&page);
        prop_assert_eq!(text.split_whitespace().collect::<Vec<_>>(), words);
    }

    /// A body of any bytes, under any content type, is read or refused.
    #[test]
    fn any_body_is_read_or_refused(
        content_type in prop_oneof![
            Just("text/html; charset=utf-8".to_string()),
            Just("text/html; charset=windows-1252".to_string()),
            Just("application/pdf".to_string()),
            Just("text/plain".to_string()),
            any::<String>(),
        ],
        body in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let _ = read_page(&content_type, &body);
    }

    /// A search API's answer, whatever its JSON, gives at most the results
    /// asked for, each with a title and a URL, or an error.
    #[test]
    fn any_search_answer_is_parsed_or_refused(
        serper in any::<bool>(),
        n in 0usize..12,
        items in proptest::collection::vec(
            (proptest::option::of("[a-z ]{0,8}"), proptest::option::of("http://[a-z]{1,6}/"), any::<bool>()),
            0..20,
        ),
        junk in any::<String>(),
    ) {
        let (list, url_key) = if serper { ("organic", "link") } else { ("results", "url") };
        let rows: Vec<serde_json::Value> = items
            .iter()
            .map(|(title, url, number)| {
                let mut o = serde_json::Map::new();
                if let Some(t) = title {
                    o.insert("title".into(), if *number { 7.into() } else { t.clone().into() });
                }
                if let Some(u) = url {
                    o.insert(url_key.into(), u.clone().into());
                }
                serde_json::Value::Object(o)
            })
            .collect();
        let backend = if serper {
            SearchBackend::Serper { url: String::new(), key: None }
        } else {
            SearchBackend::Searxng { url: String::new() }
        };
        let body = serde_json::json!({ list: rows }).to_string();
        let results = parse_search_results(&backend, body.as_bytes(), n).unwrap();
        prop_assert!(results.len() <= n);
        prop_assert!(results.iter().all(|r| r.url.starts_with("http://")));
        // Text that is not a JSON object is refused.
        let object = junk.trim_start().starts_with('{');
        prop_assert!(object || parse_search_results(&backend, junk.as_bytes(), n).is_err());
    }
}
