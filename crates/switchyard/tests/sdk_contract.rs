//! The official OpenAI Python SDK (pinned in contract/requirements.txt, strict response
//! validation) against the gateway's stateful APIs: contract/test_responses.py (Responses,
//! Conversations, Files) stored in SQLite and in PostgreSQL, and
//! contract/test_vector_stores.py (Vector Stores, file_search) on SQLite + sqlite-vec and
//! on PostgreSQL + pgvector (a server of its own from PyPI pgserver). The Python
//! environment is made on first use by scripts/sdk-venv.sh (`.ci/run` makes it first).

use switchyard::PolicyKind;
use switchyard_stateful::testing::{PgDatabase, PgVectorServer, run_contract_script};
use switchyard_testkit::*;

const HELD: &str = "held-model";

async fn suite(script: &str, database_url: String) {
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
        c.embedding_model = Some(MODEL.into());
    })
    .await;
    let (script_name, url) = (script.to_string(), t.url.clone());
    let out = tokio::task::spawn_blocking(move || {
        run_contract_script(
            &script_name,
            &[
                ("SWITCHYARD_URL", url),
                ("SWITCHYARD_MODEL", MODEL.into()),
                ("SWITCHYARD_HELD_MODEL", HELD.into()),
            ],
        )
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the SDK suite {script} failed on {database_url}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_accepts_every_responses_answer_on_sqlite_and_postgres() {
    suite("test_responses.py", "sqlite::memory:".into()).await;
    let db = PgDatabase::new("sdk").await;
    suite("test_responses.py", db.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_accepts_every_vector_store_answer_on_sqlite_vec_and_pgvector() {
    suite("test_vector_stores.py", "sqlite::memory:".into()).await;
    let pg = tokio::task::spawn_blocking(PgVectorServer::start)
        .await
        .unwrap();
    suite("test_vector_stores.py", pg.url().to_string()).await;
}
