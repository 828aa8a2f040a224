//! Configuration parsing: defaults, the example file, and the errors for bad input.

use std::time::Duration;

use quark::{ConfigError, NodeConfig, ShardSpec};

#[test]
fn the_example_file_parses_to_the_defaults_it_documents() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/examples/quark.toml");
    let c = NodeConfig::from_file(path).unwrap();
    let d = quark::EngineConfig::default();
    assert_eq!(c.engine.shards, d.shards);
    assert_eq!(c.engine.idle_spin, d.idle_spin);
    assert_eq!(c.engine.ring_capacity, d.ring_capacity);
    assert_eq!(
        c.engine.cross_shard_inflight_max,
        d.cross_shard_inflight_max
    );
    assert_eq!(c.engine.mailbox_capacity, d.mailbox_capacity);
    assert_eq!(c.engine.ask_timeout, d.ask_timeout);
    assert_eq!(c.engine.idle_timeout, d.idle_timeout);
    assert_eq!(c.engine.shutdown_timeout, d.shutdown_timeout);
    assert_eq!(c.engine.uring_entries, d.uring_entries);
    assert_eq!(
        c.actors["echo"].idle_timeout,
        Some(Duration::from_millis(60_000))
    );
}

#[test]
fn shard_forms() {
    let c = NodeConfig::from_toml("[node]\nshards = 3\n", "t.toml").unwrap();
    assert_eq!(c.engine.shards, ShardSpec::Count(3));
    let c = NodeConfig::from_toml("[node]\nshards = [1, 0]\n", "t.toml").unwrap();
    assert_eq!(c.engine.shards, ShardSpec::Cores(vec![1, 0]));
    let c = NodeConfig::from_toml("", "t.toml").unwrap();
    assert_eq!(c.engine.shards, ShardSpec::Auto);
}

#[test]
fn unknown_key_names_file_key_and_line() {
    let text = "[node]\nshards = 2\nring_capacty = 64\n";
    let e = NodeConfig::from_toml(text, "conf/quark.toml").unwrap_err();
    match &e {
        ConfigError::Parse {
            file, line, key, ..
        } => {
            assert_eq!(file.to_str(), Some("conf/quark.toml"));
            assert_eq!(*line, 3);
            assert_eq!(key.as_deref(), Some("ring_capacty"));
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
    let msg = e.to_string();
    assert!(msg.starts_with("conf/quark.toml:3:"), "{msg}");
    assert!(msg.contains("ring_capacty"), "{msg}");
    assert!(msg.contains("unknown field"), "{msg}");
}

#[test]
fn wrong_type_names_the_key_and_line() {
    let text = "[node]\n\nidle_spin_us = \"fast\"\n";
    let e = NodeConfig::from_toml(text, "q.toml").unwrap_err();
    match &e {
        ConfigError::Parse { line, key, .. } => {
            assert_eq!(*line, 3);
            assert_eq!(key.as_deref(), Some("idle_spin_us"));
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
    assert!(e.to_string().contains("idle_spin_us"), "{e}");
}

#[test]
fn out_of_range_values_name_the_key_and_the_range() {
    let e = NodeConfig::from_toml("[node]\nring_capacity = 1\n", "q.toml").unwrap_err();
    match &e {
        ConfigError::Invalid { key, value, .. } => {
            assert_eq!(key, "node.ring_capacity");
            assert_eq!(value, "1");
        }
        other => panic!("expected a range error, got {other:?}"),
    }
    assert_eq!(
        e.to_string(),
        "q.toml: key `node.ring_capacity` = 1: 2 to 1048576 slots"
    );
    let e = NodeConfig::from_toml("[node]\nshards = 0\n", "q.toml").unwrap_err();
    assert!(
        matches!(e, ConfigError::Invalid { ref key, .. } if key == "node.shards"),
        "{e}"
    );
    let e = NodeConfig::from_toml("[node]\nshards = \"all\"\n", "q.toml").unwrap_err();
    assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
    let e = NodeConfig::from_toml("[actors.x]\nmax_local_workers = 0\n", "q.toml").unwrap_err();
    assert!(
        matches!(e, ConfigError::Invalid { ref key, .. } if key == "actors.x.max_local_workers"),
        "{e}"
    );
}

#[test]
fn unknown_section_and_missing_file() {
    let e = NodeConfig::from_toml("[nodes]\nshards = 2\n", "q.toml").unwrap_err();
    assert!(matches!(e, ConfigError::Parse { line: 1, .. }), "{e:?}");
    let e = NodeConfig::from_file("/nonexistent/quark.toml").unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(e.to_string().contains("/nonexistent/quark.toml"), "{e}");
}

#[test]
fn config_sections_must_name_registered_types() {
    struct A;
    impl quark::Actor for A {
        const TYPE_NAME: &'static str = "a";
    }
    let config = NodeConfig::from_toml("[actors.b]\nidle_timeout_ms = 5\n", "q.toml").unwrap();
    let err = quark::Node::builder()
        .config(config)
        .register(quark::ActorType::new(|_| A))
        .start()
        .err()
        .expect("an unregistered type in the config is refused");
    assert!(matches!(err, quark::NodeError::UnknownActorType { ref name } if name == "b"));
    let config = NodeConfig::from_toml("[actors.a]\nmax_local_workers = 2\n", "q.toml").unwrap();
    let err = quark::Node::builder()
        .config(config)
        .register(quark::ActorType::new(|_| A))
        .start()
        .err()
        .expect("max_local_workers on a stateful type is refused");
    assert!(matches!(err, quark::NodeError::NotStateless { .. }));
}

#[test]
fn log_section() {
    let c = NodeConfig::from_toml(
        "[log]\ndata_dir = \"/d\"\nfsync = { interval_ms = 7 }\nrecovery = \"quarantine\"\n",
        "q.toml",
    )
    .unwrap();
    let log = c.engine.log.expect("a log is configured");
    assert_eq!(log.dir, std::path::PathBuf::from("/d"));
    assert_eq!(log.fsync, quark_persist::FsyncPolicy::IntervalMs(7));
    assert_eq!(log.recovery, quark_persist::RecoveryMode::Quarantine);
    assert!(NodeConfig::from_toml("", "q.toml")
        .unwrap()
        .engine
        .log
        .is_none());

    let e = NodeConfig::from_toml("[log]\nfsync = \"always\"\n", "q.toml").unwrap_err();
    assert!(
        matches!(e, ConfigError::Invalid { ref key, .. } if key == "log.data_dir"),
        "{e}"
    );
    let e = NodeConfig::from_toml(
        "[log]\ndata_dir = \"/d\"\nfsync = \"sometimes\"\n",
        "q.toml",
    )
    .unwrap_err();
    assert!(
        matches!(e, ConfigError::Invalid { ref key, .. } if key == "log.fsync"),
        "{e}"
    );
    let e = NodeConfig::from_toml(
        "[log]\ndata_dir = \"/d\"\nsegment_bytes = 1048577\n",
        "q.toml",
    )
    .unwrap_err();
    assert!(
        matches!(e, ConfigError::Invalid { ref key, .. } if key == "log.segment_bytes"),
        "{e}"
    );
}

#[test]
fn journal_keys_parse_and_are_checked() {
    let c = NodeConfig::from_toml(
        "[actors.acct]\nsnapshot_every_events = 1000\nsnapshot_every_bytes = 65536\nretention_age_ms = 86400000\n",
        "q.toml",
    )
    .unwrap();
    let t = &c.actors["acct"];
    assert_eq!(t.snapshot_every_events, Some(1000));
    assert_eq!(t.snapshot_every_bytes, Some(65536));
    assert_eq!(t.retention_age, Some(Duration::from_secs(86400)));
    let e =
        NodeConfig::from_toml("[actors.acct]\nsnapshot_every_events = 0\n", "q.toml").unwrap_err();
    assert!(
        matches!(e, ConfigError::Invalid { ref key, .. } if key == "actors.acct.snapshot_every_events"),
        "{e}"
    );
    // Journal keys on a type that is not journaled are refused at start-up.
    struct A;
    impl quark::Actor for A {
        const TYPE_NAME: &'static str = "acct";
    }
    let err = quark::Node::builder()
        .config(c)
        .register(quark::ActorType::new(|_| A))
        .start()
        .err()
        .expect("journal keys on a plain type are refused");
    assert!(matches!(err, quark::NodeError::NotJournaled { ref name } if name == "acct"));
}
