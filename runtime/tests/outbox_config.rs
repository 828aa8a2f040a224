//! The `[outbox]` section of the TOML config: every knob read, range errors naming the key and
//! the value as written, the dedupe-window rule refused when the file is read, and the
//! section applied over the code's `OutboxConfig` at start.

use std::time::Duration;

use quark::outbox::{FullPolicy, OutboxConfig};
use quark::{block_on, NodeConfig};

mod outbox_common;
use outbox_common::*;

fn parse(outbox: &str) -> Result<NodeConfig, String> {
    NodeConfig::from_toml(&format!("[outbox]\n{outbox}"), "q.toml").map_err(|e| e.to_string())
}

#[test]
fn every_knob_is_read() {
    let c = parse(
        "attempts_max = 7\ngive_up_after_ms = 60000\nretry_initial_ms = 5\nretry_max_ms = 900\n\
         delivery_timeout_ms = 3000\npending_bytes_max = 1048576\nfull_policy = \"fail\"\n\
         inflight_max = 100\nbatch_max = 16\nack_flush_interval_ms = 7\n\
         dedupe_window_ms = 120000\ndedupe_count_max = 50\ninbox_snapshot_every = 9\n\
         dead_letters_max = 11\n",
    )
    .unwrap();
    let got = c.outbox.expect("an [outbox] section").to_config();
    let want = OutboxConfig {
        attempts_max: 7,
        give_up_after: Duration::from_secs(60),
        retry_initial: Duration::from_millis(5),
        retry_max: Duration::from_millis(900),
        delivery_timeout: Duration::from_secs(3),
        pending_bytes_max: 1 << 20,
        full_policy: FullPolicy::Fail,
        inflight_max: 100,
        batch_max: 16,
        ack_flush_interval: Duration::from_millis(7),
        dedupe_window: Duration::from_secs(120),
        dedupe_count_max: 50,
        inbox_snapshot_every: 9,
        dead_letters_max: 11,
    };
    assert_eq!(got, want);
    // A file without the section leaves the code's config alone.
    assert!(NodeConfig::from_toml("", "q.toml")
        .unwrap()
        .outbox
        .is_none());
}

#[test]
fn bad_values_are_refused_naming_the_key_and_the_value() {
    for (text, want) in [
        (
            "attempts_max = 0",
            "q.toml: key `outbox.attempts_max` = 0: 1 to 4294967295",
        ),
        (
            "retry_initial_ms = -5",
            "q.toml: key `outbox.retry_initial_ms` = -5: 1 ms to 1 day",
        ),
        (
            "full_policy = \"drop\"",
            "q.toml: key `outbox.full_policy` = \"drop\": \"wait\" or \"fail\"",
        ),
        (
            "pending_bytes_max = 10",
            "q.toml: key `outbox.pending_bytes_max` = 10: 4 KiB to 1 TiB",
        ),
        (
            "batch_max = 0",
            "q.toml: key `outbox.batch_max` = 0: 1 to 65536 messages",
        ),
        (
            "retry_initial_ms = 6000",
            "q.toml: key `outbox.retry_initial_ms` = 6000: retry_initial_ms must not exceed retry_max_ms (defaults 20 and 5000)",
        ),
    ] {
        assert_eq!(parse(text).unwrap_err(), want, "{text}");
    }
    let e = parse("bogus = 1").unwrap_err();
    assert!(
        e.contains("key `outbox.bogus`") && e.contains("attempts_max"),
        "an unknown key lists the valid ones: {e}"
    );
    let e = parse("dedupe_window_ms = \"1d\"").unwrap_err();
    assert!(
        e.contains("key `outbox.dedupe_window_ms`") && e.contains("expected an integer"),
        "{e}"
    );
}

#[test]
fn a_give_up_age_not_below_the_dedupe_window_is_refused_when_the_file_is_read() {
    // Against the default window (24 h).
    assert_eq!(
        parse("give_up_after_ms = 86400000").unwrap_err(),
        "q.toml: key `outbox.give_up_after_ms` = 86400000: give_up_after_ms must be shorter than dedupe_window_ms (default 86400000, 24 h): a receiver would forget ids a sender can still redeliver, and apply a duplicate"
    );
    // A window shortened below the default give-up age (1 h) names the window.
    let e = parse("dedupe_window_ms = 600000").unwrap_err();
    assert!(
        e.starts_with(
            "q.toml: key `outbox.dedupe_window_ms` = 600000: give_up_after_ms must be shorter"
        ),
        "{e}"
    );
    // Both set, consistent: accepted.
    parse("dedupe_window_ms = 600000\ngive_up_after_ms = 300000").unwrap();
}

#[test]
fn the_section_applies_over_the_code_config_at_start() {
    let dir = tempfile::tempdir().unwrap();
    // The code asks for many attempts; the file's attempts_max = 1 wins (key by key: the
    // code's fast retries stay).
    let mut config = config(dir.path());
    config.outbox = parse("attempts_max = 1").unwrap().outbox;
    let node = builder(dir.path(), fast_retries())
        .config(config)
        .start()
        .unwrap();
    let (a, b) = cross_shard_pair(&node, 40);
    set_behaviour(b, Some(Behaviour::Retry));
    block_on(node.actor_ref::<Account>(a).ask(Transfer {
        to: b,
        amount: 1,
        count: 1,
        panic_before_commit: false,
    }))
    .unwrap()
    .unwrap();
    let s = eventually("the dead letter", Duration::from_secs(20), || {
        let s = stats_sum(&node);
        (s.dead_letters == 1).then_some(s)
    });
    assert_eq!(s.retries, 0, "dead-lettered after its first failed attempt");
    set_behaviour(b, None);
    node.shutdown();
}

#[test]
fn start_up_refuses_a_file_window_that_the_code_config_violates() {
    let dir = tempfile::tempdir().unwrap();
    // The file's window is fine against the default give-up age (1 h) but not against the
    // code's (2 h): start-up checks the merged config.
    let mut config = config(dir.path());
    config.outbox = parse("dedupe_window_ms = 5400000").unwrap().outbox;
    let r = builder(
        dir.path(),
        OutboxConfig {
            give_up_after: Duration::from_secs(7200),
            ..OutboxConfig::default()
        },
    )
    .config(config)
    .start();
    let e = r.err().expect("refused").to_string();
    assert!(
        e.contains("give_up_after") && e.contains("dedupe_window"),
        "{e}"
    );
}
