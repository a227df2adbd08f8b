//! BM25 search over the sandbox's pages (tantivy, in memory).
//!
//! The index is built once per sandbox from the rendered pages' readable
//! text, with one indexing thread so that the same pages always give the
//! same segment and so the same ranking, ties included.

use tantivy::collector::TopDocs;
use tantivy::query::QueryParser;
use tantivy::schema::{Field, STORED, Schema, TEXT, Value};
use tantivy::snippet::SnippetGenerator;
use tantivy::{Index, IndexReader, TantivyDocument, doc};

use crate::pages::Page;

/// Why the index could not be built or searched.
#[derive(Debug, thiserror::Error)]
#[error("sandbox search index: {0}")]
pub struct SearchError(#[from] tantivy::TantivyError);

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// Index of the page in the slice the index was built from.
    pub page: usize,
    /// The page title.
    pub title: String,
    /// A fragment of the page around the query's words.
    pub snippet: String,
    /// BM25 score.
    pub score: f32,
}

/// The search index.
pub struct SearchIndex {
    reader: IndexReader,
    parser: QueryParser,
    title: Field,
    body: Field,
    page: Field,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex").finish_non_exhaustive()
    }
}

impl SearchIndex {
    /// Indexes every page's title and text.
    pub fn build(pages: &[Page]) -> Result<SearchIndex, SearchError> {
        let mut sb = Schema::builder();
        let title = sb.add_text_field("title", TEXT | STORED);
        let body = sb.add_text_field("body", TEXT | STORED);
        let page = sb.add_u64_field("page", STORED);
        let index = Index::create_in_ram(sb.build());
        let mut writer = index.writer_with_num_threads(1, 50_000_000)?;
        for (i, p) in pages.iter().enumerate() {
            writer.add_document(doc!(title => p.title.as_str(), body => p.text.as_str(), page => i as u64))?;
        }
        writer.commit()?;
        let reader = index.reader()?;
        let mut parser = QueryParser::for_index(&index, vec![title, body]);
        parser.set_field_boost(title, 2.0);
        Ok(SearchIndex {
            reader,
            parser,
            title,
            body,
            page,
        })
    }

    /// The best `n` pages for `query`, best first. Query syntax errors are
    /// forgiven: a search box is not a query language.
    pub fn search(&self, query: &str, n: usize) -> Result<Vec<Hit>, SearchError> {
        if n == 0 || query.trim().is_empty() {
            return Ok(Vec::new());
        }
        // Keep words only, so `"` or `:` in a model's query cannot turn into
        // query syntax.
        let words: String = query
            .chars()
            .map(|c| if c.is_alphanumeric() { c } else { ' ' })
            .collect();
        let (q, _) = self.parser.parse_query_lenient(&words);
        let searcher = self.reader.searcher();
        let top = searcher.search(&q, &TopDocs::with_limit(n).order_by_score())?;
        let mut snippets = SnippetGenerator::create(&searcher, &*q, self.body)?;
        snippets.set_max_num_chars(180);
        let mut hits = Vec::with_capacity(top.len());
        for (score, addr) in top {
            let d: TantivyDocument = searcher.doc(addr)?;
            let title = d
                .get_first(self.title)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string();
            let page = d.get_first(self.page).and_then(|v| v.as_u64()).unwrap_or_default() as usize;
            let mut snippet = snippets.snippet_from_doc(&d).fragment().trim().to_string();
            if snippet.is_empty() {
                let text = d.get_first(self.body).and_then(|v| v.as_str()).unwrap_or_default();
                snippet = text.chars().take(180).collect();
            }
            hits.push(Hit {
                page,
                title,
                snippet: snippet.replace('\n', " "),
                score,
            });
        }
        Ok(hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pages::{Site, render};
    use crate::questions::generate;
    use crate::world::World;

    #[test]
    fn searching_a_subject_finds_its_wiki_page_near_the_top() {
        let w = World::generate(21, 300);
        let pages = render(&w);
        let index = SearchIndex::build(&pages).unwrap();
        let mut found = 0;
        let qs = generate(&w, 3, 60, 1..=4);
        for q in &qs {
            let subject = &w.get(q.chain[0]).name;
            let hits = index.search(subject, 10).unwrap();
            if hits
                .iter()
                .any(|h| pages[h.page].site == Site::Wiki && pages[h.page].entity == Some(q.chain[0]))
            {
                found += 1;
            }
        }
        assert_eq!(found, qs.len(), "every subject's wiki page is in its name's top ten");
        // The same index gives the same ranking.
        let again = SearchIndex::build(&pages).unwrap();
        assert_eq!(
            index.search("founder company", 10).unwrap(),
            again.search("founder company", 10).unwrap()
        );
        assert!(index.search("", 10).unwrap().is_empty());
        // Query syntax in a model's query is read as words, never an error.
        let subject = &w.get(qs[0].chain[0]).name;
        let hits = index.search(&format!("title:\"{subject} (AND"), 5).unwrap();
        assert_eq!(pages[hits[0].page].entity, Some(qs[0].chain[0]));
    }
}
