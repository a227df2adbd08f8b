//! The chat tokenizer: `tokenizer.json` plus the ids fathom needs (the end
//! of a turn, the protocol's tags).

use std::path::Path;

use crate::ModelError;

/// Chat markers of the Qwen2.5 template.
pub const IM_START: &str = "<|im_start|>";
/// End of a chat turn.
pub const IM_END: &str = "<|im_end|>";
/// End of text.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// The protocol's tags, which `init-tiny` makes single tokens.
pub const PROTOCOL_TAGS: &[&str] = &[
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<answer>",
    "</answer>",
    "<tool_response>",
    "</tool_response>",
];

/// A loaded tokenizer.
#[derive(Clone)]
pub struct ChatTokenizer {
    inner: tokenizers::Tokenizer,
    end_ids: Vec<u32>,
}

impl std::fmt::Debug for ChatTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTokenizer")
            .field("vocab", &self.vocab_size())
            .field("end_ids", &self.end_ids)
            .finish()
    }
}

fn tk(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

impl ChatTokenizer {
    /// Reads `dir/tokenizer.json`.
    pub fn load(dir: &Path) -> Result<ChatTokenizer, ModelError> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(ModelError::Invalid(format!(
                "{} has no tokenizer.json; a Hugging Face model directory needs one",
                dir.display()
            )));
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(ChatTokenizer::new(inner))
    }

    /// Wraps a tokenizer.
    pub fn new(inner: tokenizers::Tokenizer) -> ChatTokenizer {
        let end_ids = [IM_END, END_OF_TEXT]
            .iter()
            .filter_map(|t| inner.token_to_id(t))
            .collect();
        ChatTokenizer { inner, end_ids }
    }

    /// The underlying tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Ids that end a generated turn (`<|im_end|>`, `<|endoftext|>`).
    pub fn end_ids(&self) -> &[u32] {
        &self.end_ids
    }

    /// Tokens, including added ones.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token, if it is one.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Ids of `text` (chat markers in it become their tokens).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        Ok(self.inner.encode(text, false).map_err(tk)?.get_ids().to_vec())
    }

    /// Text of `ids`, keeping the protocol's tags and dropping the chat
    /// markers.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.inner.decode(ids, true).map_err(tk)
    }
}
