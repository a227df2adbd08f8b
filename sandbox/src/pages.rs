//! The pages of the sandbox web, rendered from a [`World`].
//!
//! Four sites, each served on its own loopback port so that their hosts
//! differ as real domains do: `wiki` (one authoritative page per entity),
//! `news` (articles that restate some facts in other words, among ads),
//! `forum` (threads that repeat outdated or wrong claims) and `mirror`
//! (near-duplicate copies of wiki pages under other boilerplate).

use fathom_core::SeededRng;

use crate::world::{Entity, EntityId, Facts, Kind, World};

/// One of the sandbox's sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    /// The encyclopedia: every entity, accurate.
    Wiki,
    /// News articles: some entities, accurate, other wording.
    News,
    /// A forum: some entities, with outdated or wrong claims.
    Forum,
    /// Copies of wiki pages.
    Mirror,
    /// The user's own documents (`--corpus`).
    Corpus,
}

impl Site {
    /// All sites, in port order.
    pub const ALL: [Site; 5] = [Site::Wiki, Site::News, Site::Forum, Site::Mirror, Site::Corpus];

    /// The site's short name.
    pub fn name(self) -> &'static str {
        match self {
            Site::Wiki => "wiki",
            Site::News => "news",
            Site::Forum => "forum",
            Site::Mirror => "mirror",
            Site::Corpus => "corpus",
        }
    }

    /// Position in [`Site::ALL`].
    pub fn index(self) -> usize {
        Site::ALL.iter().position(|s| *s == self).expect("listed")
    }
}

/// A rendered page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Where it lives.
    pub site: Site,
    /// Its path on the site, starting with `/`.
    pub path: String,
    /// Its title.
    pub title: String,
    /// The full HTML.
    pub html: String,
    /// The readable text (title and body prose), which search indexes.
    pub text: String,
    /// The entity it is about (none for corpus documents).
    pub entity: Option<EntityId>,
}

/// `a` or `an` before a word.
fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The related entities a page links to.
fn related(e: &Entity) -> Vec<EntityId> {
    match e.facts {
        Facts::Country { capital, .. } => vec![capital],
        Facts::City { country, .. } => vec![country],
        Facts::Person { birthplace, .. } => vec![birthplace],
        Facts::Company {
            founder, headquarters, ..
        } => vec![founder, headquarters],
        Facts::Work { creator, publisher, .. } => vec![creator, publisher],
    }
}

/// The accurate sentences about an entity. Each relation is stated on the
/// page of the entity it starts from, so a k-hop question needs k pages.
pub fn facts(w: &World, e: &Entity) -> Vec<String> {
    let n = |id: EntityId| w.get(id).name.clone();
    match &e.facts {
        Facts::Country {
            capital,
            continent,
            currency,
        } => vec![
            format!("{} is a country in {continent}.", e.name),
            format!("Its capital is {}.", n(*capital)),
            format!("The currency of {} is the {currency}.", e.name),
        ],
        Facts::City {
            country,
            population,
            founded,
        } => vec![
            format!("{} is a city in {}.", e.name, n(*country)),
            format!("It was founded in {founded} and has a population of {population}."),
        ],
        Facts::Person {
            born,
            birthplace,
            occupation,
        } => vec![
            format!("{} is {} {occupation}.", e.name, article(occupation)),
            format!("{} was born in {} in {born}.", e.name, n(*birthplace)),
        ],
        Facts::Company {
            founder,
            founded,
            headquarters,
            industry,
        } => vec![
            format!(
                "{} is a {industry} company founded in {founded} by {}.",
                e.name,
                n(*founder)
            ),
            format!("The company is headquartered in {}.", n(*headquarters)),
        ],
        Facts::Work {
            form,
            year,
            creator,
            publisher,
        } => {
            let (made, released) = match *form {
                "novel" => ("written", "published"),
                "film" => ("directed", "produced"),
                _ => ("recorded", "released"),
            };
            vec![
                format!("{} is a {year} {form} {made} by {}.", e.name, n(*creator)),
                format!("It was {released} by {}.", n(*publisher)),
            ]
        }
    }
}

/// A plausible but wrong version of one fact, for forum pages.
fn wrong_fact(e: &Entity, rng: &mut SeededRng) -> String {
    let claim = match &e.facts {
        Facts::Person { born, .. } => format!(
            "pretty sure {} was born in {}, not what the wiki says",
            e.name,
            born + 1 + rng.below(5) as u32
        ),
        Facts::Company { founded, .. } => format!(
            "{} was really founded in {}, the official date is wrong",
            e.name,
            founded - 1 - rng.below(4) as u32
        ),
        Facts::City { population, .. } => format!("{} has maybe {} people these days", e.name, population / 2),
        Facts::Country { .. } => format!("I heard {} is moving its capital soon", e.name),
        Facts::Work { year, .. } => format!("{} came out in {} if I remember right", e.name, year + 2),
    };
    format!("{claim} (thread #{})", 1000 + rng.below(90_000))
}

fn link(e: &Entity) -> String {
    format!("<a href=\"/{}\">{}</a>", e.slug, esc(&e.name))
}

fn shell(site: Site, title: &str, body: &str, rng: &mut SeededRng) -> String {
    let nav: String = ["Home", "Random", "Contact", "About", "Help", "Log in"]
        .iter()
        .map(|n| format!("<li><a href=\"/{}\">{n}</a></li>", n.to_lowercase().replace(' ', "_")))
        .collect();
    let ad = if matches!(site, Site::News | Site::Forum) {
        format!(
            "<aside class=\"ad\">Sponsored: save {}% on your next trip. Limited offer!</aside>",
            10 + rng.below(60)
        )
    } else {
        String::new()
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t} - {s}</title>\
         <style>body{{font-family:serif}} .ad{{border:1px solid #ccc}}</style>\
         <script>window.dataLayer=[];function track(){{return 0}}</script></head>\
         <body><header><div class=\"logo\">{s}</div><nav><ul>{nav}</ul></nav></header>\
         {ad}<main><h1>{t}</h1>\n{body}\n</main>{ad}\
         <footer><p>Content is available under a free licence. Privacy policy. Terms of use.</p></footer>\
         </body></html>\n",
        t = esc(title),
        s = site.name(),
    )
}

/// Renders every page of the world. Deterministic: the same world gives the
/// same pages, byte for byte.
pub fn render(w: &World) -> Vec<Page> {
    let mut rng = SeededRng::new(fathom_core::derive_seed(w.seed, "sandbox-pages", 0));
    let mut pages = Vec::new();
    for e in &w.entities {
        let sentences = facts(w, e);
        let links: Vec<&Entity> = related(e).into_iter().map(|id| w.get(id)).collect();

        // Wiki: infobox, prose, see-also.
        let infobox: String = sentences
            .iter()
            .map(|s| format!("<tr><td>{}</td></tr>", esc(s)))
            .collect();
        let see_also: String = links.iter().map(|r| format!("<li>{}</li>", link(r))).collect();
        let filler = format!(
            "{} appears in several collections of the {} archive. Editors have not yet reviewed every section of this article.",
            e.name,
            ["early", "modern", "regional"][e.id % 3]
        );
        let body = format!(
            "<table class=\"infobox\">{infobox}</table>\n<p>{}</p>\n<h2>Notes</h2>\n<p>{}</p>\n<h2>See also</h2><ul>{see_also}</ul>",
            esc(&sentences.join(" ")),
            esc(&filler)
        );
        let text = format!("{}\n{}\n{}", e.name, sentences.join(" "), filler);
        pages.push(Page {
            site: Site::Wiki,
            path: format!("/{}", e.slug),
            title: e.name.clone(),
            html: shell(Site::Wiki, &e.name, &body, &mut rng),
            text: text.clone(),
            entity: Some(e.id),
        });

        // Mirror: a near-duplicate of about a third of the wiki.
        if rng.below(3) == 0 {
            let body = format!(
                "<p class=\"notice\">This page is a copy of an encyclopedia article.</p><p>{}</p>",
                esc(&sentences.join(" "))
            );
            pages.push(Page {
                site: Site::Mirror,
                path: format!("/{}", e.slug),
                title: format!("{} (copy)", e.name),
                html: shell(Site::Mirror, &format!("{} (copy)", e.name), &body, &mut rng),
                text: format!("{} (copy)\n{}", e.name, sentences.join(" ")),
                entity: Some(e.id),
            });
        }

        // News: people, companies and works, half of them.
        if matches!(e.kind, Kind::Person | Kind::Company | Kind::Work) && rng.below(2) == 0 {
            let lead = match e.kind {
                Kind::Person => format!("Profile: the life and work of {}", e.name),
                Kind::Company => format!("Inside {}: a look at the company", e.name),
                _ => format!("Review: {}", e.name),
            };
            let mut paras: Vec<String> = sentences.iter().rev().cloned().collect();
            paras.insert(1, format!("Our reporter spoke to people who know {} well.", e.name));
            let body: String = paras.iter().map(|p| format!("<p>{}</p>", esc(p))).collect();
            pages.push(Page {
                site: Site::News,
                path: format!("/{}", e.slug),
                title: lead.clone(),
                html: shell(Site::News, &lead, &body, &mut rng),
                text: format!("{lead}\n{}", paras.join(" ")),
                entity: Some(e.id),
            });
        }

        // Forum: a fifth of the entities, with a wrong claim.
        if rng.below(5) == 0 {
            let claim = wrong_fact(e, &mut rng);
            let title = format!("Question about {}", e.name);
            let body = format!(
                "<div class=\"post\"><p>{}</p></div><div class=\"post\"><p>{}</p></div>",
                esc(&claim),
                esc("Not sure, somebody should check a proper source.")
            );
            pages.push(Page {
                site: Site::Forum,
                path: format!("/{}", e.slug),
                title: title.clone(),
                html: shell(Site::Forum, &title, &body, &mut rng),
                text: format!("{title}\n{claim}"),
                entity: Some(e.id),
            });
        }
    }
    pages
}

/// One document of a user's corpus (a line of the `--corpus` JSONL file).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct CorpusDoc {
    /// Where the document came from; kept in the page for the reader.
    pub url: String,
    /// Its title.
    pub title: String,
    /// Its text.
    pub text: String,
}

/// Reads a corpus: JSON lines of `{"url", "title", "text"}`.
pub fn read_corpus(jsonl: &str) -> Result<Vec<CorpusDoc>, String> {
    jsonl
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| format!("line {}: expected {{\"url\", \"title\", \"text\"}}: {e}", i + 1))
        })
        .collect()
}

/// Pages for corpus documents, served on the corpus site at `/doc/{n}`.
pub fn corpus_pages(docs: &[CorpusDoc]) -> Vec<Page> {
    let mut rng = SeededRng::new(0);
    docs.iter()
        .enumerate()
        .map(|(i, d)| {
            let paras: String = d
                .text
                .split("\n\n")
                .filter(|p| !p.trim().is_empty())
                .map(|p| format!("<p>{}</p>\n", esc(p.trim())))
                .collect();
            let body = format!("<p class=\"source\">Source: {}</p>\n{paras}", esc(&d.url));
            Page {
                site: Site::Corpus,
                path: format!("/doc/{i}"),
                title: d.title.clone(),
                html: shell(Site::Corpus, &d.title, &body, &mut rng),
                text: format!("{}\n{}", d.title, d.text),
                entity: None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_deterministic_and_every_entity_has_a_wiki_page() {
        let w = World::generate(5, 200);
        let a = render(&w);
        assert_eq!(a, render(&World::generate(5, 200)));
        for e in &w.entities {
            let wiki = a
                .iter()
                .find(|p| p.site == Site::Wiki && p.entity == Some(e.id))
                .expect("wiki page");
            assert!(
                wiki.html.contains("<nav>") && wiki.html.contains("<script>"),
                "boilerplate present"
            );
            for s in facts(&w, e) {
                assert!(wiki.text.contains(&s));
            }
        }
        for site in [Site::News, Site::Forum, Site::Mirror] {
            assert!(a.iter().any(|p| p.site == site), "{site:?} has pages");
        }
        // Paths are unique per site.
        let mut seen = std::collections::HashSet::new();
        assert!(a.iter().all(|p| seen.insert((p.site, p.path.clone()))));
    }
}
