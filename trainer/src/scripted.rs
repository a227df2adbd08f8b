//! The scripted researcher: a deterministic heuristic policy.
//!
//! It decomposes a question into a subject and a chain of relations ("the
//! capital of the country where the founder of X was born" is X → founder
//! → birthplace → country → capital), then for each hop searches the
//! current entity, browses its page, and reads the relation's value from
//! the browsing agent's notes. Questions of other shapes get one search of
//! the whole question, one browse, and an honest "cannot find" when the
//! notes do not give an answer. Its turns follow the protocol's text format
//! exactly, so its trajectories are valid training data; it is the
//! prompt-engineering baseline and the teacher for warm-start data.

use fathom_core::event::FinishReason;
use fathom_core::protocol::{Message, Protocol, ToolCall};

use crate::policy::{Generation, Policy, PolicyError, PolicyInput};
use crate::tools::split_sentences;

/// A relation the researcher can follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// Company → founder.
    Founder,
    /// Person → birth year (an answer, not an entity).
    BornYear,
    /// Person → birthplace.
    Birthplace,
    /// City → country.
    Country,
    /// Country → capital.
    Capital,
    /// Work → creator.
    Creator,
    /// Work → publisher.
    Publisher,
}

impl Relation {
    fn noun(self) -> &'static str {
        match self {
            Relation::Founder => "founder",
            Relation::BornYear => "birth year",
            Relation::Birthplace => "birthplace",
            Relation::Country => "country",
            Relation::Capital => "capital",
            Relation::Creator => "creator",
            Relation::Publisher => "publisher",
        }
    }

    /// Reads the relation's value from notes, by the phrasing pages use.
    pub fn extract(self, entity: &str, notes: &str) -> Option<String> {
        let after = |marker: &str| -> Option<String> {
            notes.match_indices(marker).find_map(|(i, _)| {
                let rest = &notes[i + marker.len()..];
                let end = rest.find(['.', ',', ';', '\n']).unwrap_or(rest.len());
                let v = rest[..end].trim();
                (!v.is_empty()).then(|| v.to_string())
            })
        };
        match self {
            Relation::Founder => notes.match_indices(" by ").find_map(|(i, _)| {
                let before = &notes[..i];
                before.rfind("founded in").map(|_| ())?;
                let rest = &notes[i + 4..];
                let end = rest.find(['.', ',', ';', '\n']).unwrap_or(rest.len());
                Some(rest[..end].trim().to_string())
            }),
            Relation::Birthplace | Relation::BornYear => {
                // "<entity> was born in CITY in 1950."
                let v = after(&format!("{entity} was born in "))?;
                let (city, year) = v.rsplit_once(" in ")?;
                Some(if self == Relation::Birthplace {
                    city.trim().to_string()
                } else {
                    year.trim().to_string()
                })
            }
            Relation::Country => after(&format!("{entity} is a city in ")),
            Relation::Capital => after("Its capital is "),
            Relation::Creator => ["written by ", "directed by ", "recorded by "]
                .iter()
                .find_map(|m| after(m)),
            Relation::Publisher => ["published by ", "produced by ", "released by "]
                .iter()
                .find_map(|m| after(m)),
        }
    }
}

/// Splits a question into its subject and the relations to follow, for the
/// question shapes the sandbox asks; `None` for other shapes.
pub fn decompose(question: &str) -> Option<(String, Vec<Relation>)> {
    use Relation::*;
    let q = question.trim().trim_end_matches('?').trim();
    let work = |rest: &str| -> Option<String> {
        // "the novel X" / "the film X" / "the album X"
        ["the novel ", "the film ", "the album "]
            .iter()
            .find_map(|p| rest.strip_prefix(p))
            .map(str::to_string)
    };
    let creator_of = |s: &str| -> Option<String> {
        ["the author of ", "the director of ", "the artist of "]
            .iter()
            .find_map(|p| s.strip_prefix(p))
            .and_then(work)
    };
    if let Some(x) = q.strip_prefix("Who founded ") {
        return Some((x.to_string(), vec![Founder]));
    }
    if let Some(rest) = q.strip_prefix("What is the capital of the country where ") {
        let rest = rest.strip_suffix(" was born")?;
        if let Some(x) = rest.strip_prefix("the founder of ") {
            return Some((x.to_string(), vec![Founder, Birthplace, Country, Capital]));
        }
        return creator_of(rest).map(|x| (x, vec![Creator, Birthplace, Country, Capital]));
    }
    if let Some(rest) = q.strip_prefix("In which country was the founder of ") {
        return rest
            .strip_suffix(" born")
            .map(|x| (x.to_string(), vec![Founder, Birthplace, Country]));
    }
    if let Some(rest) = q.strip_prefix("In which city was the founder of ") {
        let rest = rest.strip_suffix(" born")?;
        if let Some(w) = rest.strip_prefix("the company behind ") {
            return work(w).map(|x| (x, vec![Publisher, Founder, Birthplace]));
        }
        return Some((rest.to_string(), vec![Founder, Birthplace]));
    }
    if let Some(rest) = q.strip_prefix("In which year was ") {
        let rest = rest.strip_suffix(" born")?;
        if let Some(x) = creator_of(rest) {
            return Some((x, vec![Creator, BornYear]));
        }
        return Some((rest.to_string(), vec![BornYear]));
    }
    None
}

/// A search result as a tool response shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hit {
    title: String,
    url: String,
    snippet: String,
}

/// Search results in a tool response, in order.
fn results_of(response: &str) -> Vec<Hit> {
    let mut out: Vec<Hit> = Vec::new();
    let mut title: Option<String> = None;
    let mut in_snippet = false;
    for line in response.lines() {
        if let Some(rest) = line.strip_prefix('[')
            && let Some((_, t)) = rest.split_once("] ")
        {
            title = Some(t.to_string());
            in_snippet = false;
        } else if let Some(url) = line.strip_prefix("URL: ")
            && let Some(t) = title.take()
        {
            out.push(Hit {
                title: t,
                url: url.trim().to_string(),
                snippet: String::new(),
            });
            in_snippet = true;
        } else if in_snippet && let Some(hit) = out.last_mut() {
            if line.trim().is_empty() {
                in_snippet = false;
            } else {
                hit.snippet.push_str(line);
            }
        }
    }
    out
}

fn unwrap_tool_response(m: &Message) -> Option<&str> {
    match m {
        Message::Tool(t) => Some(
            t.trim()
                .trim_start_matches("<tool_response>")
                .trim_end_matches("</tool_response>")
                .trim(),
        ),
        _ => None,
    }
}

/// How the researcher writes (fixed by the protocol version, so an
/// episode replays with the text it was recorded with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Style {
    /// Version 2: a value copied from text (a query, an answer) is written
    /// with a leading space, which the parser trims. Byte-level BPE tokens
    /// carry the space before a word, so `<answer> Ada Lind` is written
    /// with the very tokens the page has (` Ada`, ` Lind`), where
    /// `<answer>Ada Lind` would need other ones (`Ada`): a small model
    /// learns to copy tokens far sooner than to translate them.
    spaced: bool,
    /// Answer from the search results' snippets when they state the fact,
    /// browsing only when they do not (a choice of the researcher's, not of
    /// the protocol: see [`ScriptedPolicy::reading_snippets`]).
    snippets: bool,
    /// Version 2: quote the sentence that states a value in the think.
    quote: bool,
}

/// Where a value was read: a result's snippet or a browsed page.
#[derive(Debug, Clone, Copy)]
struct Source<'a> {
    text: &'a str,
    page: bool,
}

impl Style {
    fn of(protocol: Protocol) -> Style {
        let v2 = protocol != Protocol::V1;
        Style {
            spaced: v2,
            snippets: false,
            quote: v2,
        }
    }

    fn value(self, v: &str) -> String {
        if self.spaced { format!(" {v}") } else { v.to_string() }
    }

    fn search(self, think: &str, query: &str) -> String {
        let call = ToolCall::WebSearch {
            query: vec![self.value(query)],
        };
        format!("<think>{think}</think>\n{}", call.to_tag())
    }

    fn browse(self, think: &str, url: &str) -> String {
        let call = ToolCall::BrowseWebpage {
            url_list: vec![url.to_string()],
        };
        format!("<think>{think}</think>\n{}", call.to_tag())
    }

    fn answer(self, think: &str, answer: &str) -> String {
        format!("<think>{think}</think>\n<answer>{}</answer>", self.value(answer))
    }
}

/// What the researcher is doing, kept across the turns of one episode.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Start,
    /// Searched for `entity`; next, browse.
    Searched {
        entity: String,
    },
    /// Browsed result `index` of the last search for `entity`.
    Browsed {
        entity: String,
        index: usize,
        results: Vec<Hit>,
    },
}

/// How a warm start's scripted researcher behaves (recorded in the warm
/// start's configuration, so its episodes replay).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Teacher {
    /// Answer from snippets when they state the fact.
    pub snippets: bool,
    /// Share of episodes answered at once without research.
    pub guesses: f64,
}

/// Result indices, the result titled exactly like `entity` first, then
/// the others in order.
fn ordered(results: &[Hit], entity: &str) -> Vec<usize> {
    let mut order: Vec<usize> = (0..results.len()).collect();
    order.sort_by_key(|&i| (!results[i].title.eq_ignore_ascii_case(entity), i));
    order
}

/// The scripted researcher. One instance per episode.
#[derive(Debug, Clone)]
pub struct ScriptedPolicy {
    plan: Option<(String, Vec<Relation>)>,
    hop: usize,
    step: Step,
    style: Style,
    /// Per mille of episodes answered at once, without research.
    guess_permille: u64,
    /// Whether it answers from snippets when they state the fact.
    snippets: bool,
}

impl Default for ScriptedPolicy {
    fn default() -> Self {
        ScriptedPolicy {
            plan: None,
            hop: 0,
            step: Step::Start,
            style: Style::of(Protocol::CURRENT),
            guess_permille: 0,
            snippets: false,
        }
    }
}

impl ScriptedPolicy {
    /// A researcher for a new episode.
    pub fn new() -> Self {
        ScriptedPolicy::default()
    }

    /// A researcher that answers a share (0 to 1) of its episodes at once
    /// from the question alone, without searching: its guess is the
    /// question's subject. Which episodes is fixed by each episode's seed,
    /// so a replay guesses on the same ones. A warm start on such episodes
    /// imitates a policy that does not always research, as a pretrained
    /// model answers from memory, and leaves GRPO the lesson that
    /// researching pays.
    pub fn guessing(mut self, share: f64) -> Self {
        self.guess_permille = (share.clamp(0.0, 1.0) * 1000.0).round() as u64;
        self
    }

    /// A researcher that answers from the search results' snippets when
    /// they state the fact, and browses only when they do not: two turns for
    /// a one-hop question instead of three, which is what a tiny model
    /// learns from fastest. The default researcher browses every entity's
    /// page.
    pub fn reading_snippets(mut self, on: bool) -> Self {
        self.snippets = on;
        self
    }

    /// The researcher a warm start's `teacher` describes.
    pub fn teacher(t: &Teacher) -> Self {
        ScriptedPolicy::new().reading_snippets(t.snippets).guessing(t.guesses)
    }

    /// Whether an episode of `seed` is one this researcher guesses on.
    pub fn guesses(&self, seed: u64) -> bool {
        self.guess_permille > 0 && fathom_core::derive_seed(seed, "scripted-guess", 0) % 1000 < self.guess_permille
    }

    fn next_text(&mut self, input: PolicyInput<'_>) -> String {
        if input.turn == 0 {
            self.plan = decompose(input.question);
            self.hop = 0;
            self.step = Step::Start;
            self.style = Style {
                snippets: self.snippets,
                ..Style::of(input.protocol)
            };
            if self.guesses(input.seed) {
                let guess = self
                    .plan
                    .as_ref()
                    .map_or_else(|| input.question.to_string(), |p| p.0.clone());
                return self.style.answer("I think I know this without searching.", &guess);
            }
        }
        let style = self.style;
        let last_response = input.messages.last().and_then(unwrap_tool_response).unwrap_or_default();
        // On the last allowed turn, answer with whatever is known.
        let Some((subject, relations)) = self.plan.clone() else {
            return self.generic(input, last_response);
        };
        match std::mem::replace(&mut self.step, Step::Start) {
            Step::Start => {
                let steps: Vec<&str> = relations.iter().map(|r| r.noun()).collect();
                self.step = Step::Searched {
                    entity: subject.clone(),
                };
                style.search(
                    &format!(
                        "First I will find the page about {subject}, then follow {} to the answer.",
                        steps.join(", then the ")
                    ),
                    &subject,
                )
            }
            Step::Searched { entity } => {
                let results = results_of(last_response);
                let relation = relations[self.hop];
                // The snippets of results about the entity, best first.
                let stated = style
                    .snippets
                    .then(|| {
                        ordered(&results, &entity)
                            .into_iter()
                            .find_map(|i| relation.extract(&entity, &results[i].snippet).map(|v| (v, i)))
                    })
                    .flatten();
                match stated {
                    Some((value, i)) => self.found(
                        &relations,
                        &entity,
                        value,
                        Source {
                            text: &results[i].snippet,
                            page: false,
                        },
                    ),
                    None => self.browse_result(entity, results, 0),
                }
            }
            Step::Browsed { entity, index, results } => {
                let relation = relations[self.hop];
                match relation.extract(&entity, last_response) {
                    Some(value) => self.found(
                        &relations,
                        &entity,
                        value,
                        Source {
                            text: last_response,
                            page: true,
                        },
                    ),
                    None => self.browse_result(entity, results, index + 1),
                }
            }
        }
    }

    /// The turn after reading the current hop's `value` in `source`: the
    /// answer on the last hop, else the search for the next entity.
    fn found(&mut self, relations: &[Relation], entity: &str, value: String, source: Source<'_>) -> String {
        let relation = relations[self.hop];
        let last = self.hop + 1 == relations.len();
        // Version 2 quotes the sentence that states the value, so a small
        // model writes the value by continuing a sentence it can see (an
        // induction copy) rather than by looking it up.
        let quoted = self
            .style
            .quote
            .then(|| {
                split_sentences(source.text)
                    .into_iter()
                    .find(|s| s.contains(value.as_str()))
            })
            .flatten();
        let says = if source.page {
            "The page says"
        } else {
            "The results say"
        };
        if last {
            let think = match quoted {
                Some(sentence) => format!("{says}: {sentence}"),
                None => format!("{says} the {} of {entity} is {value}.", relation.noun()),
            };
            return self.style.answer(&think, &value);
        }
        self.hop += 1;
        self.step = Step::Searched { entity: value.clone() };
        let think = match quoted {
            Some(sentence) => format!(
                "{says}: {sentence} Next I need the {} of {value}.",
                relations[self.hop].noun()
            ),
            None => format!(
                "The {} of {entity} is {value}. Next I need the {} of {value}.",
                relation.noun(),
                relations[self.hop].noun()
            ),
        };
        self.style.search(&think, &value)
    }

    fn browse_result(&mut self, entity: String, results: Vec<Hit>, from: usize) -> String {
        let order = ordered(&results, &entity);
        match order.get(from) {
            Some(&i) if from < 3 => {
                let (title, url) = (results[i].title.clone(), results[i].url.clone());
                self.step = Step::Browsed {
                    entity: entity.clone(),
                    index: from,
                    results,
                };
                self.style
                    .browse(&format!("The result \"{title}\" should say more about {entity}."), &url)
            }
            _ => self.style.answer(
                &format!("None of the pages I could read says this about {entity}."),
                "I cannot find the answer in the sources",
            ),
        }
    }

    /// Questions of unknown shape: search it, read the best page, answer
    /// with the first name-like phrase not in the question, or abstain.
    fn generic(&mut self, input: PolicyInput<'_>, last_response: &str) -> String {
        let style = self.style;
        match input.turn {
            0 => style.search("I will search for the question directly.", input.question),
            1 => match results_of(last_response).first() {
                Some(hit) => style.browse("The top result looks relevant.", &hit.url),
                None => style.answer("The search found nothing.", "I cannot find the answer in the sources"),
            },
            _ => {
                let q = fathom_core::reward::word_set(input.question);
                let candidate = last_response
                    .lines()
                    .filter(|l| !l.starts_with("## "))
                    .flat_map(|l| l.split(['.', ',', ';']))
                    .flat_map(capitalised_runs)
                    .find(|c| fathom_core::reward::word_set(c).is_disjoint(&q));
                match candidate {
                    Some(c) => style.answer("This name answers the question.", &c),
                    None => style.answer(
                        "The page does not answer it.",
                        "I cannot find the answer in the sources",
                    ),
                }
            }
        }
    }
}

/// Runs of capitalised words (not sentence-initial alone) in a text.
fn capitalised_runs(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut run: Vec<&str> = Vec::new();
    for (i, w) in s.split_whitespace().enumerate() {
        if w.chars().next().is_some_and(char::is_uppercase) && i > 0 {
            run.push(w);
        } else if !run.is_empty() {
            out.push(run.join(" "));
            run.clear();
        }
    }
    if !run.is_empty() {
        out.push(run.join(" "));
    }
    out
}

impl Policy for ScriptedPolicy {
    fn name(&self) -> &str {
        "scripted"
    }

    fn generate(&mut self, input: PolicyInput<'_>) -> Result<Generation, PolicyError> {
        let text = self.next_text(input);
        let n_tokens = (text.len() / 4).max(1) as u32;
        Ok(Generation {
            text,
            token_ids: None,
            logprobs: None,
            n_tokens,
            finish: FinishReason::Stop,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Relation::*;

    #[test]
    fn sandbox_questions_decompose_into_relation_chains() {
        let cases = [
            ("Who founded Zest Mobile?", "Zest Mobile", vec![Founder]),
            ("In which year was Ada Lind born?", "Ada Lind", vec![BornYear]),
            (
                "In which city was the founder of Zest Mobile born?",
                "Zest Mobile",
                vec![Founder, Birthplace],
            ),
            (
                "In which year was the author of the novel The Last Tide born?",
                "The Last Tide",
                vec![Creator, BornYear],
            ),
            (
                "In which country was the founder of Zest Mobile born?",
                "Zest Mobile",
                vec![Founder, Birthplace, Country],
            ),
            (
                "In which city was the founder of the company behind the film The Last Tide born?",
                "The Last Tide",
                vec![Publisher, Founder, Birthplace],
            ),
            (
                "What is the capital of the country where the founder of Zest Mobile was born?",
                "Zest Mobile",
                vec![Founder, Birthplace, Country, Capital],
            ),
            (
                "What is the capital of the country where the artist of the album Blue Tide was born?",
                "Blue Tide",
                vec![Creator, Birthplace, Country, Capital],
            ),
        ];
        for (q, subject, chain) in cases {
            assert_eq!(decompose(q), Some((subject.to_string(), chain)), "{q}");
        }
        assert_eq!(decompose("what happened to ray lake of the real thing"), None);
    }

    #[test]
    fn relation_values_are_read_from_page_phrasing() {
        let notes = "Zest Mobile is a mobile phones company founded in 2011 by Ada Lind. The company is headquartered in Holmford.";
        assert_eq!(Founder.extract("Zest Mobile", notes).as_deref(), Some("Ada Lind"));
        let notes = "Ada Lind is an engineer. Ada Lind was born in Port Ria in 1980.";
        assert_eq!(Birthplace.extract("Ada Lind", notes).as_deref(), Some("Port Ria"));
        assert_eq!(BornYear.extract("Ada Lind", notes).as_deref(), Some("1980"));
        assert_eq!(
            Country.extract("Port Ria", "Port Ria is a city in Veland.").as_deref(),
            Some("Veland")
        );
        assert_eq!(
            Capital
                .extract("Veland", "Veland is a country. Its capital is Holm.")
                .as_deref(),
            Some("Holm")
        );
        assert_eq!(
            Creator.extract("X", "X is a 1990 film directed by Bo Dag.").as_deref(),
            Some("Bo Dag")
        );
        assert_eq!(
            Publisher.extract("X", "It was released by Tide Records.").as_deref(),
            Some("Tide Records")
        );
        assert_eq!(Founder.extract("Zest", "No founder here."), None);
    }

    #[test]
    fn a_guessing_researcher_answers_a_share_of_episodes_at_once_by_their_seed() {
        let first = |p: &mut ScriptedPolicy, seed: u64| {
            let msgs = vec![Message::User("In which year was Ada Lind born?".into())];
            p.generate(PolicyInput {
                question: "In which year was Ada Lind born?",
                messages: &msgs,
                turn: 0,
                seed,
                max_tokens: 2000,
                protocol: Protocol::V2,
            })
            .unwrap()
            .text
        };
        let half = ScriptedPolicy::new().guessing(0.5);
        let guessed: Vec<u64> = (0..400).filter(|&s| half.guesses(s)).collect();
        assert!((150..250).contains(&guessed.len()), "{} of 400", guessed.len());
        let text = first(&mut ScriptedPolicy::new().guessing(0.5), guessed[0]);
        assert_eq!(
            text,
            "<think>I think I know this without searching.</think>\n<answer> Ada Lind</answer>"
        );
        assert!(matches!(
            Protocol::V2.parse_turn(&text).unwrap().action,
            fathom_core::protocol::Action::Answer(_)
        ));
        // The others research, as the plain researcher does on every seed.
        let other = (0..400).find(|s| !half.guesses(*s)).unwrap();
        assert_eq!(
            first(&mut ScriptedPolicy::new().guessing(0.5), other),
            first(&mut ScriptedPolicy::new(), other)
        );
        assert!(!(0..400).any(|s| ScriptedPolicy::new().guesses(s)));
    }

    #[test]
    fn a_snippet_reader_answers_from_a_snippet_that_states_the_fact_and_browses_otherwise() {
        let q = "In which year was Ada Lind born?";
        let second = |snippets: bool, snippet: &str| {
            let mut p = ScriptedPolicy::new().reading_snippets(snippets);
            let mut msgs = vec![Message::User(q.into())];
            fn input(msgs: &[Message], turn: u32) -> PolicyInput<'_> {
                PolicyInput {
                    question: "In which year was Ada Lind born?",
                    messages: msgs,
                    turn,
                    seed: 0,
                    max_tokens: 2000,
                    protocol: Protocol::V2,
                }
            }
            let first = p.generate(input(&msgs, 0)).unwrap().text;
            assert!(first.contains(r#"{"query":[" Ada Lind"]}"#), "{first}");
            msgs.push(Message::Assistant(first));
            msgs.push(Message::Tool(fathom_core::protocol::tool_response(&format!(
                "## Results for \"Ada Lind\"\n\n[1] Ada Lind\nURL: http://127.0.0.1:8931/Ada_Lind\n{snippet}"
            ))));
            p.generate(input(&msgs, 1)).unwrap().text
        };
        let stated = "Ada Lind Ada Lind is an engineer. Ada Lind was born in Port Ria in 1980. More.";
        // The sentence that states the year is quoted, and the answer is
        // written with its leading space.
        assert_eq!(
            second(true, stated),
            "<think>The results say: Ada Lind was born in Port Ria in 1980.</think>\n<answer> 1980</answer>"
        );
        assert!(
            second(false, stated).contains("browse_webpage"),
            "the default researcher browses"
        );
        assert!(second(true, "Ada Lind Ada Lind is an engineer.").contains("browse_webpage"));
    }

    #[test]
    fn every_turn_is_well_formed() {
        let mut p = ScriptedPolicy::new();
        let msgs = vec![Message::User("Who founded Zest Mobile?".into())];
        let g = p
            .generate(PolicyInput {
                question: "Who founded Zest Mobile?",
                messages: &msgs,
                turn: 0,
                seed: 1,
                max_tokens: 2000,
                protocol: fathom_core::protocol::Protocol::V2,
            })
            .unwrap();
        // Its turns hold under both versions' rules.
        fathom_core::protocol::Protocol::V2.parse_turn(&g.text).unwrap();
        let turn = fathom_core::protocol::parse_turn(&g.text).unwrap();
        assert!(matches!(
            turn.action,
            fathom_core::protocol::Action::ToolCall(ToolCall::WebSearch { .. })
        ));
        assert!(turn.think.unwrap().starts_with("First I will find"));
    }
}
