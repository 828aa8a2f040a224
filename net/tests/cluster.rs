//! Cluster logic: membership from TOML, failure detector with a fake clock, backoff bounds.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use quark_net::*;

#[derive(serde::Deserialize)]
struct File {
    cluster: ClusterConfig,
}

fn parse(text: &str) -> Result<Membership, MembershipError> {
    let f: File = toml::from_str(text).expect("test TOML parses");
    Membership::from_config(&f.cluster)
}

#[test]
fn membership_from_toml() {
    let m = parse(
        r#"
        [cluster]
        cluster_id = "prod-eu"
        nodes = [
          { id = 2, addr = "127.0.0.1:7102" },
          { id = 1, addr = "127.0.0.1:7101" },
          { id = 3, addr = "[::1]:7103" },
        ]
        "#,
    )
    .unwrap();
    assert_eq!(m.cluster_id(), "prod-eu");
    assert_eq!(m.len(), 3);
    assert_eq!(
        m.nodes().map(|(id, _)| id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(m.addr(3), Some("[::1]:7103".parse().unwrap()));
    assert_eq!(
        m.peers_of(2).map(|(id, _)| id).collect::<Vec<_>>(),
        vec![1, 3]
    );
    assert!(!m.contains(4));
}

#[test]
fn membership_errors_name_the_entry() {
    let e = parse(
        r#"[cluster]
        cluster_id = "c"
        nodes = [ { id = 1, addr = "127.0.0.1:1" }, { id = 1, addr = "127.0.0.1:2" } ]"#,
    )
    .unwrap_err();
    assert_eq!(
        e,
        MembershipError::DuplicateId {
            id: 1,
            first_index: 0,
            index: 1
        }
    );
    assert!(e.to_string().contains("cluster.nodes[1]"), "{e}");

    let e = parse(
        r#"[cluster]
        cluster_id = "c"
        nodes = [ { id = 1, addr = "127.0.0.1:1" }, { id = 2, addr = "node-b:7100" } ]"#,
    )
    .unwrap_err();
    assert!(
        matches!(&e, MembershipError::BadAddr { index: 1, id: 2, addr, .. } if addr == "node-b:7100")
    );
    assert!(e.to_string().contains("cluster.nodes[1] (node 2)"), "{e}");

    let e = parse(
        r#"[cluster]
        cluster_id = "c"
        nodes = [ { id = 1, addr = "127.0.0.1:7" }, { id = 2, addr = "127.0.0.1:7" } ]"#,
    )
    .unwrap_err();
    assert!(matches!(
        e,
        MembershipError::DuplicateAddr {
            first_index: 0,
            index: 1,
            id: 2,
            ..
        }
    ));

    let e = parse(
        r#"[cluster]
        cluster_id = "c"
        nodes = [ { id = 1, addr = "127.0.0.1:0" } ]"#,
    )
    .unwrap_err();
    assert!(matches!(
        e,
        MembershipError::ZeroPort {
            index: 0,
            id: 1,
            ..
        }
    ));

    assert_eq!(
        parse("[cluster]\ncluster_id = \"c\"\nnodes = []").unwrap_err(),
        MembershipError::NoNodes
    );
    assert!(matches!(
        parse("[cluster]\ncluster_id = \"\"\nnodes = [ { id = 1, addr = \"127.0.0.1:1\" } ]")
            .unwrap_err(),
        MembershipError::BadClusterId { len: 0, .. }
    ));
    // Unknown keys are refused by serde (deny_unknown_fields), with the key's name.
    let r: Result<File, _> = toml::from_str(
        "[cluster]\ncluster_id = \"c\"\nnodes = [ { id = 1, adr = \"127.0.0.1:1\" } ]",
    );
    let msg = r.err().expect("unknown field refused").to_string();
    assert!(msg.contains("adr"), "{msg}");
}

fn det(t0: Instant) -> FailureDetector {
    FailureDetector::new(
        DetectorConfig {
            heartbeat_interval: Duration::from_millis(100),
            suspect_after: Duration::from_millis(300),
            dead_after: Duration::from_millis(1000),
        },
        t0,
    )
}

#[test]
fn detector_alive_suspect_alive_suspect_dead() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut d = det(t0);
    assert_eq!(d.state(), Liveness::Alive);
    assert_eq!(d.tick(at(299)), None);
    let t = d.tick(at(300)).unwrap();
    assert_eq!(
        (t.from, t.to, t.silent_for),
        (
            Liveness::Alive,
            Liveness::Suspect,
            Duration::from_millis(300)
        )
    );
    assert_eq!(d.tick(at(350)), None, "no repeated transition");
    let t = d.on_heard(at(400)).unwrap();
    assert_eq!((t.from, t.to), (Liveness::Suspect, Liveness::Alive));
    assert_eq!(d.on_heard(at(450)), None);
    // Silent from 450 on.
    assert_eq!(d.tick(at(700)), None);
    assert_eq!(d.tick(at(750)).map(|t| t.to), Some(Liveness::Suspect));
    let t = d.tick(at(1450)).unwrap();
    assert_eq!(
        (t.from, t.to, t.silent_for),
        (
            Liveness::Suspect,
            Liveness::Dead,
            Duration::from_millis(1000)
        )
    );
    // Dead is final for the connection.
    assert_eq!(d.on_heard(at(1500)), None);
    assert_eq!(d.tick(at(1501)), None);
    assert_eq!(d.state(), Liveness::Dead);
    assert!(!d.heartbeat_due(at(5000)));
}

#[test]
fn detector_alive_straight_to_dead_when_ticked_late() {
    let t0 = Instant::now();
    let mut d = det(t0);
    let t = d.tick(t0 + Duration::from_secs(5)).unwrap();
    assert_eq!((t.from, t.to), (Liveness::Alive, Liveness::Dead));
}

#[test]
fn detector_heartbeat_schedule_and_clock_going_backwards() {
    let t0 = Instant::now() + Duration::from_secs(10);
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut d = det(t0);
    assert!(!d.heartbeat_due(at(99)));
    assert!(d.heartbeat_due(at(100)));
    assert_eq!(d.next_check(), at(100));
    d.on_sent(at(100));
    assert!(!d.heartbeat_due(at(150)));
    assert_eq!(d.next_check(), at(200));
    // An instant before the last one counts as no time passing.
    assert_eq!(d.on_heard(t0 - Duration::from_secs(1)), None);
    assert_eq!(d.tick(t0 - Duration::from_secs(1)), None);
    assert_eq!(d.state(), Liveness::Alive);
    d.on_heard(at(250));
    d.on_sent(at(260));
    assert_eq!(d.next_check(), at(360));
}

proptest! {
    #[test]
    fn prop_backoff_within_bounds(
        base_ms in 1u64..1000,
        max_ms in 1u64..60_000,
        randoms in prop::collection::vec(any::<u64>(), 1..64),
    ) {
        let cfg = BackoffConfig {
            base: Duration::from_millis(base_ms),
            max: Duration::from_millis(max_ms),
            attempt_count_max: None,
        };
        let mut b = Backoff::new(cfg);
        let mut prev_ceiling = Duration::ZERO;
        for (n, r) in randoms.iter().enumerate() {
            let ceiling = b.ceiling();
            prop_assert!(ceiling >= prev_ceiling, "ceiling never decreases");
            let expect = Duration::from_millis(base_ms)
                .saturating_mul(1u32.checked_shl(n as u32).unwrap_or(u32::MAX))
                .min(cfg.max);
            prop_assert_eq!(ceiling, expect);
            let d = b.next_delay(*r).unwrap();
            prop_assert!(d <= ceiling && d <= cfg.max);
            prev_ceiling = ceiling;
        }
    }
}
