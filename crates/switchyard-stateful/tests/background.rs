//! Background responses against the simulator over real HTTP, stored in SQLite and in
//! PostgreSQL: `background: true` answers `queued` at once and runs on; a streamed one
//! is read again from any sequence number, live and once stored; cancel stops it
//! (here, or through another replica sharing the PostgreSQL database) and keeps the
//! output so far; what is not a background response cannot be cancelled or resumed.
//! The simulator's `stall_after_chunks` fault holds a response open for as long as a
//! test needs it running.

use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use serde_json::{Value, json};
use switchyard_sim::{Faults, SimConfig, SimHandle};
use switchyard_stateful::responses::service::{Created, EventStream, Responses};
use switchyard_stateful::store::Store;

mod common;
use common::{PgDatabase, SimEngine, config};

async fn sim() -> (SimHandle, String) {
    let sim = switchyard_sim::spawn(SimConfig {
        time_scale: 100.0,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let model = SimConfig::default().served_model_name[0].clone();
    (sim, model)
}

async fn service(url: &str, sim: &SimHandle) -> Responses {
    let engine = SimEngine {
        http: reqwest::Client::new(),
        url: sim.url(),
        sent: Arc::new(Mutex::new(Vec::new())),
    };
    let store = Arc::new(Store::open(&config(url), 0).await.unwrap());
    Responses::new(store, Arc::new(engine))
}

/// Holds every engine answer after `n` SSE events (0: right after the headers).
fn stall(sim: &SimHandle, n: Option<u64>) {
    sim.server(0)
        .set_faults(Faults {
            stall_after_chunks: n,
            ..Faults::default()
        })
        .unwrap();
}

/// The `data` of each event.
fn parse(event: &str) -> Value {
    let data = event
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or_else(|| panic!("no data in {event:?}"));
    serde_json::from_str(data).unwrap()
}

async fn next(events: &mut EventStream) -> Value {
    parse(&events.next().await.expect("another event"))
}

/// The rest of a stream.
async fn rest(events: EventStream) -> Vec<Value> {
    events.map(|e| parse(&e)).collect().await
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["sequence_number"].as_u64().unwrap())
        .collect()
}

async fn create(svc: &Responses, body: Value) -> Created {
    svc.create(&body, "default")
        .await
        .unwrap_or_else(|e| panic!("{body}: {e:?}"))
}

/// The response once it has ended and is stored (awaited, not polled).
async fn settled(svc: &Responses, id: &str) -> Value {
    svc.until_done(id).await;
    let r = svc.get(id, "default").await.unwrap();
    assert!(
        !matches!(r["status"].as_str(), Some("queued" | "in_progress")),
        "{r}"
    );
    r
}

/// A streamed background response that the engine holds once it has produced some
/// text (so that there is output to keep): its id, and its stream after that text.
async fn held_with_text(svc: &Responses, sim: &SimHandle, model: &str) -> (String, EventStream) {
    stall(sim, Some(4));
    let Created::Events(mut events) = create(
        svc,
        json!({"model": model, "input": "held", "background": true, "stream": true}),
    )
    .await
    else {
        panic!("a streamed background response answers with events")
    };
    let id = next(&mut events).await["response"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    while next(&mut events).await["type"] != "response.output_text.delta" {}
    (id, events)
}

async fn background_works(url: &str) {
    let (sim, model) = sim().await;
    let svc = service(url, &sim).await;

    // Not streamed: queued at once, then completed where GET finds it.
    let Created::Json(r) = create(
        &svc,
        json!({"model": model, "input": "tell me", "background": true, "max_output_tokens": 16}),
    )
    .await
    else {
        panic!("a background response answers with JSON")
    };
    assert_eq!(
        (r["status"].as_str(), r["background"].as_bool()),
        (Some("queued"), Some(true))
    );
    let id = r["id"].as_str().unwrap().to_string();
    let done = settled(&svc, &id).await;
    assert_eq!(done["status"], "incomplete", "{done}");
    assert!(!done["output"].as_array().unwrap().is_empty());
    // A finished background response cancelled is answered as it is.
    let again = svc.cancel(&id, "default").await.unwrap();
    assert_eq!(again["status"], "incomplete");

    // Streamed, held by the engine after its first events: read two, go away, come
    // back after sequence number 1 while it runs, and follow it to its end.
    stall(&sim, Some(3));
    let Created::Events(mut first) = create(
        &svc,
        json!({"model": model, "input": "stream me", "background": true, "stream": true,
               "max_output_tokens": 16}),
    )
    .await
    else {
        panic!("a streamed background response answers with events")
    };
    let created = next(&mut first).await;
    assert_eq!(created["type"], "response.created");
    assert_eq!(created["response"]["status"], "queued");
    let id = created["response"]["id"].as_str().unwrap().to_string();
    assert_eq!(next(&mut first).await["type"], "response.queued");
    drop(first);
    let mut resumed = svc.events(&id, "default", Some(1)).await.unwrap();
    let third = next(&mut resumed).await;
    assert_eq!(third["sequence_number"], 2);
    assert_eq!(third["type"], "response.in_progress");
    // The client going away does not stop a background response: it is released and
    // runs to its end.
    stall(&sim, None);
    let mut tail = vec![third];
    tail.extend(rest(resumed).await);
    let last = tail.last().unwrap();
    assert_eq!(last["type"], "response.incomplete", "{last}");
    assert_eq!(last["response"]["status"], "incomplete");
    assert_eq!(seqs(&tail), (2..2 + tail.len() as u64).collect::<Vec<_>>());
    // Once stored: the same events from the store, from any point.
    let stored = rest(svc.events(&id, "default", None).await.unwrap()).await;
    assert_eq!(stored.len(), tail.len() + 2);
    assert_eq!(&stored[2..], &tail[..]);
    let from_5 = rest(svc.events(&id, "default", Some(5)).await.unwrap()).await;
    assert_eq!(from_5[0]["sequence_number"], 6);
    assert_eq!(settled(&svc, &id).await["status"], "incomplete");

    // Cancelled while the engine holds it: the stream ends with the cancelled
    // response, and that is what is stored.
    let (id, events) = held_with_text(&svc, &sim, &model).await;
    let cancelled = svc.cancel(&id, "default").await.unwrap();
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let end = rest(events).await;
    let last = end.last().unwrap();
    assert_eq!(last["type"], "response.incomplete");
    assert_eq!(last["response"]["status"], "cancelled");
    let got = svc.get(&id, "default").await.unwrap();
    assert_eq!(got["status"], "cancelled");
    assert!(!got["output"].as_array().unwrap().is_empty(), "{got}");
    stall(&sim, None);

    // Not background: neither cancelled nor resumed, and the error names the param.
    let Created::Json(plain) = create(&svc, json!({"model": model, "input": "x"})).await else {
        panic!("json")
    };
    let plain = plain["id"].as_str().unwrap();
    let e = svc.cancel(plain, "default").await.unwrap_err();
    assert_eq!((e.status, e.param.as_deref()), (400, Some("response_id")));
    let e = svc.events(plain, "default", None).await.err().unwrap();
    assert_eq!((e.status, e.param.as_deref()), (400, Some("stream")));
    let e = svc.cancel("resp_missing", "default").await.unwrap_err();
    assert_eq!(e.status, 404);
    // Background needs store.
    let e = svc
        .create(
            &json!({"model": model, "input": "x", "background": true, "store": false}),
            "default",
        )
        .await
        .err()
        .unwrap();
    assert_eq!((e.status, e.param.as_deref()), (400, Some("background")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_responses_on_sqlite() {
    background_works("sqlite::memory:").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_responses_on_postgres() {
    let db = PgDatabase::new("background").await;
    background_works(&db.url()).await;
}

/// Two replicas on one PostgreSQL database: a background stream that one runs is read
/// by the other from the store, and cancelled through it; the one running it stops
/// when it next looks for cancels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_follows_and_cancels_what_another_runs() {
    let db = PgDatabase::new("background_replicas").await;
    let (sim, model) = sim().await;
    let a = service(&db.url(), &sim).await;
    let b = service(&db.url(), &sim).await;
    let (id, events) = held_with_text(&a, &sim, &model).await;
    // B reads A's events from the store once A has stored them.
    let mut remote = b.events(&id, "default", None).await.unwrap();
    let seen = next(&mut remote).await;
    assert_eq!(seen["type"], "response.created");
    assert_eq!(seen["sequence_number"], 0);
    // Cancelled through B: B says so at once; A stops at its next look.
    let r = b.cancel(&id, "default").await.unwrap();
    assert_eq!(r["status"], "cancelled");
    a.poll_cancels().await.unwrap();
    let end = rest(events).await;
    assert_eq!(end.last().unwrap()["response"]["status"], "cancelled");
    // B's reader gets the same end from the store.
    let remote_end = rest(remote).await;
    assert_eq!(
        remote_end.last().unwrap()["response"]["status"],
        "cancelled"
    );
    for svc in [&a, &b] {
        let got = svc.get(&id, "default").await.unwrap();
        assert_eq!(got["status"], "cancelled");
        assert!(!got["output"].as_array().unwrap().is_empty(), "{got}");
    }
    stall(&sim, None);
}

/// A background response whose row is still being written when the replica looks for
/// cancels is not taken for one cancelled elsewhere: the store not knowing it yet is no
/// cancel. Another session holds the table locked so the insert waits, in the open,
/// while the replica looks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_being_stored_is_not_taken_for_cancelled() {
    let db = PgDatabase::new("background_being_stored").await;
    let (sim, model) = sim().await;
    let svc = service(&db.url(), &sim).await;
    let admin = sqlx::PgPool::connect(&db.url()).await.unwrap();
    let mut lock = admin.begin().await.unwrap();
    sqlx::query("LOCK TABLE responses IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let creating = {
        let svc = svc.clone();
        let body = json!({"model": model, "input": "tell me", "background": true,
                          "max_output_tokens": 16});
        tokio::spawn(async move { svc.create(&body, "default").await })
    };
    // The insert is waiting on the lock (each look is a round trip to the server; no
    // timer is involved).
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO responses%'",
        )
        .fetch_one(&admin)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    svc.poll_cancels().await.unwrap();
    lock.rollback().await.unwrap();
    let Ok(Created::Json(r)) = creating.await.unwrap() else {
        panic!("a background response answers with JSON")
    };
    let id = r["id"].as_str().unwrap();
    svc.until_done(id).await;
    let got = svc.get(id, "default").await.unwrap();
    // Ran to its end (its 16 tokens), not cancelled.
    assert_eq!(got["status"], "incomplete", "{got}");
    assert_eq!(got["incomplete_details"]["reason"], "max_output_tokens");
    admin.close().await;
}

/// A replica runs at most its limit of background responses: one more is a 429 naming
/// `background`, and stores nothing; a place frees when one ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_responses_are_limited_per_replica() {
    let (sim, model) = sim().await;
    let svc = service("sqlite::memory:", &sim)
        .await
        .with_max_background(1);
    let (id, _events) = held_with_text(&svc, &sim, &model).await;
    let body = json!({"model": model, "input": "one more", "background": true});
    let e = svc.create(&body, "default").await.err().unwrap();
    assert_eq!(
        (e.status, e.code.as_deref(), e.param.as_deref()),
        (
            429,
            Some("too_many_background_responses"),
            Some("background")
        )
    );
    let stored = svc
        .store()
        .fetch_all("SELECT id FROM responses", &[])
        .await
        .unwrap();
    assert_eq!(stored.len(), 1, "the refused one left nothing");
    assert_eq!(
        svc.cancel(&id, "default").await.unwrap()["status"],
        "cancelled"
    );
    stall(&sim, None);
    assert!(matches!(create(&svc, body).await, Created::Json(_)));
}
