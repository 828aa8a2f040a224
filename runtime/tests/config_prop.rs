//! The config decoder takes text from outside: arbitrary input never panics, and a value that is
//! accepted is within its documented range.

use proptest::prelude::*;
use quark::{ConfigError, NodeConfig};

/// Keys of `[node]` with a value generator each, to build files that are mostly well formed.
fn node_line() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "shards",
        "pin_threads",
        "idle_spin_us",
        "ring_capacity",
        "cross_shard_inflight_max",
        "external_queue_capacity",
        "external_inflight_max",
        "mailbox_capacity",
        "ask_timeout_ms",
        "shutdown_timeout_ms",
        "idle_timeout_ms",
        "uring_entries",
        "force_legacy_driver",
        "no_such_key",
    ]);
    let value = prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        (0u64..5_000).prop_map(|v| v.to_string()),
        Just("\"auto\"".to_owned()),
        Just("true".to_owned()),
        Just("[0, 1]".to_owned()),
        "[a-z\"\\[\\] ,0-9.]{0,12}",
    ];
    (key, value).prop_map(|(k, v)| format!("{k} = {v}"))
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        let _ = NodeConfig::from_toml(&text, "fuzz.toml");
    }

    #[test]
    fn near_valid_files_give_a_config_in_range_or_an_error(lines in prop::collection::vec(node_line(), 0..8)) {
        let text = format!("[node]\n{}\n", lines.join("\n"));
        match NodeConfig::from_toml(&text, "fuzz.toml") {
            Ok(c) => {
                let e = &c.engine;
                prop_assert!(e.ring_capacity >= 2 && e.ring_capacity <= 1 << 20);
                prop_assert!(e.cross_shard_inflight_max >= 1);
                prop_assert!(e.mailbox_capacity >= 1);
                prop_assert!(e.external_queue_capacity >= 1);
                prop_assert!(!e.ask_timeout.is_zero());
                prop_assert!(e.uring_entries >= 8 && e.uring_entries <= 32_768);
                prop_assert!(e.idle_spin <= std::time::Duration::from_secs(1));
            }
            Err(err) => {
                // Every error names the file.
                prop_assert!(err.to_string().contains("fuzz.toml"), "{}", err);
                // A key an error names is a key of the file (`node.<key>`, `node.shards[i]`),
                // never a value or a piece of one.
                let key = match &err {
                    ConfigError::Syntax { key, .. } | ConfigError::Parse { key, .. } => key.clone(),
                    ConfigError::Invalid { key, .. } => Some(key.clone()),
                    _ => None,
                };
                if let Some(key) = key {
                    let name = key.strip_prefix("node.").map(|k| k.split('[').next().unwrap_or(k));
                    let in_file = lines.iter().any(|l| l.split(" = ").next() == name);
                    prop_assert!(in_file, "key `{}` is not a key of the file: {}\n{}", key, err, text);
                }
            }
        }
    }
}
