//! Bad flags get clear errors from the binary.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard-bench"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_are_explained() {
    let (code, err) = run(&["--target", "no-equals-sign", "--concurrency", "1"]);
    assert_eq!(code, 2);
    assert!(err.contains("NAME=URL"), "{err}");
    let (code, err) = run(&["--target", "a=ftp://x", "--concurrency", "1"]);
    assert_eq!(code, 2);
    assert!(err.contains("http"), "{err}");
    let (code, err) = run(&[
        "--target",
        "a=http://127.0.0.1:9",
        "--workload",
        "trace",
        "--concurrency",
        "1",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("--trace"), "{err}");
    let (code, err) = run(&["--target", "a=http://127.0.0.1:9"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--rate") && err.contains("--concurrency"),
        "{err}"
    );
    let (code, err) = run(&[
        "--target",
        "a=http://127.0.0.1:9",
        "--rate",
        "1",
        "--concurrency",
        "2",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot be used with"), "{err}");
    let (code, err) = run(&[
        "--target",
        "a=http://127.0.0.1:9",
        "--concurrency",
        "1",
        "--num-requests",
        "1",
        "--workload",
        "random",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("unreachable"), "{err}");
}
