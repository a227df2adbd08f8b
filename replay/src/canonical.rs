//! Canonical request keys: the same logical request always gets the same
//! key, so a replay finds its recording.
//!
//! URLs: scheme and host lowercased, default ports dropped, the fragment
//! dropped, query arguments sorted (by name, then value), an empty path
//! written as `/`. Search queries: whitespace trimmed and collapsed, case
//! kept (search engines may treat case as meaningful, and recordings must
//! not merge requests that could have had different answers).

/// The canonical form of a page request.
pub fn fetch_key(url: &str) -> String {
    match url::Url::parse(url.trim()) {
        Ok(mut u) => {
            u.set_fragment(None);
            let mut pairs: Vec<(String, String)> =
                u.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
            if pairs.is_empty() {
                u.set_query(None);
            } else {
                pairs.sort();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            // `Url` already lowercases scheme and host, drops default ports
            // and writes an empty path as `/`.
            format!("GET {u}")
        }
        // Unparseable URLs still get a stable key, so their (failed)
        // exchanges can be recorded and replayed too.
        Err(_) => format!("GET {}", url.trim()),
    }
}

/// The canonical form of a search request to a backend.
pub fn search_key(backend: &str, query: &str, num: usize) -> String {
    let q = query.split_whitespace().collect::<Vec<_>>().join(" ");
    format!("SEARCH {backend} num={num} q={q}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equivalent_urls_share_a_key() {
        let k = fetch_key("http://Example.COM:80/a?b=2&a=1#section");
        assert_eq!(k, "GET http://example.com/a?a=1&b=2");
        assert_eq!(fetch_key(" http://example.com/a?a=1&b=2 "), k);
        assert_eq!(fetch_key("https://example.com:443"), "GET https://example.com/");
        assert_ne!(fetch_key("http://example.com/a"), fetch_key("http://example.com/A"));
        assert_eq!(fetch_key("not a url"), "GET not a url");
        assert_eq!(fetch_key("http://h/x?q=a%20b"), fetch_key("http://h/x?q=a+b"));
    }

    #[test]
    fn search_keys_trim_and_collapse() {
        assert_eq!(
            search_key("serper", "  who  founded\tZest ", 10),
            "SEARCH serper num=10 q=who founded Zest"
        );
        assert_ne!(search_key("serper", "zest", 10), search_key("serper", "Zest", 10));
    }
}
