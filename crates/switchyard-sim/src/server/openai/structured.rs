//! Structured outputs, as vLLM accepts them: `response_format` (`json_schema`,
//! `json_object`), `guided_choice` / `guided_json`, and `structured_outputs`
//! (`choice`, `json`). The simulator has no language model, so it answers with a
//! deterministic value that satisfies the constraint:
//!
//! - a **choice** (a `guided_choice` item, or a schema `enum`): the option mentioned
//!   most often, as a whole word in any case, in the last user message (the prompt of
//!   a completion); ties go to the option mentioned first; none mentioned: the option
//!   at `seed % n`. So a test can steer the answer with the text it sends;
//! - a **schema**: an instance built from it — every property of an object, the first
//!   branch of `anyOf`/`oneOf`, `const`, `enum` as above, `""`-free strings (`"sim"`),
//!   0 for numbers, `true`, `[]` and `null`;
//! - `json_object`: `{}`.
//!
//! The answer streams as its characters in pieces of four, one piece per token; a
//! `max_tokens` smaller than that cuts it (finish `length`), as an engine would.

use serde_json::{Map, Value, json};

use super::super::ApiError;
use super::wire::GenRequest;

/// What the output must be.
#[derive(Debug, PartialEq)]
enum Constraint {
    Choice(Vec<String>),
    Schema(Value),
    JsonObject,
}

fn bad(msg: impl Into<String>, param: &str) -> ApiError {
    ApiError::bad_request(msg, Some(param))
}

fn choices(v: &Value, param: &str) -> Result<Vec<String>, ApiError> {
    let items = v
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| bad("must be a non-empty array of strings", param))?;
    items
        .iter()
        .map(|i| i.as_str().map(str::to_string))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad("must be a non-empty array of strings", param))
}

fn constraint(req: &GenRequest) -> Result<Option<Constraint>, ApiError> {
    if let Some(c) = &req.guided_choice {
        return Ok(Some(Constraint::Choice(choices(c, "guided_choice")?)));
    }
    if let Some(s) = &req.guided_json {
        return Ok(Some(Constraint::Schema(schema_value(s, "guided_json")?)));
    }
    if let Some(so) = &req.structured_outputs {
        if let Some(c) = so.get("choice") {
            return Ok(Some(Constraint::Choice(choices(
                c,
                "structured_outputs.choice",
            )?)));
        }
        if let Some(s) = so.get("json") {
            return Ok(Some(Constraint::Schema(schema_value(
                s,
                "structured_outputs.json",
            )?)));
        }
    }
    let Some(rf) = &req.response_format else {
        return Ok(None);
    };
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Constraint::JsonObject)),
        Some("json_schema") => {
            let schema = rf
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .ok_or_else(|| bad("`json_schema.schema` is required", "response_format"))?;
            Ok(Some(Constraint::Schema(schema_value(
                schema,
                "response_format",
            )?)))
        }
        _ => Err(bad(
            "`response_format.type` must be one of text, json_object, json_schema",
            "response_format.type",
        )),
    }
}

/// A schema given as an object or as a JSON string.
fn schema_value(v: &Value, param: &str) -> Result<Value, ApiError> {
    match v {
        Value::Object(_) => Ok(v.clone()),
        Value::String(s) => serde_json::from_str(s)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| bad("must be a JSON schema object", param)),
        _ => Err(bad("must be a JSON schema object", param)),
    }
}

/// The text the choice rule reads: the last user message, or the completion prompt.
pub(super) fn steering_text(req: &GenRequest) -> String {
    if let Some(msgs) = &req.messages {
        let last = msgs
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"));
        return match last.and_then(|m| m.get("content")) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        };
    }
    match &req.prompt {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

/// Whole-word, case-insensitive occurrences of `word` in `text`: (count, first offset).
pub(super) fn mentions(text: &str, word: &str) -> (usize, usize) {
    let (t, w) = (text.to_lowercase(), word.to_lowercase());
    if w.is_empty() {
        return (0, usize::MAX);
    }
    let wordy = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let (mut n, mut first) = (0, usize::MAX);
    for (i, _) in t.match_indices(&w) {
        let before = t[..i].chars().next_back();
        let after = t[i + w.len()..].chars().next();
        if !wordy(before) && !wordy(after) {
            n += 1;
            first = first.min(i);
        }
    }
    (n, first)
}

fn pick(options: &[String], text: &str, seed: u64) -> String {
    let best = options
        .iter()
        .map(|o| (o, mentions(text, o)))
        .filter(|(_, (n, _))| *n > 0)
        .max_by(|(_, (n1, f1)), (_, (n2, f2))| n1.cmp(n2).then(f2.cmp(f1)));
    match best {
        Some((o, _)) => o.clone(),
        None => options[(seed % options.len() as u64) as usize].clone(),
    }
}

pub(super) fn instance(schema: &Value, text: &str, seed: u64) -> Value {
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        let strings: Vec<String> = e
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        if strings.len() == e.len() && !strings.is_empty() {
            return Value::String(pick(&strings, text, seed));
        }
        return e.first().cloned().unwrap_or(Value::Null);
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(first) = schema
            .get(key)
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        {
            return instance(first, text, seed);
        }
    }
    let ty = match schema.get("type") {
        Some(Value::Array(types)) => types.first().and_then(Value::as_str),
        Some(t) => t.as_str(),
        None if schema.get("properties").is_some() => Some("object"),
        None => None,
    };
    match ty {
        Some("object") => {
            let mut out = Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, s) in props {
                    out.insert(k.clone(), instance(s, text, seed));
                }
            }
            Value::Object(out)
        }
        Some("array") => json!([]),
        Some("string") => json!("sim"),
        Some("integer" | "number") => json!(0),
        Some("boolean") => json!(true),
        _ => Value::Null,
    }
}

/// The forced output of a constrained request, in per-token pieces; `None` when the
/// request has no constraint.
pub(super) fn forced_output(req: &GenRequest, seed: u64) -> Result<Option<Vec<String>>, ApiError> {
    let Some(c) = constraint(req)? else {
        return Ok(None);
    };
    let text = steering_text(req);
    let answer = match c {
        Constraint::Choice(options) => pick(&options, &text, seed),
        Constraint::Schema(s) => instance(&s, &text, seed).to_string(),
        Constraint::JsonObject => "{}".to_string(),
    };
    let chars: Vec<char> = answer.chars().collect();
    Ok(Some(chars.chunks(4).map(|c| c.iter().collect()).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> GenRequest {
        serde_json::from_value(v).unwrap()
    }

    fn answer(v: Value) -> String {
        forced_output(&req(v), 7).unwrap().unwrap().concat()
    }

    #[test]
    fn a_choice_follows_the_words_of_the_last_user_message() {
        let msgs = json!([{"role": "system", "content": "code or general or math"},
                          {"role": "user", "content": "Some MATH, then code; math again"}]);
        assert_eq!(
            answer(json!({"messages": msgs, "guided_choice": ["code", "math", "general"]})),
            "math"
        );
        // The same through a JSON schema enum.
        let rf = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "properties": {"intent": {"type": "string", "enum": ["code", "math"]}},
            "required": ["intent"]}}});
        assert_eq!(
            answer(json!({"messages": msgs, "response_format": rf})),
            r#"{"intent":"math"}"#
        );
        // Not inside a word; none mentioned: chosen by the seed.
        let none =
            answer(json!({"prompt": "codes and mathematics", "guided_choice": ["code", "math"]}));
        assert_eq!(none, ["code", "math"][7 % 2]);
    }

    #[test]
    fn schemas_get_an_instance_and_bad_constraints_a_400() {
        let s = json!({"type": "object", "properties": {"a": {"type": "integer"},
            "b": {"type": "array"}, "c": {"anyOf": [{"type": "boolean"}]}, "d": {"const": "k"}}});
        let v: Value =
            serde_json::from_str(&answer(json!({"prompt": "x", "guided_json": s}))).unwrap();
        assert_eq!(v, json!({"a": 0, "b": [], "c": true, "d": "k"}));
        assert_eq!(
            answer(json!({"prompt": "x", "response_format": {"type": "json_object"}})),
            "{}"
        );
        assert!(
            forced_output(
                &req(json!({"prompt": "x", "response_format": {"type": "text"}})),
                1
            )
            .unwrap()
            .is_none()
        );
        for bad in [
            json!({"prompt": "x", "guided_choice": []}),
            json!({"prompt": "x", "guided_choice": [1]}),
            json!({"prompt": "x", "response_format": {"type": "yaml"}}),
            json!({"prompt": "x", "response_format": {"type": "json_schema"}}),
            json!({"prompt": "x", "guided_json": 3}),
        ] {
            let e = forced_output(&req(bad.clone()), 1).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
