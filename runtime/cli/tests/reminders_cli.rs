//! `quark reminders list` (every actor, cluster-wide, by type, in pages) and `quark reminders
//! cancel` against a running two-node cluster, through one node's admin endpoint.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "../../tests/ports/mod.rs"]
mod ports;

use quark::admin::{ActorReminders, RemindersPage};
use quark::reminders::{self, Reminder, ReminderError, ReminderTick};
use quark::{block_on, Actor, ActorType, Context, Handler, Message, Node, NodeConfig};

fn quark(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_quark"))
        .args(args)
        .output()
        .expect("run the quark binary")
}

struct Alarm;
impl Actor for Alarm {
    const TYPE_NAME: &'static str = "alarm";
}
struct Timer;
impl Actor for Timer {
    const TYPE_NAME: &'static str = "timer";
}

/// Registers reminder `name`: every hour if `periodic`, else once in an hour.
#[derive(quark::rkyv::Archive, quark::rkyv::Serialize, quark::rkyv::Deserialize)]
#[rkyv(crate = quark::rkyv)]
struct Set(String, bool);
impl Message for Set {
    type Reply = Result<(), String>;
}
impl quark::WireMessage for Set {
    const WIRE_NAME: &'static str = "test.reminders.Set";
}

async fn set<A: Handler<ReminderTick>>(m: Set, ctx: &Context<A>) -> Result<(), String> {
    let hour = Duration::from_secs(3600);
    let r = if m.1 {
        Reminder::every(hour)
    } else {
        Reminder::once(hour)
    };
    reminders::register(ctx, &m.0, r)
        .await
        .map_err(|e: ReminderError| e.to_string())
}
impl Handler<Set> for Alarm {
    async fn handle(&mut self, m: Set, ctx: &Context<Self>) -> Result<(), String> {
        set(m, ctx).await
    }
}
impl Handler<ReminderTick> for Alarm {
    async fn handle(&mut self, _: ReminderTick, _: &Context<Self>) {}
}
impl Handler<Set> for Timer {
    async fn handle(&mut self, m: Set, ctx: &Context<Self>) -> Result<(), String> {
        set(m, ctx).await
    }
}
impl Handler<ReminderTick> for Timer {
    async fn handle(&mut self, _: ReminderTick, _: &Context<Self>) {}
}

fn node(id: u64, nodes_toml: &str, dir: &std::path::Path) -> Node {
    let text = format!(
        "[node]\nshards = 2\nidle_spin_us = 0\npin_threads = false\n\
         [log]\ndata_dir = {:?}\nsegment_bytes = 1048576\nfsync = \"never\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [cluster]\ncluster_id = \"rem\"\nnode_id = {id}\n{nodes_toml}",
        dir.to_str().expect("UTF-8 temp dir")
    );
    Node::builder()
        .config(NodeConfig::from_toml(&text, "t.toml").unwrap())
        .register(ActorType::new(|_| Alarm))
        .register(ActorType::new(|_| Timer))
        .register_reminders::<Alarm>()
        .register_reminders::<Timer>()
        .remote::<Alarm, Set>()
        .remote::<Timer, Set>()
        .start()
        .unwrap()
}

/// Runs `quark reminders ARGS --json`, expects success, parses the JSON.
fn json<T: serde::de::DeserializeOwned>(args: &[&str]) -> T {
    let mut all = args.to_vec();
    all.push("--json");
    let out = quark(&all);
    assert!(
        out.status.success(),
        "quark {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every page of the cluster-wide listing (`extra`: filters), in pages of `limit`.
fn all_pages(addr: &str, extra: &[&str], limit: u32) -> (Vec<(u64, String, String)>, usize) {
    let mut got = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let limit = limit.to_string();
        let mut args = vec!["reminders", "list", "--addr", addr, "--limit", &limit];
        args.extend_from_slice(extra);
        if let Some(c) = &cursor {
            args.extend_from_slice(&["--cursor", c]);
        }
        let page: RemindersPage = json(&args);
        pages += 1;
        assert!(page.reminders.len() <= limit.parse::<usize>().unwrap());
        got.extend(
            page.reminders
                .into_iter()
                .map(|r| (r.node, r.actor, r.name)),
        );
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return (got, pages),
        }
        assert!(pages < 100, "paging does not end");
    }
}

#[test]
fn reminders_are_listed_across_the_cluster_and_cancelled_online() {
    let addrs = ports::free_addrs(2);
    let nodes_toml: String = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("[[cluster.nodes]]\nid = {}\naddr = \"{a}\"\n", i + 1))
        .collect();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let n1 = node(1, &nodes_toml, dirs[0].path());
    let n2 = node(2, &nodes_toml, dirs[1].path());
    // 12 alarms with two reminders each and 5 timers with one, placed over both nodes.
    let mut expected: BTreeSet<(u64, String, String)> = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    for k in 0..12u64 {
        let r = n1.actor_ref::<Alarm>(k);
        let owner = r.remote_node().unwrap_or(1);
        for name in ["ping", "bill"] {
            // The link to node 2 comes up in the background: retry until then.
            loop {
                match block_on(r.ask(Set(name.into(), true))) {
                    Ok(res) => break res.unwrap(),
                    Err(e) => assert!(Instant::now() < deadline, "node 2 unreachable: {e}"),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            expected.insert((owner, format!("alarm/{k}"), name.to_owned()));
        }
    }
    for k in 0..5u64 {
        let r = n2.actor_ref::<Timer>(k);
        let owner = r.remote_node().unwrap_or(2);
        block_on(r.ask(Set("t".into(), false))).unwrap().unwrap();
        expected.insert((owner, format!("timer/{k}"), "t".to_owned()));
    }
    let owners: BTreeSet<u64> = expected.iter().map(|(n, _, _)| *n).collect();
    assert_eq!(owners.len(), 2, "the actors are spread over both nodes");
    let a1 = n1.admin_addr().unwrap().to_string();
    let a2 = n2.admin_addr().unwrap().to_string();

    // Every reminder of the cluster, once, through either node, in pages of 5.
    for addr in [&a1, &a2] {
        let (got, pages) = all_pages(addr, &[], 5);
        let set: BTreeSet<_> = got.iter().cloned().collect();
        assert_eq!(set.len(), got.len(), "no reminder twice: {got:?}");
        assert_eq!(set, expected);
        assert_eq!(pages, 29usize.div_ceil(5), "29 reminders in pages of 5");
    }
    // By type.
    let (timers, _) = all_pages(&a1, &["--type", "timer"], 2);
    let want: BTreeSet<_> = expected
        .iter()
        .filter(|(_, a, _)| a.starts_with("timer/"))
        .cloned()
        .collect();
    assert_eq!(timers.into_iter().collect::<BTreeSet<_>>(), want);
    // The table form names the next page.
    let out = quark(&["reminders", "list", "--addr", &a1, "--limit", "3"]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with(" NODE ACTOR"), "{table}");
    assert!(
        table
            .lines()
            .last()
            .unwrap()
            .starts_with("3 reminders; next page: --cursor "),
        "{table}"
    );

    // Cancel through node 2's endpoint an alarm that node 1 stores, and one node 2 stores.
    for owner in [1u64, 2] {
        let (_, actor, _) = expected
            .iter()
            .find(|(n, a, name)| *n == owner && a.starts_with("alarm/") && name == "ping")
            .cloned()
            .expect("an alarm on each node");
        let out = quark(&[
            "reminders",
            "cancel",
            "--actor",
            &actor,
            "--name",
            "ping",
            "--addr",
            &a2,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("{actor}: reminder \"ping\" cancelled\n")
        );
        // Its owner lists only the other reminder now.
        let owner_addr = if owner == 1 { &a1 } else { &a2 };
        let v: ActorReminders =
            json(&["reminders", "list", "--actor", &actor, "--addr", owner_addr]);
        let names: Vec<&str> = v.reminders.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["bill"]);
        expected.remove(&(owner, actor.clone(), "ping".to_owned()));
        // Again: nothing to cancel.
        let out = quark(&[
            "reminders",
            "cancel",
            "--actor",
            &actor,
            "--name",
            "ping",
            "--addr",
            &a1,
        ]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("has no reminder named \"ping\"") && err.contains("HTTP 404"),
            "{err}"
        );
    }
    let (got, _) = all_pages(&a1, &[], 1000);
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), expected);

    // Bad input: a type not registered for reminders, a bad cursor, a bad limit.
    let out = quark(&[
        "reminders",
        "cancel",
        "--actor",
        "mail/1",
        "--name",
        "x",
        "--addr",
        &a1,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not registered for reminders"));
    let out = quark(&["reminders", "list", "--addr", &a1, "--cursor", "nonsense"]);
    assert_eq!(out.status.code(), Some(2));
    let out = quark(&["reminders", "list", "--addr", &a1, "--limit", "0"]);
    assert_eq!(out.status.code(), Some(2));
    n1.shutdown();
    n2.shutdown();
}
