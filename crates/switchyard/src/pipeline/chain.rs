//! Where a request stands in its model's fallback chain: the model now tried, the view
//! and body for it (the body's `model` rewritten when it is not the one the client
//! named), and the sends made on it.

use std::sync::Arc;

use bytes::Bytes;

use crate::error::ApiError;
use crate::request::RequestView;

use crate::request::body::{replace_span, replace_string, rewrite};
use crate::selection::ModelChoice;

pub(super) struct Plan<'c> {
    pub choice: &'c ModelChoice,
    /// 0: the chosen model; i > 0: its i-th fallback.
    pub at: usize,
    pub view: Arc<RequestView>,
    pub body: Bytes,
    /// Sends made on the current model.
    pub sends_here: u32,
    /// Sends made in all.
    pub sent: u32,
}

/// The client's body naming `model` instead: its `model` string replaced in place when
/// the parser located it, else the body rewritten. A multipart upload's `model` field
/// is always located, and its value spliced as it is.
fn with_model(original: &Bytes, view: &RequestView, model: &str) -> Result<Bytes, ApiError> {
    let span = view.model_span.as_ref();
    if view.route.mime() != "application/json" {
        let span = span.ok_or_else(|| {
            ApiError::bad_request("The `model` field cannot be rewritten", Some("model"))
        })?;
        return Ok(replace_span(original, span, model));
    }
    if let Some(b) = span.and_then(|s| replace_string(original, s, model)) {
        return Ok(b);
    }
    Ok(rewrite(
        original,
        &[("model", Some(serde_json::json!(model)))],
    )?)
}

impl<'c> Plan<'c> {
    /// The plan for the chosen model (`original`: the client's body).
    pub fn new(
        choice: &'c ModelChoice,
        mut view: RequestView,
        original: &Bytes,
    ) -> Result<Self, ApiError> {
        let body = if choice.rewrite {
            with_model(original, &view, &choice.model)?
        } else {
            original.clone()
        };
        view.model = choice.model.clone();
        view.model_key = choice.key.clone();
        Ok(Plan {
            choice,
            at: 0,
            view: Arc::new(view),
            body,
            sends_here: 0,
            sent: 0,
        })
    }

    fn fallbacks(&self) -> &[Arc<str>] {
        self.choice.fallbacks.as_deref().unwrap_or(&[])
    }

    /// Models after the current one.
    pub fn after(&self) -> usize {
        self.fallbacks().len() - self.at
    }

    pub fn has_next(&self) -> bool {
        self.after() > 0
    }

    pub fn next_model(&self) -> Option<&Arc<str>> {
        self.fallbacks().get(self.at)
    }

    /// Moves to the next model, whose routing key is `key`.
    pub fn advance(&mut self, original: &Bytes, key: Arc<str>) -> Result<(), ApiError> {
        let model = self.next_model().expect("a next model").clone();
        self.body = with_model(original, &self.view, &model)?;
        let mut view = RequestView::clone(&self.view);
        view.model = model;
        view.model_key = key;
        // Another model may tokenise differently.
        view.token_blocks = Default::default();
        self.view = Arc::new(view);
        self.at += 1;
        self.sends_here = 0;
        Ok(())
    }

    /// Whether the request left its first model.
    pub fn fell_back(&self) -> bool {
        self.at > 0
    }

    /// `` `a` → `b` → `c` ``, when the model has fallbacks.
    pub fn chain(&self) -> Option<String> {
        let rest = self.choice.fallbacks.as_deref()?;
        let names: Vec<String> = std::iter::once(&self.choice.model)
            .chain(rest)
            .map(|m| format!("`{m}`"))
            .collect();
        Some(names.join(" → "))
    }
}
