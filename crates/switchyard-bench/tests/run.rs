//! A short real comparison against switchyard-sim produces the JSON-able results and
//! the Markdown table, with engine counters, oracle and ratios.

use std::sync::Arc;
use std::time::Duration;

use switchyard_bench::report::{self, CompareConfig, Target};
use switchyard_bench::runner::Arrivals;
use switchyard_bench::workload::{self, Params};
use switchyard_sim::SimConfig;
use switchyard_testkit::{MODEL, sims_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comparison_of_two_engines_reports_every_measure() {
    let sims = sims_with(SimConfig {
        engines: 2,
        time_scale: 50.0,
        ..SimConfig::default()
    })
    .await;
    let urls = sims.urls();
    let p = Params {
        groups: 2,
        prompts_per_group: 4,
        system_len: 200,
        question_len: 10,
        output_len: 8,
        ..Params::default()
    };
    let sessions = Arc::new(workload::shared_prefix(&p));
    let targets = vec![
        Target {
            name: "a".into(),
            url: urls[0].clone(),
            pid: Some(std::process::id()),
        },
        Target {
            name: "b".into(),
            url: urls[1].clone(),
            pid: None,
        },
    ];
    let cfg = CompareConfig {
        targets: targets.clone(),
        engines: urls.clone(),
        model: MODEL.into(),
        arrivals: Arrivals::Closed(2),
        max_requests: 100,
        duration: Duration::from_secs(30),
        request_timeout: Duration::from_secs(30),
        repetitions: 2,
        progress: false,
        restarts: Vec::new(),
    };
    let results = report::compare(&cfg, sessions).await.unwrap();
    assert_eq!(results.len(), 4, "2 targets × 2 repetitions");
    assert_eq!(results[0].name, "a");
    assert_eq!(
        results[2].name, "b",
        "the order rotates on the second repetition"
    );
    for r in &results {
        assert_eq!(r.ok, 8, "{r:?}");
        assert_eq!(r.ttft.count, 8);
        assert!(r.itl.count > 0);
        // Each target sends to one engine; the other engine's share is 0.
        let share_sum: f64 = r.engine_share.iter().sum();
        assert!((share_sum - 1.0).abs() < 1e-9);
        // 2 groups of 4: at best 3 of every 4 prompts hit the shared prefix.
        assert!(
            r.oracle_hit_rate > 0.5 && r.oracle_hit_rate < 0.75,
            "{}",
            r.oracle_hit_rate
        );
        // The engines say their capacity, so the fleet-capacity oracle is counted; it
        // never exceeds the unbounded one.
        let bounded = r
            .bounded_oracle_hit_rate
            .expect("the engines report num_gpu_blocks");
        assert!(
            bounded > 0.5 && bounded <= r.oracle_hit_rate + 1e-9,
            "{bounded}"
        );
        let hit = r.engine_hit_rate.unwrap();
        assert!(
            hit > 0.5 && hit <= r.oracle_hit_rate + 1e-9,
            "engine {hit} vs oracle {}",
            r.oracle_hit_rate
        );
    }
    assert!(results[0].process.is_some() && results[1].process.is_none());
    let rows = report::aggregate(&results, &targets);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].ok, 16);
    let md = report::markdown("test", &rows);
    assert!(md.contains("| a | 16 | 0 |"), "{md}");
    assert!(md.contains("1.00×"));
    let json = serde_json::to_value(&rows).unwrap();
    assert_eq!(json[1]["name"], "b");
    assert!(json[0]["ttft"]["p90"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn a_failing_target_is_reported_as_errors_not_a_crash() {
    let sims = sims_with(SimConfig {
        time_scale: 50.0,
        ..SimConfig::default()
    })
    .await;
    sims.server(0)
        .set_faults(switchyard_sim::Faults {
            error_rate: 1.0,
            error_status: 503,
            ..Default::default()
        })
        .unwrap();
    let p = Params {
        num_requests: 5,
        prompt_len: 10,
        output_len: 4,
        ..Params::default()
    };
    let targets = vec![Target {
        name: "bad".into(),
        url: sims.url(),
        pid: None,
    }];
    let cfg = CompareConfig {
        targets: targets.clone(),
        engines: vec![],
        model: MODEL.into(),
        arrivals: Arrivals::Closed(1),
        max_requests: 5,
        duration: Duration::from_secs(10),
        request_timeout: Duration::from_secs(10),
        repetitions: 1,
        progress: false,
        restarts: Vec::new(),
    };
    let results = report::compare(&cfg, Arc::new(workload::random(&p)))
        .await
        .unwrap();
    assert_eq!(results[0].ok, 0);
    assert_eq!(results[0].by_status.get("503"), Some(&5));
    let md = report::markdown("t", &report::aggregate(&results, &targets));
    assert!(md.contains("5 (503: 5)"), "{md}");
}

#[tokio::test]
async fn an_unreachable_target_is_a_clear_error() {
    let targets = vec![Target {
        name: "gone".into(),
        url: "http://127.0.0.1:9".into(),
        pid: None,
    }];
    let cfg = CompareConfig {
        targets,
        engines: vec![],
        model: "m".into(),
        arrivals: Arrivals::Closed(1),
        max_requests: 1,
        duration: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        repetitions: 1,
        progress: false,
        restarts: Vec::new(),
    };
    let err = report::compare(&cfg, Arc::new(vec![]))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("gone") && err.contains("unreachable"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflows_run_times_whole_workflows() {
    let sims = sims_with(SimConfig {
        engines: 2,
        time_scale: 50.0,
        ..SimConfig::default()
    })
    .await;
    let p = Params {
        workflows: 3,
        agents: 2,
        rounds: 2,
        context_len: 100,
        question_len: 5,
        output_len: 4,
        ..Params::default()
    };
    let sessions = workload::workflows(&p);
    // 2 rounds of (2 turns + a burst of 2), each request tagged with its workflow.
    assert_eq!(sessions[0].steps.len(), 6);
    assert_eq!(sessions[0].requests(), 8);
    let extra = sessions[0].steps[2].requests[1].extra.as_ref().unwrap();
    assert_eq!(extra["workflow_metadata"]["workflow_id"], "wf-0");
    assert_eq!(extra["workflow_metadata"]["agent_id"], "agent-1");
    let cfg = CompareConfig {
        targets: vec![Target {
            // Two replicas of one target, sent requests in turn.
            name: "sim".into(),
            url: sims.urls().join(","),
            pid: None,
        }],
        engines: vec![],
        model: MODEL.into(),
        arrivals: Arrivals::Closed(3),
        max_requests: 100,
        duration: Duration::from_secs(30),
        request_timeout: Duration::from_secs(30),
        repetitions: 1,
        progress: false,
        restarts: Vec::new(),
    };
    let results = report::compare(&cfg, Arc::new(sessions)).await.unwrap();
    let r = &results[0];
    assert_eq!(r.ok, 24);
    assert_eq!(r.session_e2e.count, 3, "every workflow ran to the end");
    // A workflow takes longer than any one of its requests.
    assert!(r.session_e2e.p50 > r.e2e.p50, "{r:?}");
    let served: Vec<u64> = sims.servers().iter().map(|s| s.requests()).collect();
    assert_eq!(served, [12, 12], "requests alternate between the replicas");
}

/// A restart the run could not carry out fails the comparison instead of leaving a run
/// measured without the restart it was meant to include.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_did_not_happen_fails_the_run() {
    let sims = sims_with(SimConfig {
        time_scale: 50.0,
        ..SimConfig::default()
    })
    .await;
    let p = Params {
        num_requests: 2,
        prompt_len: 10,
        output_len: 4,
        ..Params::default()
    };
    let cfg = |restarts| CompareConfig {
        targets: vec![Target {
            name: "sim".into(),
            url: sims.url(),
            pid: None,
        }],
        engines: vec![],
        model: MODEL.into(),
        arrivals: Arrivals::Closed(1),
        max_requests: 2,
        duration: Duration::from_secs(30),
        request_timeout: Duration::from_secs(30),
        repetitions: 1,
        progress: false,
        restarts,
    };
    let sessions = Arc::new(workload::random(&p));
    // The engine to restart cannot be reached.
    let gone = cfg(vec![("http://127.0.0.1:9".into(), Duration::ZERO)]);
    let err = report::compare(&gone, sessions.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("127.0.0.1:9") && err.contains("unreachable"),
        "{err}"
    );
    // Due long after the run's two requests have ended.
    let late = cfg(vec![(sims.url(), Duration::from_secs(3600))]);
    let err = report::compare(&late, sessions.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("after the run of sim had ended"), "{err}");
    // Carried out: the run goes on and is measured.
    let now = cfg(vec![(sims.url(), Duration::ZERO)]);
    let results = report::compare(&now, sessions).await.unwrap();
    assert_eq!(results[0].ok, 2);
}
