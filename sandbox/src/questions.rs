//! Questions with 1 to 4 hops over a [`World`], whose answers are stated in
//! the sandbox's pages: a k-hop question needs the wiki pages of k entities.

use fathom_core::SeededRng;

use crate::world::{EntityId, Facts, Kind, World};

/// One generated question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Stable id: `sandbox-{seed}-{index}`.
    pub id: String,
    /// Hops from the named subject to the answer.
    pub hops: u32,
    /// The question text.
    pub text: String,
    /// Accepted answers: the canonical one first, then aliases.
    pub answers: Vec<String>,
    /// The entities visited, subject first; the answer is read from the
    /// last one's page.
    pub chain: Vec<EntityId>,
}

fn person(w: &World, id: EntityId) -> (u32, EntityId) {
    match w.get(id).facts {
        Facts::Person { born, birthplace, .. } => (born, birthplace),
        _ => unreachable!("relations are typed at generation"),
    }
}

fn company(w: &World, id: EntityId) -> (EntityId, EntityId) {
    match w.get(id).facts {
        Facts::Company {
            founder, headquarters, ..
        } => (founder, headquarters),
        _ => unreachable!("relations are typed at generation"),
    }
}

fn city_country(w: &World, id: EntityId) -> EntityId {
    match w.get(id).facts {
        Facts::City { country, .. } => country,
        _ => unreachable!("relations are typed at generation"),
    }
}

fn capital(w: &World, id: EntityId) -> EntityId {
    match w.get(id).facts {
        Facts::Country { capital, .. } => capital,
        _ => unreachable!("relations are typed at generation"),
    }
}

fn work(w: &World, id: EntityId) -> (&'static str, EntityId, EntityId) {
    match w.get(id).facts {
        Facts::Work {
            form,
            creator,
            publisher,
            ..
        } => (form, creator, publisher),
        _ => unreachable!("relations are typed at generation"),
    }
}

fn names(w: &World, id: EntityId) -> Vec<String> {
    let e = w.get(id);
    std::iter::once(e.name.clone())
        .chain(e.aliases.iter().cloned())
        .collect()
}

fn creator_noun(form: &str) -> &'static str {
    match form {
        "novel" => "author",
        "film" => "director",
        _ => "artist",
    }
}

/// One question of `hops` hops, from a template chosen by `rng`.
fn make(w: &World, rng: &mut SeededRng, hops: u32) -> (String, Vec<String>, Vec<EntityId>) {
    let pick = |rng: &mut SeededRng, kind: Kind| -> EntityId {
        let all: Vec<EntityId> = w.of_kind(kind).map(|e| e.id).collect();
        rng.pick(&all)
    };
    let n = |id: EntityId| w.get(id).name.clone();
    match (hops, rng.below(2)) {
        (1, 0) => {
            let c = pick(rng, Kind::Company);
            let (f, _) = company(w, c);
            (format!("Who founded {}?", n(c)), names(w, f), vec![c])
        }
        (1, _) => {
            let p = pick(rng, Kind::Person);
            let (born, _) = person(w, p);
            (
                format!("In which year was {} born?", n(p)),
                vec![born.to_string()],
                vec![p],
            )
        }
        (2, 0) => {
            let c = pick(rng, Kind::Company);
            let (f, _) = company(w, c);
            let (_, city) = person(w, f);
            (
                format!("In which city was the founder of {} born?", n(c)),
                names(w, city),
                vec![c, f],
            )
        }
        (2, _) => {
            let wk = pick(rng, Kind::Work);
            let (form, creator, _) = work(w, wk);
            let (born, _) = person(w, creator);
            (
                format!(
                    "In which year was the {} of the {form} {} born?",
                    creator_noun(form),
                    n(wk)
                ),
                vec![born.to_string()],
                vec![wk, creator],
            )
        }
        (3, 0) => {
            let c = pick(rng, Kind::Company);
            let (f, _) = company(w, c);
            let (_, city) = person(w, f);
            let country = city_country(w, city);
            (
                format!("In which country was the founder of {} born?", n(c)),
                names(w, country),
                vec![c, f, city],
            )
        }
        (3, _) => {
            let wk = pick(rng, Kind::Work);
            let (form, _, publisher) = work(w, wk);
            let (f, _) = company(w, publisher);
            let (_, city) = person(w, f);
            (
                format!(
                    "In which city was the founder of the company behind the {form} {} born?",
                    n(wk)
                ),
                names(w, city),
                vec![wk, publisher, f],
            )
        }
        (_, 0) => {
            let c = pick(rng, Kind::Company);
            let (f, _) = company(w, c);
            let (_, city) = person(w, f);
            let country = city_country(w, city);
            let cap = capital(w, country);
            (
                format!(
                    "What is the capital of the country where the founder of {} was born?",
                    n(c)
                ),
                names(w, cap),
                vec![c, f, city, country],
            )
        }
        (_, _) => {
            let wk = pick(rng, Kind::Work);
            let (form, creator, _) = work(w, wk);
            let (_, city) = person(w, creator);
            let country = city_country(w, city);
            let cap = capital(w, country);
            (
                format!(
                    "What is the capital of the country where the {} of the {form} {} was born?",
                    creator_noun(form),
                    n(wk)
                ),
                names(w, cap),
                vec![wk, creator, city, country],
            )
        }
    }
}

/// `count` questions whose hop counts cycle through `hops` (each in 1..=4),
/// fixed by the world and `seed`. No question text repeats.
pub fn generate(w: &World, seed: u64, count: usize, hops: std::ops::RangeInclusive<u32>) -> Vec<Question> {
    let lo = (*hops.start()).clamp(1, 4);
    let hi = (*hops.end()).clamp(lo, 4);
    let mut rng = SeededRng::new(fathom_core::derive_seed(w.seed ^ seed, "sandbox-questions", 0));
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(count);
    let mut attempts = 0;
    while out.len() < count && attempts < count * 50 {
        attempts += 1;
        let h = lo + (out.len() as u32 % (hi - lo + 1));
        let (text, answers, chain) = make(w, &mut rng, h);
        if seen.insert(text.clone()) {
            out.push(Question {
                id: format!("sandbox-{seed}-{}", out.len()),
                hops: h,
                text,
                answers,
                chain,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pages::{Site, facts, render};

    #[test]
    fn questions_are_deterministic_and_cover_every_hop_count() {
        let w = World::generate(11, 300);
        let a = generate(&w, 1, 40, 1..=4);
        assert_eq!(a, generate(&World::generate(11, 300), 1, 40, 1..=4));
        assert_eq!(a.len(), 40);
        for h in 1..=4 {
            assert_eq!(a.iter().filter(|q| q.hops == h).count(), 10);
        }
        assert!(a.iter().all(|q| q.chain.len() == q.hops as usize));
    }

    #[test]
    fn every_answer_is_reachable_by_following_the_wiki_pages() {
        // The mechanical solver: start at the subject named in the
        // question, read its wiki page, follow the entity named there that
        // the chain visits next, and find the answer on the last page.
        let w = World::generate(13, 300);
        let pages = render(&w);
        let wiki = |id: EntityId| {
            pages
                .iter()
                .find(|p| p.site == Site::Wiki && p.entity == Some(id))
                .unwrap()
        };
        for q in generate(&w, 2, 80, 1..=4) {
            assert!(q.text.contains(&w.get(q.chain[0]).name), "{}", q.text);
            for pair in q.chain.windows(2) {
                assert!(
                    wiki(pair[0]).text.contains(&w.get(pair[1]).name),
                    "{}: page of {} does not name {}",
                    q.text,
                    w.get(pair[0]).name,
                    w.get(pair[1]).name
                );
            }
            let last = wiki(*q.chain.last().unwrap());
            assert!(
                last.text.contains(&q.answers[0]),
                "{}: answer {} not on {}",
                q.text,
                q.answers[0],
                last.title
            );
            assert!(
                facts(&w, w.get(*q.chain.last().unwrap()))
                    .iter()
                    .any(|s| s.contains(&q.answers[0]))
            );
        }
    }
}
