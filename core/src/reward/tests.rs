use super::*;

fn truths(s: &str) -> Vec<String> {
    split_ground_truths(s)
}

#[test]
fn answer_scores_table() {
    // (answer, ground truths joined as in verl)
    let cases: &[(&str, &str)] = &[
        ("Ada Lind", "Ada Lind"),
        ("ada lind.", "Ada Lind"),
        ("  Ada   Lind ", "Ada Lind"),
        ("Lind", "Ada Lind"),
        ("Ada Lind and Bo Lind", "Ada Lind"),
        ("the the cat", "the cat"),
        ("The Beatles", "Beatles"),
        ("NYC", "New York City<|answer_split|>NYC"),
        ("new york", "New York City<|answer_split|>NYC"),
        ("", "Ada Lind"),
        ("Yes", "yes"),
        ("no", "yes"),
        ("Jean-Paul Sartre", "jean paul sartre"),
        ("“Hello”", "hello"),
        ("1,000", "1000"),
        ("Paris, France", "Paris"),
        ("Mount Everest", "K2"),
        ("It is 1947.", "1947"),
    ];
    let rendered: String = cases
        .iter()
        .map(|(answer, joined)| {
            let s = Score::answered(answer, &truths(joined));
            format!(
                "{answer:?} vs {joined:?}: f1={:.4} em={} reward={:.4}\n",
                s.f1, s.em, s.reward
            )
        })
        .collect();
    expect_test::expect![[r#"
        "Ada Lind" vs "Ada Lind": f1=1.0000 em=1 reward=1.0000
        "ada lind." vs "Ada Lind": f1=1.0000 em=1 reward=1.0000
        "  Ada   Lind " vs "Ada Lind": f1=1.0000 em=1 reward=1.0000
        "Lind" vs "Ada Lind": f1=0.6667 em=0 reward=0.6667
        "Ada Lind and Bo Lind" vs "Ada Lind": f1=0.6667 em=0 reward=0.6667
        "the the cat" vs "the cat": f1=1.0000 em=0 reward=1.0000
        "The Beatles" vs "Beatles": f1=0.6667 em=0 reward=0.6667
        "NYC" vs "New York City<|answer_split|>NYC": f1=1.0000 em=1 reward=1.0000
        "new york" vs "New York City<|answer_split|>NYC": f1=0.8000 em=0 reward=0.8000
        "" vs "Ada Lind": f1=0.0000 em=0 reward=0.0000
        "Yes" vs "yes": f1=1.0000 em=1 reward=1.0000
        "no" vs "yes": f1=0.0000 em=0 reward=0.0000
        "Jean-Paul Sartre" vs "jean paul sartre": f1=1.0000 em=1 reward=1.0000
        "“Hello”" vs "hello": f1=1.0000 em=1 reward=1.0000
        "1,000" vs "1000": f1=0.0000 em=0 reward=0.0000
        "Paris, France" vs "Paris": f1=0.6667 em=0 reward=0.6667
        "Mount Everest" vs "K2": f1=0.0000 em=0 reward=0.0000
        "It is 1947." vs "1947": f1=0.5000 em=0 reward=0.5000
    "#]]
    .assert_eq(&rendered);
}

#[test]
fn normalisation_and_splitting() {
    assert_eq!(normalize("  The QUICK, brown—fox!  "), "the quick brown fox");
    assert_eq!(normalize("a\tb\nc"), "a b c");
    assert_eq!(word_set("b a b").into_iter().collect::<Vec<_>>(), vec!["a", "b"]);
    assert_eq!(truths(" a <|answer_split|><|answer_split|> b "), vec!["a", "b"]);
    assert!(exact_match("The Cat!", "the cat"));
    assert!(!exact_match("the cat", "cat"));
}

const SEARCH: &str = r#"<think>Look it up.</think><tool_call>{"name": "web_search", "arguments": {"query": ["zest founder"]}}</tool_call>"#;

#[test]
fn episode_scores_table() {
    let t = truths("Ada Lind<|answer_split|>A. Lind");
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "search then answer",
            vec![SEARCH.into(), "<think>Got it.</think><answer>Ada Lind</answer>".into()],
        ),
        (
            "answer at once",
            vec!["<think>I know.</think><answer>A. Lind</answer>".into()],
        ),
        (
            "partial answer",
            vec![SEARCH.into(), "<think>t</think><answer>Lind</answer>".into()],
        ),
        (
            "empty think then a good turn",
            vec![
                SEARCH.replace("Look it up.", ""),
                "<think>t</think><answer>Ada Lind</answer>".into(),
            ],
        ),
        (
            "malformed middle turn",
            vec![
                SEARCH.into(),
                "<think>oops".into(),
                "<think>t</think><answer>Ada Lind</answer>".into(),
            ],
        ),
        ("ends on a tool call (out of turns)", vec![SEARCH.into(), SEARCH.into()]),
        (
            "turn after the answer",
            vec!["<answer>Ada Lind</answer>".into(), SEARCH.into()],
        ),
        (
            "truncated last turn",
            vec![SEARCH.into(), "<think>the founder is".into()],
        ),
        ("no turns", vec![]),
        ("empty answer", vec!["<think>t</think><answer></answer>".into()]),
    ];
    let rendered: String = cases
        .iter()
        .map(|(name, turns)| {
            let s = score_turns(turns, &t);
            format!(
                "{name}: format_ok={} reward={:.4} f1={:.4} em={} eval_f1={:.4}{}\n",
                s.format_ok,
                s.reward,
                s.f1,
                s.em,
                s.eval_f1(),
                s.format_error.map(|e| format!(" ({e})")).unwrap_or_default()
            )
        })
        .collect();
    expect_test::expect![[r#"
        search then answer: format_ok=true reward=1.0000 f1=1.0000 em=1 eval_f1=1.0000
        answer at once: format_ok=true reward=1.0000 f1=1.0000 em=1 eval_f1=1.0000
        partial answer: format_ok=true reward=0.6667 f1=0.6667 em=0 eval_f1=0.6667
        empty think then a good turn: format_ok=true reward=1.0000 f1=1.0000 em=1 eval_f1=1.0000
        malformed middle turn: format_ok=false reward=-1.0000 f1=0.0000 em=0 eval_f1=0.0000 (turn 1: unbalanced <think> tags (1 opening, 0 closing))
        ends on a tool call (out of turns): format_ok=false reward=-1.0000 f1=0.0000 em=0 eval_f1=0.0000 (no <answer>: the episode ended on a tool call)
        turn after the answer: format_ok=false reward=-1.0000 f1=0.0000 em=0 eval_f1=0.0000 (turn 0 answered but the episode went on)
        truncated last turn: format_ok=false reward=-1.0000 f1=0.0000 em=0 eval_f1=0.0000 (turn 1: unbalanced <think> tags (1 opening, 0 closing))
        no turns: format_ok=false reward=-1.0000 f1=0.0000 em=0 eval_f1=0.0000 (no model turns)
        empty answer: format_ok=true reward=0.0000 f1=0.0000 em=0 eval_f1=0.0000
    "#]]
    .assert_eq(&rendered);
}

#[test]
fn tags_inside_tool_responses_never_count() {
    let t = truths("Ada Lind");
    // The web page carries unbalanced protocol tags; the original counted
    // them and scored this −1.
    let response = format!(
        "{SEARCH}<tool_response>\n<think> <answer> </tool_call> spam\n</tool_response>\n<think>Found.</think><answer>Ada Lind</answer>"
    );
    let s = score_response(&response, &t);
    assert!(s.format_ok, "{s:?}");
    assert_eq!(s.reward, 1.0);
    assert_eq!(s.em, 1.0);
}

#[test]
fn one_pass_normalisation_equals_lowercase_then_split_and_join() {
    fn reference(text: &str) -> String {
        let spaced: String = text
            .chars()
            .flat_map(char::to_lowercase)
            .map(|c| if super::is_punctuation(c) { ' ' } else { c })
            .collect();
        spaced.split_whitespace().collect::<Vec<_>>().join(" ")
    }
    for text in [
        "",
        "   ",
        "Hello, World!",
        "  leading and trailing\t\n",
        "İstanbul ÀÉÎ straße ΣΑΣ «quoted» — dash…",
        "a\u{00A0}b\u{2003}c\u{3000}d",
        "“Ada” (1815–1852): mathematician; 「書」、",
        "x.y.z...",
        "\u{0130}\u{0069}\u{0307}",
        "## Results for \"Ruth Mobile\"\n\n[1] Ruth Mobile\nURL: http://127.0.0.1:55394/Ruth_Mobile",
    ] {
        assert_eq!(normalize(text), reference(text), "{text:?}");
    }
}

/// `(solution_str, ground_truth, F1, EM)`: the values DeepResearcher's own
/// `compute_score` (`verl/utils/reward_score/format_and_f1.py`) returns for
/// these inputs, with `val_type` `'f1'` and `'em'` (generated by running
/// that function; −1 is its format failure).
const COMPUTE_SCORE_TABLE: &[(&str, &str, f64, f64)] = &[
    ("<think>plan</think>\n<answer>Paris</answer>", "Paris", 1.0, 1.0),
    ("<think>plan</think><ANSWER>Paris</ANSWER>", "paris", 1.0, 1.0),
    ("<THINK>plan</think><answer>Paris</answer>", "Paris", 1.0, 1.0),
    ("<think>plan</think>", "Paris", -1.0, -1.0),
    ("<think>plan<answer>Paris</answer>", "Paris", -1.0, -1.0),
    ("<think>a</think>x<think><answer>Paris</answer>", "Paris", -1.0, -1.0),
    (
        "<think>a</think></think>x<think><answer>Paris</answer>",
        "Paris",
        -1.0,
        -1.0,
    ),
    ("</think>x<think><answer>Paris</answer>", "Paris", -1.0, -1.0),
    (
        "<think>a</think><answer>Rome</answer><answer>Paris</answer>",
        "Paris",
        0.0,
        0.0,
    ),
    ("<think><answer>Paris</answer></think>", "Paris", 1.0, 1.0),
    ("<think>a</think><answer>Paris", "Paris", -1.0, -1.0),
    (
        "<think>a</think><tool_call>{}<answer>Paris</answer>",
        "Paris",
        -1.0,
        -1.0,
    ),
    (
        "<think>a</think><answer>Jean–Paul Sartre</answer>",
        "jean paul sartre",
        0.4,
        0.0,
    ),
    (
        "<think>a</think><answer>Jean-Paul Sartre</answer>",
        "jean paul sartre",
        1.0,
        1.0,
    ),
    ("<think>a</think><answer>“Hello”</answer>", "hello", 0.0, 0.0),
    ("<think>a</think><answer>\"Hello\"</answer>", "hello", 1.0, 1.0),
    ("<think>a</think><answer></answer>", "Paris", 0.0, 0.0),
    ("<think>a</think><answer>...</answer>", "...", 0.0, 1.0),
    ("<think>a</think><answer></answer>", "Paris<|answer_split|>", 0.0, 1.0),
    (
        "<think>a</think><answer>Paris</answer>",
        "Paris<|answer_split|>",
        1.0,
        1.0,
    ),
    (
        "<think>a</think><answer>NYC</answer>",
        "New York City<|answer_split|>NYC",
        1.0,
        1.0,
    ),
    (
        "<think>a</think><answer>new york</answer>",
        "New York City<|answer_split|>NYC",
        0.8,
        0.0,
    ),
    (
        "<think>a</think><answer>nyc</answer>",
        "New York City<|ANSWER_SPLIT|>NYC",
        1.0,
        1.0,
    ),
    ("<think>a</think><answer>the the cat</answer>", "the cat", 1.0, 0.0),
    (
        "<think>a</think><answer>The Beatles</answer>",
        "Beatles",
        0.6666666666666666,
        0.0,
    ),
    ("<think>a</think><answer>1,000</answer>", "1000", 0.0, 0.0),
    ("<think>a</think><answer>It is 1947.</answer>", "1947", 0.5, 0.0),
    ("<think>a</think><answer>Ada\u{1c}Lind</answer>", "Ada Lind", 1.0, 1.0),
    ("<think>a</think><answer>Ada\u{a0}Lind</answer>", "Ada Lind", 1.0, 1.0),
    ("<think>a</think><answer>Ada\u{200b}Lind</answer>", "Ada Lind", 0.0, 0.0),
    (
        "<think>a</think><answer>\u{3000} Ada Lind \u{2028}</answer>",
        "ada lind",
        1.0,
        1.0,
    ),
    ("<think>a</think><answer>ΟΔΟΣ</answer>", "οδος", 1.0, 1.0),
    ("<think>a</think><answer>ΟΔΟΣ</answer>", "ΟΔΟΣ", 1.0, 1.0),
    ("<think>a</think><answer>İstanbul</answer>", "istanbul", 0.0, 0.0),
    ("<think>a</think><answer>İstanbul</answer>", "İstanbul", 1.0, 1.0),
    ("<think>a</think><answer>Straße</answer>", "STRASSE", 0.0, 0.0),
    (
        "<think>a</think><answer>line one\nline two</answer>",
        "line two",
        0.8,
        0.0,
    ),
    ("<think>a</think><answer >Paris</answer >", "Paris", -1.0, -1.0),
    (
        "<think>a</think><tool_call>{\"name\": \"web_search\"}</tool_call>",
        "Paris",
        -1.0,
        -1.0,
    ),
    ("<think>a</think><tool_call><answer>Paris</answer>", "Paris", -1.0, -1.0),
    (
        "<think>a</think><answer>Paris</answer><tool_response>x</answer>",
        "Paris",
        -1.0,
        -1.0,
    ),
    (
        "<think>a</think><answer>Paris, France</answer>",
        "Paris",
        0.6666666666666666,
        0.0,
    ),
    ("<think>a</think><answer>Mount Everest</answer>", "K2", 0.0, 0.0),
    ("<think>a</think><answer>yes</answer>", "Yes", 1.0, 1.0),
    ("<think>a</think><answer>Ada (born 1950)</answer>", "Ada", 0.5, 0.0),
    ("<think>a</think><answer>o'neil</answer>", "O’Neil", 0.0, 0.0),
    ("<think>a</think><answer>x</answer>", "", 0.0, 0.0),
    ("<think>a</think><answer>  </answer>", "  ", 0.0, 1.0),
    ("no tags at all", "Paris", -1.0, -1.0),
    ("<think>a</think><answer>café</answer>", "CAFÉ", 1.0, 1.0),
    ("<think>a</think><answer>a_b</answer>", "a b", 1.0, 1.0),
    ("<think>a</think><answer>a~b`c|d</answer>", "a b c d", 1.0, 1.0),
    ("<think>a</think><answer>a·b</answer>", "a b", 0.0, 0.0),
];

#[test]
fn compute_score_equals_deepresearchers_on_its_edge_cases() {
    use deepresearcher::{Metric, compute_score};
    let mut wrong = Vec::new();
    for &(solution, truth, f1, em) in COMPUTE_SCORE_TABLE {
        let got = (
            compute_score(solution, truth, Metric::F1),
            compute_score(solution, truth, Metric::Em),
        );
        // Bit for bit: the same operations in the same order.
        if got.0.to_bits() != f1.to_bits() || got.1.to_bits() != em.to_bits() {
            wrong.push(format!(
                "{solution:?} vs {truth:?}: got {got:?}, DeepResearcher gives ({f1}, {em})"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn python_whitespace_is_python_s() {
    use deepresearcher::{preprocess, py_isspace};
    // str.isspace counts the information separators U+001C..U+001F; Rust's
    // char::is_whitespace does not, and a zero-width space is neither.
    for c in ['\u{1c}', '\u{1f}', '\u{85}', '\u{a0}', '\u{3000}'] {
        assert!(py_isspace(c), "{c:?}");
    }
    assert!(!py_isspace('\u{200b}'));
    assert_eq!(preprocess(" a\u{1e}b--c\u{2013}d "), "a b c\u{2013}d");
}

#[test]
fn version_2_episodes_score_with_deepresearchers_rules() {
    let t = truths("Ada Lind<|answer_split|>A. Lind");
    let search = r#"<think>Look it up.</think>
<tool_call>{"name": "web_search", "arguments": {"query": ["zest founder"]}}</tool_call>"#;
    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "search then answer",
            vec![search, "<think>Found.</think>\n<answer>Ada Lind</answer>"],
        ),
        ("answer only", vec!["<think>Known.</think><answer>a lind</answer>"]),
        ("empty answer", vec!["<think></think><answer></answer>"]),
        ("no think prefix closed", vec!["<think>ada <answer>Ada Lind</answer>"]),
        ("no think at all", vec!["<answer>Ada Lind</answer>"]),
        (
            "text after the answer",
            vec!["<think>t</think><answer>Ada Lind</answer> hope this helps"],
        ),
        (
            "whitespace after the answer",
            vec!["<think>t</think><answer>Ada Lind</answer>\n "],
        ),
        (
            "en dash stays in the word",
            vec!["<think>t</think><answer>Ada\u{2013}Lind</answer>"],
        ),
        (
            "capital tags in the think",
            vec!["<think>the <ANSWER> tag</think><answer>Ada Lind</answer>"],
        ),
        ("ends on a tool call", vec![search]),
        ("answer then more", vec!["<think>t</think><answer>Ada</answer>", search]),
    ];
    let rendered: String = cases
        .iter()
        .map(|(name, turns)| {
            let s = score_episode(Protocol::V2, turns, &t);
            format!(
                "{name}: reward={:.4} f1={:.4} em={} ok={} {}\n",
                s.reward,
                s.f1,
                s.em,
                s.format_ok,
                s.format_error.unwrap_or_default()
            )
        })
        .collect();
    expect_test::expect![[r#"
        search then answer: reward=1.0000 f1=1.0000 em=1 ok=true 
        answer only: reward=1.0000 f1=1.0000 em=1 ok=true 
        empty answer: reward=0.0000 f1=0.0000 em=0 ok=true 
        no think prefix closed: reward=-1.0000 f1=0.0000 em=0 ok=false turn 0: the turn never closes its <think> block
        no think at all: reward=-1.0000 f1=0.0000 em=0 ok=false turn 0: the turn never closes its <think> block
        text after the answer: reward=-1.0000 f1=0.0000 em=0 ok=false turn 0: text after </answer>: " hope this helps"
        whitespace after the answer: reward=1.0000 f1=1.0000 em=1 ok=true 
        en dash stays in the word: reward=0.0000 f1=0.0000 em=0 ok=true 
        capital tags in the think: reward=-1.0000 f1=0.0000 em=0 ok=false the lowercased turns fail DeepResearcher's tag check (tags written in capitals)
        ends on a tool call: reward=-1.0000 f1=0.0000 em=0 ok=false no <answer>: the episode ended on a tool call
        answer then more: reward=-1.0000 f1=0.0000 em=0 ok=false turn 0 answered but the episode went on
    "#]].assert_eq(&rendered);
}
