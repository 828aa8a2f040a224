//! The `[cluster]` section: the example files, defaults, and errors that name the key.

use std::time::Duration;

use quark::{ConfigError, NodeConfig};

/// The error's whole chain: the message names the file, the source says what is wrong.
fn err(text: &str) -> String {
    let e = NodeConfig::from_toml(text, "c.toml").unwrap_err();
    quark::ErrorChain(&e).to_string()
}

const NODES: &str = "[[cluster.nodes]]\nid = 1\naddr = \"127.0.0.1:7100\"\n\
                     [[cluster.nodes]]\nid = 2\naddr = \"127.0.0.1:7101\"\n";

#[test]
fn example_files_parse() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/examples/");
    let single = NodeConfig::from_file(format!("{dir}cluster-single.toml")).unwrap();
    let c = single.cluster.unwrap();
    assert_eq!(c.net.node_id, 1);
    assert_eq!(
        c.listen,
        "127.0.0.1:7100".parse::<std::net::SocketAddr>().unwrap()
    );
    assert!(c.net.secret.is_none());
    // The 3-node file reads its secret from the environment.
    std::env::set_var("QUARK_CLUSTER_SECRET", "0123456789abcdef0123");
    let three = NodeConfig::from_file(format!("{dir}cluster-3.toml")).unwrap();
    let c = three.cluster.unwrap();
    assert_eq!(c.net.membership.len(), 3);
    assert!(c.net.secret.is_some());
    let d = quark::NetConfig::new(1, quark::PeerRole::Member, c.net.membership.clone());
    assert_eq!(c.net.detector, d.detector);
    assert_eq!(c.net.backoff, d.backoff);
    assert_eq!(c.net.frame_bytes_max, d.frame_bytes_max);
    assert_eq!(c.net.out_bytes_max, d.out_bytes_max);
    assert_eq!(c.net.requests_inflight_max, d.requests_inflight_max);
    assert_eq!(c.net.connect_timeout, d.connect_timeout);
    assert_eq!(c.net.handshake_timeout, d.handshake_timeout);
}

#[test]
fn knobs_are_read() {
    let c = NodeConfig::from_toml(
        &format!(
            "[cluster]\ncluster_id = \"x\"\nnode_id = 2\nlisten = \"127.0.0.1:9000\"\n\
             heartbeat_interval_ms = 10\nsuspect_after_ms = 50\ndead_after_ms = 60\n\
             frame_bytes_max = 65536\n{NODES}"
        ),
        "c.toml",
    )
    .unwrap()
    .cluster
    .unwrap();
    assert_eq!(c.net.node_id, 2);
    assert_eq!(
        c.listen,
        "127.0.0.1:9000".parse::<std::net::SocketAddr>().unwrap()
    );
    assert_eq!(c.net.detector.dead_after, Duration::from_millis(60));
    assert_eq!(c.net.frame_bytes_max, 65536);
}

#[test]
fn bad_values_name_the_key() {
    let base = "[cluster]\ncluster_id = \"x\"\n";
    assert!(err(&format!("{base}node_id = 9\n{NODES}")).contains("cluster.node_id"));
    assert!(
        err(&format!("{base}node_id = 1\nlisten = \"nope\"\n{NODES}")).contains("cluster.listen")
    );
    assert!(
        err(&format!("{base}node_id = 1\nframe_bytes_max = 10\n{NODES}"))
            .contains("cluster.frame_bytes_max")
    );
    assert!(err(&format!(
        "{base}node_id = 1\nheartbeat_interval_ms = 500\nsuspect_after_ms = 100\n{NODES}"
    ))
    .contains("heartbeat_interval_ms < suspect_after_ms"));
    let e = err(&format!("{base}node_id = 1\nsecret = \"short\"\n{NODES}"));
    assert!(
        e.contains("cluster.secret") && e.contains("at least 16"),
        "{e}"
    );
    assert!(!e.contains("short\""), "the secret is never printed: {e}");
    let e = err(&format!(
        "{base}node_id = 1\nsecret_env = \"QUARK_TEST_UNSET_VAR_X\"\n{NODES}"
    ));
    assert!(e.contains("cluster.secret_env"), "{e}");
    let e = err(&format!(
        "{base}node_id = 1\n[[cluster.nodes]]\nid = 1\naddr = \"127.0.0.1:1\"\n\
         [[cluster.nodes]]\nid = 1\naddr = \"127.0.0.1:2\"\n"
    ));
    assert!(e.contains("already used"), "{e}");
    assert!(matches!(
        NodeConfig::from_toml(&format!("{base}node_id = 1\nnodez = 1\n"), "c.toml"),
        Err(ConfigError::Parse { .. })
    ));
}

#[test]
fn no_secret_off_loopback_is_refused_at_start() {
    let c = NodeConfig::from_toml(
        "[cluster]\ncluster_id = \"x\"\nnode_id = 1\nlisten = \"0.0.0.0:0\"\n\
         [[cluster.nodes]]\nid = 1\naddr = \"10.1.2.3:7100\"\n",
        "c.toml",
    )
    .unwrap();
    let e = quark::Node::builder().config(c).start().err().unwrap();
    assert!(e.to_string().contains("without a cluster secret"), "{e}");
}
