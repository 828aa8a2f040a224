//! The figures the admin endpoint reads on the shards at scrape time (the log's, the job
//! queue's and the outbox's): exported through `/metrics` with the values the features report
//! themselves, checked by `promtool check metrics`, documented in docs/OPERATIONS.md, and
//! served as JSON by `/quark/shards`.

use std::path::PathBuf;
use std::time::Duration;

use quark::admin::{fetch, ShardsReport};
use quark::jobs::{JobContext, JobOptions, JobState, JobTypeConfig};
use quark::journal::{JournalPolicy, ProjectionConfig};
use quark::{block_on, AdminConfig, Node, NodeConfig};

mod outbox_common;
use outbox_common::*;

mod admin_common;
use admin_common::{samples, value, Chore, Count, Sums, Tally};

const T: Duration = Duration::from_secs(5);

#[test]
fn log_jobs_and_outbox_figures_are_exported_as_the_features_report_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.admin = Some(AdminConfig::new("127.0.0.1:0".parse().unwrap()));
    let node = Node::builder()
        .config(cfg)
        .register(quark::outbox::durable_state::<Account>())
        .outbox(fast_retries())
        .durable::<Account, Credit>()
        .register_job::<Chore, _, _>(
            JobTypeConfig::default(),
            |_: Chore, _: JobContext| async move { Ok(()) },
        )
        .start()
        .unwrap();
    // Three durable credits across shards, delivered.
    let (a, b) = cross_shard_pair(&node, 10);
    block_on(node.actor_ref::<Account>(a).ask(Transfer {
        to: b,
        amount: 5,
        count: 3,
        panic_before_commit: false,
    }))
    .unwrap()
    .unwrap();
    eventually("3 credits delivered", T, || {
        (stats_sum(&node).delivered == 3 && stats_sum(&node).pending == 0).then_some(())
    });
    // Two jobs completed.
    let jobs = node.jobs();
    for n in 0..2 {
        let id = block_on(jobs.enqueue(&Chore(n), JobOptions::default())).unwrap();
        assert_eq!(block_on(jobs.wait(id)).unwrap().state, JobState::Completed);
    }
    let addr = node.admin_addr().unwrap();
    // The outbox writes its acknowledgements (and the jobs their last records) a moment after
    // the figures above move: compare a scrape with the node's own figures once the logs
    // are quiet (a scrape whose log figures match the stats read just after it).
    let (s, shards, text) = eventually("a scrape of quiet logs", T, || {
        let r = fetch(addr, "/metrics", T).unwrap();
        assert_eq!(r.status, 200);
        let s = samples(&r.body);
        let shards = node.stats().unwrap();
        let quiet = shards.iter().all(|st| {
            let sh = st.shard;
            st.log_next_lsn.map(|n| n as f64) == Some(value(&s, "quark_log_next_lsn", sh, &[]))
                && value(&s, "quark_log_unacked_lsns", sh, &[]) == 0.0
        });
        quiet.then_some((s, shards, r.body))
    });
    let outbox: Vec<_> = block_on(quark::outbox::Outbox::new(node.handle()).stats()).unwrap();
    let counts = block_on(jobs.counts()).unwrap();
    let mut completed = 0.0;
    for st in &shards {
        let sh = st.shard;
        // The outbox: the dispatcher's own counters (nothing moves now: all delivered).
        let o = outbox.iter().find(|o| o.shard == sh).unwrap();
        assert_eq!(
            value(&s, "quark_outbox_delivered_total", sh, &[]),
            o.delivered as f64
        );
        assert_eq!(value(&s, "quark_outbox_pending", sh, &[]), 0.0);
        assert_eq!(
            value(&s, "quark_outbox_retries_total", sh, &[]),
            o.retries as f64
        );
        completed += value(&s, "quark_jobs", sh, &[("state", "completed")]);
        // The log: a fresh log starts at LSN 1, every record appended got one LSN.
        let next = st.log_next_lsn.expect("a log") as f64;
        assert_eq!(value(&s, "quark_log_next_lsn", sh, &[]), next);
        assert_eq!(
            value(&s, "quark_log_appended_records_total", sh, &[]),
            next - 1.0,
            "records appended on shard {sh}"
        );
        let appends = value(&s, "quark_log_appends_total", sh, &[]);
        assert!(appends > 0.0);
        assert!(value(&s, "quark_log_appended_bytes_total", sh, &[]) > appends);
        // Nothing waits for a flush now: every appended byte and batch was written.
        assert_eq!(value(&s, "quark_log_unacked_lsns", sh, &[]), 0.0);
        assert_eq!(
            value(&s, "quark_log_flushed_bytes_total", sh, &[]),
            value(&s, "quark_log_appended_bytes_total", sh, &[])
        );
        // The group-commit histogram: one sample per flush, summing to the batches written.
        let flushes = value(&s, "quark_log_flushes_total", sh, &[]);
        assert!(flushes > 0.0);
        assert_eq!(
            value(&s, "quark_log_group_commit_batches_count", sh, &[]),
            flushes
        );
        assert_eq!(
            value(&s, "quark_log_group_commit_batches_sum", sh, &[]),
            appends
        );
        assert_eq!(
            value(
                &s,
                "quark_log_group_commit_batches_bucket",
                sh,
                &[("le", "+Inf")]
            ),
            flushes
        );
        let recovery = value(&s, "quark_log_recovery_seconds", sh, &[]);
        assert!(recovery > 0.0 && recovery < 10.0, "{recovery}");
    }
    assert_eq!(
        completed,
        counts.get(&JobState::Completed).copied().unwrap_or(0) as f64
    );
    assert_eq!(completed, 2.0);
    assert!(text.contains("quark_admin_probe_failed 0"), "{text}");

    // The same figures as JSON, for the dashboard.
    // (Compared with the node's figures read just after it, once they agree on the log: the
    // outbox may still write an acknowledgement batch between two reads.)
    let (report, shards) = eventually("a /quark/shards of quiet logs", T, || {
        let r = fetch(addr, "/quark/shards", T).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type, "application/json");
        let report: ShardsReport = serde_json::from_str(&r.body).unwrap();
        let shards = node.stats().unwrap();
        let quiet = report.shards.len() == shards.len()
            && report
                .shards
                .iter()
                .zip(&shards)
                .all(|(l, st)| l.log.as_ref().map(|x| x.next_lsn) == st.log_next_lsn);
        quiet.then_some((report, shards))
    });
    assert_eq!(report.error, None);
    assert_eq!(report.shards.len(), shards.len());
    for (l, st) in report.shards.iter().zip(&shards) {
        assert_eq!(l.shard, st.shard);
        assert_eq!(l.live_activations, st.live_activations);
        let log = l.log.as_ref().expect("a log");
        assert_eq!(Some(log.next_lsn), st.log_next_lsn);
        let o = outbox.iter().find(|o| o.shard == st.shard).unwrap();
        assert_eq!(l.outbox.as_ref().map(|x| x.delivered), Some(o.delivered));
        assert!(l.jobs.as_ref().is_some_and(|j| j.contains_key("completed")));
    }
    node.shutdown();

    // Every exported metric is documented.
    let doc = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/OPERATIONS.md"),
    )
    .unwrap();
    for name in text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
    {
        assert!(
            doc.contains(&format!("`{name}`")),
            "{name} is not in docs/OPERATIONS.md"
        );
    }

    admin_common::promtool_check_metrics(&text);
}

#[test]
fn journal_persists_snapshots_and_projection_lag_are_exported() {
    const KEYS: u64 = 7;
    const ROUNDS: u64 = 5;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[node]\nshards = 2\npin_threads = false\nidle_spin_us = 0\n\
         [log]\ndata_dir = {:?}\nfsync = \"never\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        dir.path().to_str().unwrap()
    );
    let node = Node::builder()
        .config(NodeConfig::from_toml(&text, "journal.toml").unwrap())
        .register_journaled::<Tally>(JournalPolicy::snapshot_every(4))
        .register_projection::<Sums>(ProjectionConfig::default())
        .start()
        .unwrap();
    let sums = node.projection::<Sums>();
    let mut last = Vec::new();
    for round in 0..ROUNDS {
        for key in 0..KEYS {
            let p = block_on(node.actor_ref::<Tally>(key).ask(Count(round as i64)))
                .unwrap()
                .unwrap();
            last.push(p.position);
        }
    }
    for p in &last {
        block_on(sums.wait_for(*p, T)).unwrap();
    }
    let addr = node.admin_addr().unwrap();
    let shards = node.shard_count();
    // Every persist and event counted once, on the shard that wrote it.
    let text = fetch(addr, "/metrics", T).unwrap().body;
    let s = samples(&text);
    let total = |name: &str| -> f64 { (0..shards).map(|sh| value(&s, name, sh, &[])).sum() };
    assert_eq!(
        total("quark_journal_persists_total"),
        (KEYS * ROUNDS) as f64
    );
    assert_eq!(
        total("quark_journal_events_total"),
        (2 * KEYS * ROUNDS) as f64
    );
    let snapshots = total("quark_journal_snapshots_total");
    assert!(
        snapshots > 0.0 && snapshots < (KEYS * ROUNDS) as f64,
        "snapshot_every(4): some persists carry a snapshot, not all ({snapshots})"
    );
    // The projection has everything: its feeders catch up with the log tail on every shard
    // (the projection's own checkpoint records are in the log too, so the lag reaches 0 once
    // the feeders have delivered them as well).
    eventually("the projection lag to reach 0 on every shard", T, || {
        let s = samples(&fetch(addr, "/metrics", T).ok()?.body);
        (0..shards)
            .all(|sh| {
                value(
                    &s,
                    "quark_projection_lag_lsns",
                    sh,
                    &[("projection", "sums")],
                ) == 0.0
            })
            .then_some(())
    });
    let report: ShardsReport =
        serde_json::from_str(&fetch(addr, "/quark/shards", T).unwrap().body).unwrap();
    // Counted on the shard of each tally: ROUNDS persists per key it owns.
    for l in &report.shards {
        let owned = (0..KEYS)
            .filter(|&k| node.actor_ref::<Tally>(k).owner_shard() == l.shard)
            .count() as u64;
        assert_eq!(
            l.journal.as_ref().unwrap().persists,
            owned * ROUNDS,
            "shard {}",
            l.shard
        );
    }
    let persists: u64 = report
        .shards
        .iter()
        .map(|l| l.journal.as_ref().expect("a log").persists)
        .sum();
    assert_eq!(persists, KEYS * ROUNDS);
    assert!(report.shards.iter().all(|l| l
        .journal
        .as_ref()
        .unwrap()
        .projection_lag
        .contains_key("sums")));
    node.shutdown();
}
