//! Configuration parsing: defaults, the example file, and the errors for bad input.

use std::time::Duration;

use quark::{ConfigError, NodeConfig, ShardSpec};

mod common;

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
    assert_eq!(c.engine.migration_timeout, d.migration_timeout);
    assert_eq!(c.engine.migrations_per_sec_max, d.migrations_per_sec_max);
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
            assert_eq!(key.as_deref(), Some("node.ring_capacty"));
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
            assert_eq!(key.as_deref(), Some("node.idle_spin_us"));
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
    // The message names the file; the cause is the source, said once in the chain.
    assert!(!e.to_string().contains("os error"), "{e}");
    let chain = quark::ErrorChain(&e).to_string();
    assert_eq!(chain.matches("(os error 2)").count(), 1, "{chain}");
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
    assert!(matches!(err, quark::NodeError::UnknownActorType { ref name, .. } if name == "b"));
    let config = NodeConfig::from_toml("[actors.a]\nmax_local_workers = 2\n", "q.toml").unwrap();
    let err = quark::Node::builder()
        .config(config)
        .register(quark::ActorType::new(|_| A))
        .start()
        .err()
        .expect("max_local_workers on a stateful type is refused");
    assert!(matches!(err, quark::NodeError::NotStateless { .. }));
    // Start-up errors about a config section name the file the section is in.
    assert!(
        err.to_string()
            .starts_with("q.toml: config key actors.a.max_local_workers"),
        "{err}"
    );
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
    assert_eq!(log.fsync, quark::log::FsyncPolicy::IntervalMs(7));
    assert_eq!(log.recovery, quark::log::RecoveryMode::Quarantine);
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
fn log_direct_io_key() {
    let log = |text: &str| {
        NodeConfig::from_toml(&format!("[log]\ndata_dir = \"/d\"\n{text}"), "q.toml")
            .map(|c| c.engine.log.expect("a log is configured").direct_io)
    };
    assert_eq!(log("").unwrap(), quark::log::DirectIo::Auto);
    assert_eq!(log("direct_io = \"on\"").unwrap(), quark::log::DirectIo::On);
    assert_eq!(
        log("direct_io = \"off\"").unwrap(),
        quark::log::DirectIo::Off
    );
    assert_eq!(
        log("direct_io = \"auto\"").unwrap(),
        quark::log::DirectIo::Auto
    );
    let e = log("direct_io = \"yes\"").unwrap_err();
    assert!(
        matches!(e, ConfigError::Invalid { ref key, .. } if key == "log.direct_io"),
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
    assert!(matches!(err, quark::NodeError::NotJournaled { ref name, .. } if name == "acct"));
}

/// The error of `text` (named `q.toml`).
fn err(text: &str) -> ConfigError {
    NodeConfig::from_toml(text, "q.toml").expect_err("the config is refused")
}

/// The key an error names (`None` for errors without one).
fn key_of(e: &ConfigError) -> Option<&str> {
    match e {
        ConfigError::Syntax { key, .. } | ConfigError::Parse { key, .. } => key.as_deref(),
        ConfigError::Invalid { key, .. } => Some(key),
        _ => None,
    }
}

#[test]
fn a_duplicate_key_is_named_by_its_full_path() {
    let e = err("[node]\nshards = 2\nshards = 3\n");
    assert!(matches!(e, ConfigError::Syntax { line: 3, .. }), "{e:?}");
    assert_eq!(key_of(&e), Some("node.shards"), "{e}");
    let msg = e.to_string();
    assert!(msg.starts_with("q.toml:3:1: key `node.shards`: "), "{msg}");
    assert!(msg.contains("duplicate key"), "{msg}");
    // A duplicate table header is named too.
    let e = err("[node]\nshards = 2\n[log]\ndata_dir = \"/d\"\n[node]\n");
    assert_eq!(key_of(&e), Some("node"), "{e}");
}

#[test]
fn a_value_is_never_reported_as_a_key() {
    for (text, key, value) in [
        ("[node]\nring_capacity = -5\n", "node.ring_capacity", "-5"),
        ("[node]\nshards = -1\n", "node.shards", "-1"),
        ("[node]\nshards = [0, -3]\n", "node.shards[1]", "-3"),
        (
            "[node]\nidle_spin_us = 2_000_000\n",
            "node.idle_spin_us",
            "2_000_000",
        ),
        (
            "[log]\ndata_dir = \"/d\"\nfsync = { interval_ms = -7 }\n",
            "log.fsync.interval_ms",
            "-7",
        ),
        (
            "[actors.x]\nidle_timeout_ms = 0x0\n",
            "actors.x.idle_timeout_ms",
            "0x0",
        ),
    ] {
        let e = err(text);
        match &e {
            ConfigError::Invalid {
                key: k, value: v, ..
            } => {
                assert_eq!((k.as_str(), v.as_str()), (key, value), "{text}: {e}");
            }
            other => panic!("{text}: expected a range error, got {other:?}"),
        }
        assert!(
            e.to_string()
                .starts_with(&format!("q.toml: key `{key}` = {value}: ")),
            "{e}"
        );
    }
}

#[test]
fn a_value_of_the_wrong_type_names_its_key_and_the_accepted_forms() {
    let e = err("[log]\ndata_dir = \"/d\"\nfsync = 5\n");
    assert_eq!(key_of(&e), Some("log.fsync"), "{e}");
    let msg = e.to_string();
    assert!(msg.starts_with("q.toml:3:9: key `log.fsync`: "), "{msg}");
    assert!(msg.contains("integer `5`"), "{msg}");
    assert!(
        msg.contains("\"always\", \"never\" or { interval_ms = N }"),
        "{msg}"
    );
    assert!(!msg.contains("untagged"), "{msg}");
    let e = err("[cluster]\ncluster_id = \"c\"\nnode_id = 1\n[[cluster.nodes]]\nid = 1\naddr = \"127.0.0.1:1\"\n[[cluster.nodes]]\nid = \"two\"\naddr = \"127.0.0.1:2\"\n");
    assert_eq!(key_of(&e), Some("cluster.nodes[1].id"), "{e}");
    assert!(matches!(e, ConfigError::Parse { line: 8, .. }), "{e:?}");
}

#[test]
fn unknown_keys_are_refused_in_every_table_with_the_valid_ones() {
    const CLUSTER: &str = "[cluster]\ncluster_id = \"c\"\nnode_id = 1\n";
    const NODES: &str = "[[cluster.nodes]]\nid = 1\naddr = \"127.0.0.1:1\"\n";
    for (text, key, a_valid_key) in [
        ("bogus = 1\n".to_owned(), "bogus", "node"),
        (
            "[node]\nbogus = 1\n".to_owned(),
            "node.bogus",
            "ring_capacity",
        ),
        (
            "[log]\ndata_dir = \"/d\"\nbogus = 1\n".to_owned(),
            "log.bogus",
            "segment_bytes",
        ),
        (
            "[log]\ndata_dir = \"/d\"\nfsync = { interval_ms = 5, bogus = 1 }\n".to_owned(),
            "log.fsync.bogus",
            "interval_ms",
        ),
        (
            "[actors.x]\nbogus = 1\n".to_owned(),
            "actors.x.bogus",
            "idle_timeout_ms",
        ),
        (
            format!("{CLUSTER}bogus = 1\n{NODES}"),
            "cluster.bogus",
            "secret_env",
        ),
        (
            format!("{CLUSTER}{NODES}bogus = 1\n"),
            "cluster.nodes[0].bogus",
            "addr",
        ),
    ] {
        let e = err(&text);
        assert!(matches!(e, ConfigError::Parse { .. }), "{text}: {e:?}");
        assert_eq!(key_of(&e), Some(key), "{text}: {e}");
        let msg = e.to_string();
        assert!(msg.contains("unknown field `bogus`"), "{msg}");
        assert!(
            msg.contains(&format!("`{a_valid_key}`")),
            "lists the valid keys: {msg}"
        );
    }
}

#[test]
fn an_empty_data_dir_is_refused() {
    let e = err("[log]\ndata_dir = \"\"\n");
    assert_eq!(key_of(&e), Some("log.data_dir"), "{e}");
    assert!(
        e.to_string()
            .starts_with("q.toml: key `log.data_dir` = \"\": "),
        "{e}"
    );
}

#[test]
fn a_segment_larger_than_the_log_accepts_is_refused_at_config_time() {
    // 8 GiB is a multiple of 4096, but a segment is at most 4 GiB - 4 KiB (u32 offsets).
    let e = err("[log]\ndata_dir = \"/d\"\nsegment_bytes = 8589934592\n");
    assert_eq!(key_of(&e), Some("log.segment_bytes"), "{e}");
    assert!(e.to_string().contains("= 8589934592: "), "{e}");
    // The largest accepted value opens.
    let c = NodeConfig::from_toml(
        "[log]\ndata_dir = \"/d\"\nsegment_bytes = 4294963200\n",
        "q.toml",
    )
    .unwrap();
    assert_eq!(c.engine.log.unwrap().segment_bytes, 4_294_963_200);
}

struct Plain;
impl quark::Actor for Plain {
    const TYPE_NAME: &'static str = "plain";
}

fn write_config(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("node.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn engine_overrides_win_over_the_file_whatever_the_call_order() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write_config(
        tmp.path(),
        "[node]\nshards = 2\nidle_spin_us = 0\nmailbox_capacity = 77\n",
    );
    // Code override first, file second: the override still applies, and the file's other
    // settings too.
    let node = quark::Node::builder()
        .engine(|e| e.shards = ShardSpec::Count(1))
        .config_file(&path)
        .unwrap()
        .register(quark::ActorType::new(|_| Plain))
        .start()
        .unwrap();
    assert_eq!(node.shard_count(), 1);
    assert_eq!(node.config().engine.mailbox_capacity, 77);
    node.shutdown();
    // File first, code second: the same.
    let node = quark::Node::builder()
        .config_file(&path)
        .unwrap()
        .engine(|e| e.shards = ShardSpec::Count(1))
        .register(quark::ActorType::new(|_| Plain))
        .start()
        .unwrap();
    assert_eq!(node.shard_count(), 1);
    assert_eq!(node.config().engine.mailbox_capacity, 77);
    node.shutdown();
    // Several overrides apply in the order given.
    let node = quark::Node::builder()
        .engine(|e| e.mailbox_capacity = 5)
        .config_file(&path)
        .unwrap()
        .engine(|e| e.mailbox_capacity += 1)
        .engine(|e| e.shards = ShardSpec::Count(1))
        .start()
        .unwrap();
    assert_eq!(node.config().engine.mailbox_capacity, 6);
    node.shutdown();
}

#[test]
fn an_unregistered_actor_section_names_the_file_and_the_registered_types() {
    struct Other;
    impl quark::Actor for Other {
        const TYPE_NAME: &'static str = "other";
    }
    let tmp = tempfile::tempdir().unwrap();
    let path = write_config(
        tmp.path(),
        "[node]\nshards = 1\n[actors.plian]\nidle_timeout_ms = 5\n",
    );
    let err = quark::Node::builder()
        .config_file(&path)
        .unwrap()
        .register(quark::ActorType::new(|_| Plain))
        .register(quark::ActorType::new(|_| Other))
        .start()
        .err()
        .expect("a section for an unregistered type is refused");
    match &err {
        quark::NodeError::UnknownActorType {
            name,
            file,
            registered,
        } => {
            assert_eq!(name, "plian");
            assert_eq!(file.as_deref(), Some(path.as_path()));
            assert_eq!(registered, &["plain", "other"]);
        }
        other => panic!("expected UnknownActorType, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.starts_with(&format!("{}: ", path.display())), "{msg}");
    assert!(msg.contains("[actors.plian]"), "{msg}");
    assert!(msg.contains("registered types: plain, other"), "{msg}");
}

#[test]
fn a_secret_variable_that_is_not_set_refuses_the_node() {
    const VAR: &str = "QUARK_CONFIG_TEST_SECRET_NEVER_SET";
    assert!(
        std::env::var_os(VAR).is_none(),
        "{VAR} must not be set for this test"
    );
    let tmp = tempfile::tempdir().unwrap();
    let path = write_config(
        tmp.path(),
        &format!(
            "[cluster]\ncluster_id = \"c\"\nnode_id = 1\nsecret_env = \"{VAR}\"\n\
             [[cluster.nodes]]\nid = 1\naddr = \"127.0.0.1:1\"\n"
        ),
    );
    // Refused when the builder reads the file: the node never starts without its secret (and
    // so never falls back to the loopback-only, secret-less mode).
    let e = quark::Node::builder()
        .config_file(&path)
        .err()
        .expect("an unset secret variable is refused");
    assert_eq!(key_of(&e), Some("cluster.secret_env"), "{e}");
    let msg = e.to_string();
    assert!(msg.contains(VAR) && msg.contains("not set"), "{msg}");
    assert!(msg.starts_with(&path.display().to_string()), "{msg}");
}

#[test]
fn the_file_wins_over_the_journal_policy_given_in_code_whatever_the_call_order() {
    use quark::journal::JournalPolicy;
    use quark::{block_on, Node};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let path = write_config(
        tmp.path(),
        &format!(
            "[node]\nshards = 1\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nsegment_bytes = 1048576\n\
             [actors.account]\nsnapshot_every_events = 4\n",
            data.to_str().unwrap()
        ),
    );
    // Code says "snapshot every 1000 events", the file says 4; registered before the file.
    let node = Node::builder()
        .register_journaled::<common::Account>(JournalPolicy::snapshot_every(1000))
        .config_file(&path)
        .unwrap()
        .start()
        .unwrap();
    for i in 1..=10 {
        block_on(
            node.actor_ref::<common::Account>("k")
                .ask(common::Deposit(i, String::new())),
        )
        .unwrap()
        .unwrap();
    }
    node.shutdown();
    let node = Node::builder()
        .config_file(&path)
        .unwrap()
        .register_journaled::<common::Account>(JournalPolicy::snapshot_every(1000))
        .start()
        .unwrap();
    // Snapshots at versions 4 and 8 (the file's policy): the activation replays 2 events.
    let (balance, applied) =
        block_on(node.actor_ref::<common::Account>("k").ask(common::Get)).unwrap();
    assert_eq!((balance, applied), (55, 2));
    node.shutdown();
}

#[cfg(feature = "otlp")] // the exporter's keys; without the feature see tests/otlp_feature.rs
#[test]
fn the_observability_section_sets_the_otlp_exporter_and_checks_its_keys() {
    let c = NodeConfig::from_toml(
        "[observability]\notlp_endpoint = \"http://collector:4318\"\notlp_sample_ratio = 0.25\n\
         otlp_batch_spans_max = 64\notlp_flush_interval_ms = 250\notlp_queue_spans_max = 100\n\
         otlp_export_timeout_ms = 900\notlp_service_name = \"shop\"\n",
        "o.toml",
    )
    .unwrap();
    let o = c.observability.otlp.expect("an exporter");
    assert_eq!(o.endpoint.url(), "http://collector:4318/v1/traces");
    assert_eq!(o.sample_ratio, 0.25);
    assert_eq!(o.batch_spans_max, 64);
    assert_eq!(o.flush_interval, Duration::from_millis(250));
    assert_eq!(o.queue_spans_max, 100);
    assert_eq!(o.export_timeout, Duration::from_millis(900));
    assert_eq!(o.service_name, "shop");
    assert_eq!(
        NodeConfig::from_toml("", "o.toml")
            .unwrap()
            .observability
            .otlp,
        None
    );
    for (text, key) in [
        (
            "otlp_endpoint = \"https://c:4318\"\n",
            "observability.otlp_endpoint",
        ),
        ("otlp_sample_ratio = 0.5\n", "observability.otlp_endpoint"),
        (
            "otlp_endpoint = \"http://c\"\notlp_sample_ratio = 1.5\n",
            "observability.otlp_sample_ratio",
        ),
        (
            "otlp_endpoint = \"http://c\"\notlp_queue_spans_max = 0\n",
            "observability.otlp_queue_spans_max",
        ),
    ] {
        let e = err(&format!("[observability]\n{text}"));
        assert!(matches!(e, ConfigError::Invalid { .. }), "{text}: {e:?}");
        assert_eq!(key_of(&e), Some(key), "{text}: {e}");
    }
    let e = err("[observability]\nbogus = 1\n");
    assert_eq!(key_of(&e), Some("observability.bogus"), "{e}");
}
