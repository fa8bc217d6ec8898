//! KV-cache events: the simulator's, read by an independent consumer written against
//! vLLM's wire format (contract/test_kv_events.py: pyzmq and msgspec), and the gateway's
//! precise prefix routing built on them.

use std::path::PathBuf;
use std::process::Command;

use switchyard_sim::SimConfig;
use switchyard_sim::kv_events::{HashAlgo, KvEventsConfig};
use switchyard_stateful::testing::test_python;
use switchyard_testkit::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Events published on loopback, with replay, on ports the system picks.
fn kv_config(topic: &str) -> KvEventsConfig {
    KvEventsConfig {
        enable_kv_cache_events: true,
        publisher: "zmq".into(),
        endpoint: "tcp://127.0.0.1:0".into(),
        replay_endpoint: Some("tcp://127.0.0.1:0".into()),
        topic: topic.into(),
        ..KvEventsConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulators_events_are_vllms_wire_format_read_by_an_independent_decoder() {
    // 64 blocks of 16 tokens: eight ~500-token prompts evict each other.
    let sim = sims_with(SimConfig {
        time_scale: 100.0,
        num_gpu_blocks: 64,
        max_model_len: 1024,
        prefix_caching_hash_algo: HashAlgo::Sha256Cbor,
        kv_events_config: Some(kv_config("kv@sim@m")),
        ..SimConfig::default()
    })
    .await;
    let (pub_ep, replay_ep) = sim.server(0).kv_events_endpoints().remove(0);
    let (url, python) = (
        sim.url(),
        tokio::task::spawn_blocking(test_python).await.unwrap(),
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(root().join("contract/test_kv_events.py"))
            .env("SIM_URL", url)
            .env("SIM_MODEL", MODEL)
            .env("SIM_KV_ENDPOINT", pub_ep)
            .env("SIM_KV_REPLAY", replay_ep.unwrap())
            .env("SIM_TOPIC", "kv@sim@m")
            .env("SIM_BLOCK_SIZE", "16")
            .output()
            .expect("python runs")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "contract/test_kv_events.py failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
}
