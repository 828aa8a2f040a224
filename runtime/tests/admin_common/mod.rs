//! Types and helpers shared by the admin endpoint's tests: a job type, an event-sourced
//! tally with a projection, and where the external tools (promtool, Chromium) are.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use quark::jobs::Job;
use quark::journal::{
    EventMeta, EventSourced, JournalEvent, Persist, PersistError, Persisted, Projection,
    Subscriptions,
};
use quark::{Actor, ActorKey, Context, Handler, Message};
use serde::{Deserialize, Serialize};

/// A job that does nothing.
#[derive(Serialize, Deserialize)]
pub struct Chore(pub u64);
impl Job for Chore {
    const TYPE_NAME: &'static str = "chore";
}

/// The first of `names` found on `PATH`, or at `fallback`.
fn tool(names: &[&str], fallback: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .chain([PathBuf::from(fallback)])
        .find(|f| f.is_file())
}

/// Prometheus's `promtool` (scripts/promtool.sh installs it).
pub fn promtool() -> Option<PathBuf> {
    tool(&["promtool"], "/usr/bin/promtool")
}

/// Chromium (scripts/chromium.sh installs it).
pub fn chromium() -> Option<PathBuf> {
    tool(&["chromium", "chromium-browser"], "/usr/bin/chromium")
}

/// An event-sourced tally (two events per persist) and a projection summing every tally.
#[derive(Default)]
pub struct Tally(pub i64);
impl Actor for Tally {
    const TYPE_NAME: &'static str = "journal-tally";
}
#[derive(Serialize, Deserialize)]
pub struct Counted(pub i64);
impl JournalEvent for Counted {
    fn type_name(&self) -> &'static str {
        "Counted"
    }
}
impl EventSourced for Tally {
    type Event = Counted;
    type Snapshot = i64;
    fn initial(_: &ActorKey) -> Self {
        Tally(0)
    }
    fn apply(&mut self, e: &Counted) {
        self.0 += e.0;
    }
    fn snapshot(&self) -> i64 {
        self.0
    }
    fn restore(_: &ActorKey, n: i64) -> Self {
        Tally(n)
    }
}
pub struct Count(pub i64);
impl Message for Count {
    type Reply = Result<Persisted, PersistError>;
}
impl Handler<Count> for Tally {
    async fn handle(&mut self, m: Count, ctx: &Context<Self>) -> Result<Persisted, PersistError> {
        // Two events per persist.
        ctx.persist(self, [Counted(m.0), Counted(1)]).await
    }
}
pub struct Sums;
impl Projection for Sums {
    const NAME: &'static str = "sums";
    type State = i64;
    fn subscriptions() -> Subscriptions<Self> {
        Subscriptions::new().on::<Tally>(|s: &mut i64, _: &EventMeta, e: &Counted| *s += e.0)
    }
}

/// `name{labels} value` lines of an exposition, as `(name, labels, value)`.
pub fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (head, value) = l.rsplit_once(' ').expect("name and value");
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (head, ""),
            };
            let labels = labels
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').expect("label=value");
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            (name.to_owned(), labels, value.parse().expect("a number"))
        })
        .collect()
}

/// The value of `name` for `shard` (and `extra` labels).
pub fn value(
    s: &[(String, BTreeMap<String, String>, f64)],
    name: &str,
    shard: u16,
    extra: &[(&str, &str)],
) -> f64 {
    s.iter()
        .find(|(n, l, _)| {
            n == name
                && l.get("shard").map(String::as_str) == Some(&shard.to_string())
                && extra
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no {name} for shard {shard} {extra:?}"))
        .2
}

/// `promtool check metrics` on `text`: no output and a zero exit, or the test fails. Skipped
/// (with a line on stderr) when promtool is not installed, except under `CI=true`.
pub fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let Some(promtool) = promtool() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("promtool is missing under CI=true: run scripts/promtool.sh before the tests");
        }
        eprintln!("SKIPPED the promtool check: promtool is not installed (scripts/promtool.sh installs it)");
        return;
    };
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
