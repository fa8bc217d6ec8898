//! The official OpenAI Python SDK (pinned in contract/requirements.txt, strict response
//! validation) against the gateway's stateful APIs: contract/test_responses.py (Responses,
//! Conversations, Files) stored in SQLite and in PostgreSQL, and
//! contract/test_vector_stores.py (Vector Stores, file_search) on SQLite + sqlite-vec and
//! on PostgreSQL + pgvector (a server of its own from PyPI pgserver), and
//! contract/test_tools.py (the web_search tool, against a fake search service on
//! loopback), contract/test_mcp.py (remote MCP tools, against a fake MCP server on
//! loopback) and contract/test_cache.py (the response cache: cached answers and
//! streams replayed from it). The Python environment is made on first use by
//! scripts/sdk-venv.sh (`.ci/run` makes it first).

mod common;

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
    contract(
        script,
        &database_url,
        vec![
            ("SWITCHYARD_URL", t.url.clone()),
            ("SWITCHYARD_MODEL", MODEL.into()),
            ("SWITCHYARD_HELD_MODEL", HELD.into()),
        ],
    )
    .await;
}

/// Runs a contract script with `env`; fails the test, with its output, if it fails.
async fn contract(script: &str, on: &str, env: Vec<(&'static str, String)>) {
    let name = script.to_string();
    let out = tokio::task::spawn_blocking(move || run_contract_script(&name, &env))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "the SDK suite {script} failed on {on}:\n{}{}",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_accepts_every_web_search_answer() {
    let search = common::search::serve().await;
    let t = TestBed::with(sims(1).await, |c| {
        c.database_url = Some("sqlite::memory:".into());
        c.tools.web_search = Some(common::search::provider(&search));
    })
    .await;
    contract(
        "test_tools.py",
        "sqlite",
        vec![
            ("SWITCHYARD_URL", t.url.clone()),
            ("SWITCHYARD_MODEL", MODEL.into()),
            (
                "SWITCHYARD_SEARCH_FIRST_URL",
                common::search::FIRST_URL.into(),
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_accepts_every_mcp_answer() {
    let server = common::mcp::serve("127.0.0.1", Default::default()).await;
    let t = TestBed::with(sims(1).await, |c| {
        c.database_url = Some("sqlite::memory:".into());
        c.tools.mcp = Some(switchyard::config::tools::McpConfig {
            allowed_hosts: vec!["127.0.0.1".into()],
            allow_private_addresses: true,
            timeout_secs: 30.0,
            max_response_bytes: 1 << 20,
        });
    })
    .await;
    contract(
        "test_mcp.py",
        "sqlite",
        vec![
            ("SWITCHYARD_URL", t.url.clone()),
            ("SWITCHYARD_MODEL", MODEL.into()),
            ("SWITCHYARD_MCP_URL", format!("{server}/mcp")),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_reads_cached_answers_and_replayed_streams() {
    let t = TestBed::with(sims(1).await, |c| {
        c.response_cache = Some(switchyard::config::CacheBackend::Memory);
    })
    .await;
    contract(
        "test_cache.py",
        "a memory cache",
        vec![
            ("SWITCHYARD_URL", t.url.clone()),
            ("SWITCHYARD_MODEL", MODEL.into()),
        ],
    )
    .await;
}
