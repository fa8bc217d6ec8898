//! Token counts and `truncation`, against the simulator's tokenizer (its `/tokenize`,
//! as vLLM's) over real HTTP: `input_tokens` counts what a response would send, context
//! included, as the engine counts its prompt; `truncation: auto` drops the oldest
//! context to fit the model's context; `disabled` (the default) answers 400
//! `context_length_exceeded` naming `input`, as does input that cannot fit at all.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use switchyard_sim::SimConfig;
use switchyard_stateful::responses::service::Responses;
use switchyard_stateful::store::Store;

mod common;
use common::{SimEngine, config};

const MAX_MODEL_LEN: u64 = 600;

struct Bed {
    svc: Responses,
    sent: Arc<Mutex<Vec<(Value, String)>>>,
    model: String,
    _sim: switchyard_sim::SimHandle,
}

impl Bed {
    async fn new() -> Bed {
        let sim = switchyard_sim::spawn(SimConfig {
            time_scale: 100.0,
            max_model_len: MAX_MODEL_LEN as usize,
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let engine = SimEngine {
            http: reqwest::Client::new(),
            url: sim.url(),
            sent: sent.clone(),
        };
        let store = Arc::new(Store::open(&config("sqlite::memory:"), 0).await.unwrap());
        Bed {
            svc: Responses::new(store, Arc::new(engine)),
            sent,
            model: SimConfig::default().served_model_name[0].clone(),
            _sim: sim,
        }
    }

    async fn count(&self, body: Value) -> u64 {
        let v = self.svc.input_tokens(&body, "default").await.unwrap();
        assert_eq!(v["object"], "response.input_tokens");
        v["input_tokens"].as_u64().unwrap()
    }

    async fn create(&self, body: Value) -> Value {
        common::create_json(&self.svc, &body).await
    }

    /// A text of at least `tokens` tokens on its own, by the engine's count.
    async fn text(&self, tag: &str, tokens: u64) -> String {
        let mut words = 8;
        loop {
            let text: String = (0..words).map(|i| format!("{tag}{i} ")).collect();
            if self
                .count(json!({"model": self.model, "input": text}))
                .await
                >= tokens
            {
                return text;
            }
            words += 8;
        }
    }

    fn last_messages(&self) -> String {
        let sent = self.sent.lock().unwrap();
        sent.last().unwrap().0["messages"].to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_tokens_count_and_truncation_fits_the_context() {
    let b = Bed::new().await;
    let m = b.model.clone();
    let first = b.text("alpha", MAX_MODEL_LEN * 2 / 5).await;
    let r1 = b
        .create(json!({"model": m, "input": first, "max_output_tokens": 16}))
        .await;
    // The count of a would-be request is the prompt the engine then counts.
    let second = b.text("beta", MAX_MODEL_LEN / 4).await;
    let ask = json!({"model": m, "input": second, "previous_response_id": r1["id"],
                     "max_output_tokens": 16});
    let counted = b.count(ask.clone()).await;
    let r2 = b.create(ask).await;
    assert_eq!(r2["usage"]["input_tokens"].as_u64(), Some(counted), "{r2}");
    assert!(counted > MAX_MODEL_LEN * 3 / 5);

    // The next turn does not fit with the whole chain.
    let third = b.text("gamma", MAX_MODEL_LEN / 4).await;
    let next = |truncation: &str| {
        json!({"model": m, "input": third, "previous_response_id": r2["id"],
               "max_output_tokens": 16, "truncation": truncation})
    };
    assert!(b.count(next("disabled")).await > MAX_MODEL_LEN);
    let e = b
        .svc
        .create(&next("disabled"), "default")
        .await
        .err()
        .unwrap();
    assert_eq!(
        (e.status, e.code.as_deref(), e.param.as_deref()),
        (400, Some("context_length_exceeded"), Some("input")),
        "{e:?}"
    );
    // Auto: the oldest turn goes, the rest is sent and fits.
    let r3 = b.create(next("auto")).await;
    let sent = b.last_messages();
    assert!(!sent.contains("alpha0 "), "the oldest input was dropped");
    assert!(
        sent.contains("beta0 ") && sent.contains("gamma0 "),
        "{sent}"
    );
    let used = r3["usage"]["input_tokens"].as_u64().unwrap();
    assert!(used + 16 <= MAX_MODEL_LEN, "{used}");
    assert_eq!(r3["truncation"], "auto");

    // Input that cannot fit even alone.
    let huge = b.text("delta", MAX_MODEL_LEN).await;
    for truncation in ["auto", "disabled"] {
        let e = b
            .svc
            .create(
                &json!({"model": m, "input": huge, "truncation": truncation}),
                "default",
            )
            .await
            .err()
            .unwrap();
        assert_eq!(
            (e.status, e.param.as_deref()),
            (400, Some("input")),
            "{e:?}"
        );
    }
    // Counting checks the request as create does.
    let e = b
        .svc
        .input_tokens(&json!({"model": m, "input": [{"type": "nope"}]}), "default")
        .await
        .unwrap_err();
    assert_eq!((e.status, e.param.as_deref()), (400, Some("input[0].type")));
}
