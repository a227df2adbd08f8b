//! The candle policy keeps its episode's context as the ids it sampled.

use std::sync::Arc;

use fathom_core::protocol::{Message, system_prompt};
use fathom_model::init::{TinySpec, write_tiny};
use fathom_model::sample::Sampling;
use fathom_trainer::candle_policy::{CandleModel, CandlePolicy, continuation};
use fathom_trainer::policy::{Policy, PolicyInput};

#[test]
fn the_context_is_the_prompt_then_sampled_ids_and_tool_continuations() {
    let dir = tempfile::tempdir().unwrap();
    let corpus: Vec<String> = (0..100)
        .map(|i| format!("The river flows through the capital {i}. <think>search</think> <answer>x</answer>"))
        .collect();
    write_tiny(
        dir.path(),
        &TinySpec {
            vocab: 500,
            ..TinySpec::default()
        },
        corpus.iter(),
    )
    .unwrap();
    let model = Arc::new(CandleModel::load(dir.path(), "cpu", "f32").unwrap());
    let tok = &model.loaded().tokenizer;
    let hot = Sampling {
        temperature: 1.0,
        top_p: 1.0,
    };
    let mut policy = CandlePolicy::new(model.clone(), hot, 0);
    let mut messages = vec![
        Message::System(system_prompt("2026-01-01")),
        Message::User("Who founded it?".into()),
    ];
    fn input(messages: &[Message], turn: u32) -> PolicyInput<'_> {
        PolicyInput {
            question: "Who founded it?",
            messages,
            turn,
            seed: 3,
            max_tokens: 12,
        }
    }
    let first = policy.generate(input(&messages, 0)).unwrap();
    let prompt = tok
        .encode(&fathom_core::protocol::render_chat(&messages, true))
        .unwrap();
    let ids1 = first.token_ids.clone().unwrap();
    assert_eq!(policy.context(), [prompt.as_slice(), ids1.as_slice()].concat());
    assert_eq!(first.logprobs.as_ref().unwrap().len(), ids1.len());

    messages.push(Message::Assistant(first.text.clone()));
    messages.push(Message::Tool(
        "<tool_response>The museum was founded by Ada.</tool_response>".into(),
    ));
    let second = policy.generate(input(&messages, 1)).unwrap();
    let ended = ids1.last().is_some_and(|id| tok.end_ids().contains(id));
    let cont = continuation(
        tok,
        ended,
        "<tool_response>The museum was founded by Ada.</tool_response>",
    )
    .unwrap();
    let ids2 = second.token_ids.clone().unwrap();
    assert_eq!(
        policy.context(),
        [prompt.as_slice(), ids1.as_slice(), cont.as_slice(), ids2.as_slice()].concat(),
        "the sampled ids are kept, never re-tokenised"
    );

    // A fresh policy on the same conversation starts over from the text.
    let mut other = CandlePolicy::new(model.clone(), hot, 0);
    other.generate(input(&messages, 1)).unwrap();
    let rendered = tok
        .encode(&fathom_core::protocol::render_chat(&messages, true))
        .unwrap();
    assert_eq!(&other.context()[..rendered.len()], rendered.as_slice());
}
