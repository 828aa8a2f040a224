//! `Journal::erase` says how far it got: not run, append failed, or erased but not scrubbed,
//! each with its source error.

use quark::journal::{EraseError, JournalError, JournalPolicy};
use quark::{block_on, Node, NodeConfig};

mod common;
use common::Account;

#[test]
fn erase_without_a_log_is_not_run_and_names_the_actor() {
    let config = NodeConfig::from_toml("[node]\nshards = 1\nidle_spin_us = 0\n", "test.toml")
        .expect("config");
    let node = Node::builder()
        .config(config)
        .register_journaled::<Account>(JournalPolicy::default())
        .start()
        .expect("node starts");
    let err = block_on(node.journal().erase::<Account>("ann")).expect_err("no log to erase in");
    assert!(
        matches!(
            &err,
            EraseError::NotRun {
                source: JournalError::NoLog,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_erased());
    assert_eq!(err.actor().to_string(), "account/ann");
    assert!(
        std::error::Error::source(&err).is_some(),
        "the cause is attached"
    );
    node.shutdown();
}
