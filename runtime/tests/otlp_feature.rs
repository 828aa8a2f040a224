//! The `otlp` cargo feature and `[observability]`: a build with the feature starts the
//! exporter the config asks for; a build without it refuses the config at start, naming the
//! feature (never ignoring the key). `cargo test --workspace` builds `quark` with the feature
//! (`quark-cli` enables it); `cargo test -p quark --test otlp_feature` runs the build without.

use quark::NodeConfig;

const TEXT: &str = "[node]\nshards = 1\npin_threads = false\nidle_spin_us = 0\n\
                    [observability]\notlp_endpoint = \"http://127.0.0.1:9/v1/traces\"\n";

#[cfg(feature = "otlp")]
#[test]
fn with_the_feature_otlp_endpoint_starts_the_exporter() {
    struct A;
    impl quark::Actor for A {
        const TYPE_NAME: &'static str = "a";
    }
    let config = NodeConfig::from_toml(TEXT, "quark.toml").expect("accepted with the feature");
    assert!(config.observability.otlp.is_some());
    let node = quark::Node::builder()
        .config(config)
        .register(quark::ActorType::new(|_| A))
        .start()
        .expect("the node starts");
    assert!(node.otlp_stats().is_some(), "the exporter runs");
    node.shutdown();
}

#[cfg(not(feature = "otlp"))]
#[test]
fn without_the_feature_otlp_endpoint_is_a_start_error_naming_the_feature() {
    let e = NodeConfig::from_toml(TEXT, "quark.toml")
        .expect_err("refused without the feature")
        .to_string();
    assert!(e.contains("quark.toml"), "{e}");
    assert!(e.contains("observability.otlp_endpoint"), "{e}");
    assert!(e.contains("cargo feature `otlp`"), "{e}");
    // Without any otlp_* key the section is accepted.
    NodeConfig::from_toml("[observability]\n", "quark.toml").expect("an empty section");
}
