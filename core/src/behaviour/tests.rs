//! Hand-written trajectories: each behaviour has cases that must be tagged
//! and near misses that must not.

use super::*;

fn search(think: &str, queries: &[&str]) -> String {
    let q: Vec<String> = queries.iter().map(|q| format!("{q:?}")).collect();
    format!(
        "<think>{think}</think>\n<tool_call>{{\"name\": \"web_search\", \"arguments\": {{\"query\": [{}]}}}}</tool_call>",
        q.join(", ")
    )
}

fn browse(think: &str, url: &str) -> String {
    format!(
        "<think>{think}</think>\n<tool_call>{{\"name\": \"browse_webpage\", \"arguments\": {{\"url_list\": [\"{url}\"]}}}}</tool_call>"
    )
}

fn answer(think: &str, a: &str) -> String {
    format!("<think>{think}</think>\n<answer>{a}</answer>")
}

fn step(text: String, response: Option<&str>) -> Step {
    Step {
        text,
        tool_response: response.map(str::to_string),
    }
}

fn traj(steps: Vec<Step>, truths: &[&str]) -> Trajectory {
    Trajectory {
        steps,
        ground_truths: truths.iter().map(|s| s.to_string()).collect(),
    }
}

const RESULTS_WITH_ANSWER: &str = "[1] Zest Mobile\nURL: https://www.wiki.example/Zest_Mobile\nZest Mobile was founded by Ada Lind in 2011.\n\n[2] Phones\nURL: https://shop.example/phones\nBuy phones online.";
const RESULTS_SECOND_SOURCE: &str =
    "[1] Ada Lind biography\nURL: https://news.example/ada\nEntrepreneur Ada Lind started Zest Mobile.";
const RESULTS_SAME_SOURCE: &str = "[1] Zest Mobile history\nURL: https://wiki.example/History\nAda Lind founded it.";
const RESULTS_OFF_TARGET: &str = "[1] Zest (lemon)\nURL: https://food.example/zest\nLemon zest is the peel of a lemon.";

fn tags(t: &Trajectory) -> Vec<String> {
    detect(t)
        .into_iter()
        .map(|d| format!("{} turn {} {:?}", d.behaviour, d.turn, d.evidence))
        .collect()
}

#[test]
fn planning_is_tagged_on_laid_out_steps() {
    let cases = [
        "First I will find the company that makes the Zest phone, then I will look up its founder.",
        "Plan:\n1. Find the maker of the Zest phone.\n2. Find who founded it.",
        "- identify the phone maker\n- search the maker's founder",
        "Step 1: find the maker. Step 2: find the founder.",
    ];
    for think in cases {
        let t = traj(
            vec![
                step(search(think, &["Zest phone maker"]), Some(RESULTS_WITH_ANSWER)),
                step(answer("ok", "Ada Lind"), None),
            ],
            &["Ada Lind"],
        );
        let d = planning(&t).unwrap_or_else(|| panic!("not tagged: {think}"));
        assert_eq!(d.turn, 0);
        assert_eq!(&t.steps[0].text[d.span_start as usize..d.span_end as usize], d.evidence);
    }
    let t = traj(
        vec![step(search(cases[1], &["q"]), Some("")), step(answer("ok", "x"), None)],
        &["x"],
    );
    expect_test::expect![[r#"
        [
            "planning turn 0 \"1. Find the maker of the Zest phone.\\n2. Find who founded it.\"",
        ]
    "#]]
    .assert_debug_eq(&tags(&t));
}

#[test]
fn planning_near_misses() {
    let misses = [
        // One step only.
        search("I will search for the Zest phone maker.", &["Zest phone maker"]),
        // An opener without a second step.
        search("First, search for the maker.", &["Zest phone maker"]),
        // "then" before "first" is no plan.
        search("Then again, first things first.", &["q"]),
        // A plan, but in an answer turn: no tool call follows it.
        answer("First recall the maker, then its founder.", "Ada Lind"),
        // A single numbered line.
        search("1. search the maker", &["q"]),
    ];
    for text in misses {
        let t = traj(vec![step(text.clone(), Some("")), step(answer("t", "x"), None)], &["x"]);
        assert_eq!(planning(&t), None, "{text}");
    }
}

#[test]
fn cross_validation_is_tagged_when_the_answer_is_confirmed_elsewhere() {
    let t = traj(
        vec![
            step(
                search("Find the founder.", &["Zest Mobile founder"]),
                Some(RESULTS_WITH_ANSWER),
            ),
            step(
                search(
                    "The wiki says Ada Lind. Let me confirm with another source.",
                    &["Ada Lind Zest Mobile"],
                ),
                Some(RESULTS_SECOND_SOURCE),
            ),
            step(answer("Two sources agree.", "Ada Lind"), None),
        ],
        &["Ada Lind"],
    );
    expect_test::expect![[r#"
        [
            "cross_validation turn 1 \"<tool_call>{\\\"name\\\": \\\"web_search\\\", \\\"arguments\\\": {\\\"query\\\": [\\\"Ada Lind Zest Mobile\\\"]}}</tool_call>\"",
        ]
    "#]]
    .assert_debug_eq(&tags(&t));
}

#[test]
fn cross_validation_near_misses() {
    // Answered right after first seeing it: no further call.
    let t = traj(
        vec![
            step(search("x", &["Zest founder"]), Some(RESULTS_WITH_ANSWER)),
            step(answer("found", "Ada Lind"), None),
        ],
        &["Ada Lind"],
    );
    assert_eq!(cross_validation(&t), None);
    // A further call, but every mention comes from one domain.
    let t = traj(
        vec![
            step(search("x", &["Zest founder"]), Some(RESULTS_WITH_ANSWER)),
            step(
                browse("read more", "https://wiki.example/History"),
                Some(RESULTS_SAME_SOURCE),
            ),
            step(answer("found", "Ada Lind"), None),
        ],
        &["Ada Lind"],
    );
    assert_eq!(cross_validation(&t), None);
    // More searching, but the answer never appeared before it (just research).
    let t = traj(
        vec![
            step(search("x", &["Zest"]), Some(RESULTS_OFF_TARGET)),
            step(search("y", &["Zest Mobile founder"]), Some(RESULTS_WITH_ANSWER)),
            step(answer("found", "Ada Lind"), None),
        ],
        &["Ada Lind"],
    );
    assert_eq!(cross_validation(&t), None);
}

#[test]
fn self_reflection_is_tagged_on_a_noticed_miss_and_a_new_query() {
    let t = traj(
        vec![
            step(search("Search the phone.", &["Zest"]), Some(RESULTS_OFF_TARGET)),
            step(
                search(
                    "These results are about lemon peel, not relevant to the phone. Try the company name.",
                    &["Zest Mobile company founder"],
                ),
                Some(RESULTS_WITH_ANSWER),
            ),
            step(answer("found", "Ada Lind"), None),
        ],
        &["Ada Lind"],
    );
    expect_test::expect![[r#"
        [
            "self_reflection turn 1 \"not relevant\"",
        ]
    "#]]
    .assert_debug_eq(&tags(&t));
}

#[test]
fn self_reflection_near_misses() {
    // Says the results missed but repeats the same query.
    let t = traj(
        vec![
            step(search("s", &["Zest phone founder"]), Some(RESULTS_OFF_TARGET)),
            step(
                search("Not relevant. Search again.", &["Zest phone founder"]),
                Some(RESULTS_OFF_TARGET),
            ),
            step(answer("x", "unknown"), None),
        ],
        &["Ada Lind"],
    );
    assert_eq!(self_reflection(&t), None);
    // A new query without noticing anything wrong.
    let t = traj(
        vec![
            step(search("s", &["Zest"]), Some(RESULTS_OFF_TARGET)),
            step(
                search("Now the founder.", &["Mobile company founder biography"]),
                Some(RESULTS_WITH_ANSWER),
            ),
            step(answer("x", "Ada Lind"), None),
        ],
        &["Ada Lind"],
    );
    assert_eq!(self_reflection(&t), None);
    // "wrong" inside a longer word does not count.
    let t = traj(
        vec![
            step(search("s", &["Zest"]), Some(RESULTS_OFF_TARGET)),
            step(
                search(
                    "The wrongful claims aside, search the founder.",
                    &["Mobile company founder biography"],
                ),
                Some(""),
            ),
            step(answer("x", "Ada Lind"), None),
        ],
        &["Ada Lind"],
    );
    assert_eq!(self_reflection(&t), None);
}

#[test]
fn honesty_is_tagged_when_abstaining_without_evidence() {
    let t = traj(
        vec![
            step(search("s", &["Zest"]), Some(RESULTS_OFF_TARGET)),
            step(
                answer("Nothing names a founder.", "I cannot find the founder in the sources"),
                None,
            ),
        ],
        &["Ada Lind"],
    );
    expect_test::expect![[r#"
        [
            "honesty turn 1 \"cannot find\"",
        ]
    "#]]
    .assert_debug_eq(&tags(&t));
}

#[test]
fn honesty_near_misses() {
    // Abstains although the evidence was in front of it: not honesty.
    let t = traj(
        vec![
            step(search("s", &["Zest founder"]), Some(RESULTS_WITH_ANSWER)),
            step(answer("hmm", "unknown"), None),
        ],
        &["Ada Lind"],
    );
    assert_eq!(honesty(&t), None);
    // A confident (wrong) answer.
    let t = traj(
        vec![
            step(search("s", &["Zest"]), Some(RESULTS_OFF_TARGET)),
            step(answer("guess", "Bo Lind"), None),
        ],
        &["Ada Lind"],
    );
    assert_eq!(honesty(&t), None);
    // Ends without an answer.
    let t = traj(
        vec![step(search("s", &["Zest"]), Some(RESULTS_OFF_TARGET))],
        &["Ada Lind"],
    );
    assert_eq!(honesty(&t), None);
}
