//! What shape a request's output must have: free text, or a constraint (JSON object, JSON schema,
//! regular expression, a choice of strings, a Lark grammar) enforced token by token by
//! [`crate::sampling::constraint`].

use serde_json::Value;

/// The output format of a request (OpenAI `response_format`, vLLM `guided_*`).
///
/// Plain data: cheap to clone, `Send + Sync`. Everything but [`ResponseFormat::Text`] is compiled
/// into a token-level constraint at submission; a format that does not compile (an invalid
/// schema, regex or grammar) is refused there with INVALID_ARGUMENT naming the problem.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ResponseFormat {
    /// No constraint (the default).
    #[default]
    Text,
    /// Any JSON object (`{"type": "json_object"}`).
    JsonObject,
    /// JSON valid against this JSON Schema (`{"type": "json_schema", "json_schema": {"schema":
    /// ...}}`).
    JsonSchema(Value),
    /// Text matching this regular expression in full (`guided_regex`).
    Regex(String),
    /// Exactly one of these strings (`guided_choice`); must be non-empty.
    Choice(Vec<String>),
    /// Text in the language of this Lark grammar (`guided_grammar`); the start rule is `start`.
    Grammar(String),
}

impl ResponseFormat {
    /// True for [`ResponseFormat::Text`] (no constraint).
    pub fn is_text(&self) -> bool {
        matches!(self, ResponseFormat::Text)
    }

    /// A short name for messages and stats ("text", "json_object", "json_schema", "regex",
    /// "choice", "grammar").
    pub fn kind(&self) -> &'static str {
        match self {
            ResponseFormat::Text => "text",
            ResponseFormat::JsonObject => "json_object",
            ResponseFormat::JsonSchema(_) => "json_schema",
            ResponseFormat::Regex(_) => "regex",
            ResponseFormat::Choice(_) => "choice",
            ResponseFormat::Grammar(_) => "grammar",
        }
    }
}
