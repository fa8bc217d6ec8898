//! The official OpenAI Python SDK (pinned in contract/requirements.txt, strict response
//! validation) against the gateway's Responses API, stored in SQLite and then in
//! PostgreSQL: contract/test_responses.py must pass on both. The SDK's environment is
//! made on first use by scripts/sdk-venv.sh (`.ci/run` makes it first).

use std::path::PathBuf;
use std::process::Command;

use switchyard::PolicyKind;
use switchyard_stateful::testing::PgDatabase;
use switchyard_testkit::*;

const HELD: &str = "held-model";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> String {
    let out = Command::new(root().join("scripts/sdk-venv.sh"))
        .output()
        .expect("scripts/sdk-venv.sh runs");
    assert!(
        out.status.success(),
        "the SDK environment could not be made: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn suite(python: &str, database_url: String) {
    // An engine that holds every answer after its first events: a response on its
    // model runs until it is cancelled.
    let held = serving(HELD, 1).await;
    set_faults_everywhere(
        &held,
        &switchyard_sim::Faults {
            stall_after_chunks: Some(3),
            ..Default::default()
        },
    );
    let t = TestBed::with(sims(2).await, |c| {
        c.policy = PolicyKind::ConsistentHash;
        c.database_url = Some(database_url.clone());
        c.worker_urls.extend(held.urls());
    })
    .await;
    let python = python.to_string();
    let url = t.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(root().join("contract/test_responses.py"))
            .env("SWITCHYARD_URL", url)
            .env("SWITCHYARD_MODEL", MODEL)
            .env("SWITCHYARD_HELD_MODEL", HELD)
            .output()
            .expect("python runs")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the SDK suite failed on {database_url}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_accepts_every_responses_answer_on_sqlite_and_postgres() {
    let python = python();
    suite(&python, "sqlite::memory:".into()).await;
    let db = PgDatabase::new("sdk").await;
    suite(&python, db.url()).await;
}
