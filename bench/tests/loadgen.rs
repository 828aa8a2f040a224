//! Runs the `loadgen` binary briefly and checks its JSON report.

use std::process::Command;

fn run(extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--duration-s", "0.5", "--warmup-s", "0.2", "--actors", "50"])
        .args(["--inflight", "8", "--json"])
        .args(extra)
        .output()
        .expect("loadgen runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loadgen failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("one JSON object on stdout")
}

#[test]
fn closed_loop_ask_reports_throughput_and_latency() {
    let r = run(&[]);
    assert_eq!(r["op"], "ask");
    assert_eq!(r["mode"], "closed loop");
    assert_eq!(r["errors"], 0);
    assert!(r["ops"].as_u64().expect("ops") > 0);
    assert!(r["throughput_rps"].as_f64().expect("throughput") > 0.0);
    let p50 = r["p50_ns"].as_u64().expect("p50");
    let p99 = r["p99_ns"].as_u64().expect("p99");
    let max = r["max_ns"].as_u64().expect("max");
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "{r}");
}

#[test]
fn open_loop_counts_exactly_the_requests_scheduled_in_the_window() {
    let r = run(&["--op", "tell", "--rate", "2000"]);
    assert_eq!(r["op"], "tell");
    assert_eq!(r["mode"], "open loop");
    assert_eq!(r["errors"], 0);
    // 2000 req/s over 2 shards: one request per ms per shard. The 0.5 s window holds the
    // requests scheduled in it, 500 per shard, whenever they complete: each is either
    // completed (`ops`) or still incomplete at the hard stop (`late`), none dropped, none
    // from the warm-up. (Rounding of the schedule can put one more or one less per shard.)
    let shards = r["shards"].as_u64().expect("shards");
    let counted = r["ops"].as_u64().expect("ops") + r["late"].as_u64().expect("late");
    let want = 500 * shards;
    assert!(
        counted.abs_diff(want) <= shards,
        "{counted} requests counted, {want} scheduled in the window"
    );
    // The machine line and commit travel with the figures.
    assert!(r["machine"]["cores"].as_u64().expect("cores") >= 1, "{r}");
    assert!(r["machine"]["commit"].is_string(), "{r}");
}

#[test]
fn a_bad_config_file_is_an_error_not_a_panic() {
    let path = std::env::temp_dir().join(format!("loadgen-test-{}.toml", std::process::id()));
    std::fs::write(&path, "[node]\nshards = 0\n").expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .arg("--config")
        .arg(&path)
        .output()
        .expect("loadgen runs");
    let _ = std::fs::remove_file(&path);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("node.shards"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
