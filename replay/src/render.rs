//! What the agent sees: search results and pages as tool-response text.
//!
//! Result entries are separated by blank lines and carry their URL on a
//! `URL:` line, which is what the behaviour detectors rely on to tell
//! sources apart.

use crate::gateway::{SearchResult, WebError};

/// The text of a `web_search` tool response: each query's results in order.
pub fn search_results(results: &[(String, Result<Vec<SearchResult>, WebError>)]) -> String {
    let mut out = String::new();
    for (query, outcome) in results {
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(&format!("## Results for \"{query}\""));
        match outcome {
            Err(e) => out.push_str(&format!("\nThe search failed: {e}")),
            Ok(hits) if hits.is_empty() => out.push_str("\nNo results."),
            Ok(hits) => {
                for (i, h) in hits.iter().enumerate() {
                    out.push_str(&format!("\n\n[{}] {}\nURL: {}\n{}", i + 1, h.title, h.url, h.snippet));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_render_as_entries_with_urls() {
        let hits = vec![
            SearchResult {
                title: "Zest Mobile".into(),
                url: "http://127.0.0.1:8931/Zest_Mobile".into(),
                snippet: "Zest Mobile was founded by Ada Lind.".into(),
            },
            SearchResult {
                title: "Ada Lind".into(),
                url: "http://127.0.0.1:8932/Ada_Lind".into(),
                snippet: "Profile.".into(),
            },
        ];
        let text = search_results(&[
            ("zest founder".into(), Ok(hits)),
            ("zest".into(), Err(WebError::Status(500))),
            ("nothing".into(), Ok(vec![])),
        ]);
        expect_test::expect![[r###"
            ## Results for "zest founder"

            [1] Zest Mobile
            URL: http://127.0.0.1:8931/Zest_Mobile
            Zest Mobile was founded by Ada Lind.

            [2] Ada Lind
            URL: http://127.0.0.1:8932/Ada_Lind
            Profile.

            ## Results for "zest"
            The search failed: HTTP 500

            ## Results for "nothing"
            No results."###]]
        .assert_eq(&text);
    }
}
