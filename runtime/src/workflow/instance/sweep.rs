//! The per-shard instance table (what `Workflows::list` pages through) and the resume sweep
//! every node runs at start: each unfinished instance of the shard is activated, which replays
//! it and launches its pending steps again.

use super::*;

/// One instance in the shard's table.
struct Row {
    name: String,
    state: InstanceState,
    /// Records and bytes of the current run's history, as the activation last knew them (0
    /// until the instance is activated; running instances are active from the start sweep on).
    events: u64,
    bytes: u64,
}

thread_local! {
    /// This shard's instances by id. Filled at start from the log and kept current by the
    /// instances; read by `Workflows::list` and the admin probe.
    static TABLE: RefCell<BTreeMap<String, Row>> = const { RefCell::new(BTreeMap::new()) };
}

pub(crate) fn table_set(id: &str, name: &str, state: InstanceState) {
    TABLE.with(|t| {
        let mut t = t.borrow_mut();
        match t.get_mut(id) {
            Some(r) => {
                name.clone_into(&mut r.name);
                r.state = state;
            }
            None => {
                t.insert(
                    id.to_owned(),
                    Row {
                        name: name.to_owned(),
                        state,
                        events: 0,
                        bytes: 0,
                    },
                );
            }
        }
    });
}

/// Notes the size of the current run's history of `id` (after an append, a load or a
/// `continue_as_new`).
pub(crate) fn table_history(id: &str, events: u64, bytes: u64) {
    TABLE.with(|t| {
        if let Some(r) = t.borrow_mut().get_mut(id) {
            r.events = events;
            r.bytes = bytes;
        }
    });
}

pub(super) fn table_remove(id: &str) {
    TABLE.with(|t| t.borrow_mut().remove(id));
}

/// This shard's instances by state, and the history sizes of its running ones (the admin
/// probe's figures; `quark_workflow_*` on `/metrics`).
pub(crate) fn table_figures() -> crate::workflow::WorkflowFigures {
    TABLE.with(|t| {
        let mut f = crate::workflow::WorkflowFigures::default();
        for r in t.borrow().values() {
            *f.instances.entry(r.state.name().to_owned()).or_default() += 1;
            if r.state == InstanceState::Running {
                f.history_events += r.events;
                f.history_bytes += r.bytes;
                f.history_events_max = f.history_events_max.max(r.events);
                f.history_bytes_max = f.history_bytes_max.max(r.bytes);
            }
        }
        f
    })
}

/// A page of this shard's table: ids above `after`, filtered, at most `limit`.
pub(crate) fn table_page(
    state: Option<InstanceState>,
    name: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> Vec<(String, String, InstanceState)> {
    TABLE.with(|t| {
        let t = t.borrow();
        let range = match after {
            Some(a) => {
                t.range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
            }
            None => t.range::<str, _>(..),
        };
        range
            .filter(|(_, r)| state.is_none_or(|x| x == r.state) && name.is_none_or(|x| x == r.name))
            .take(limit)
            .map(|(id, r)| (id.clone(), r.name.clone(), r.state))
            .collect()
    })
}

/// Activates the instance (the resume sweep at start).
pub(crate) struct ResumeMsg;
impl Message for ResumeMsg {
    type Reply = ();
}
impl Handler<ResumeMsg> for WorkflowInstance {
    async fn handle(&mut self, _: ResumeMsg, _: &Context<Self>) {}
}

/// Reads this shard's instances from the log: fills the table and activates each running one
/// (which replays it and re-launches its pending steps).
pub(crate) async fn resume_shard(engine: quark_shard::EngineHandle) {
    let Some(log) = quark_shard::current_shard_log() else {
        return;
    };
    let keys = log.keys_with_prefix(history::KEY_PREFIX);
    for key in keys {
        let Some(id) = history::instance_of_key(&key) else {
            continue;
        };
        let lsns = log.key_lsns(&key);
        let (Some(first), Some(last)) = (lsns.first(), lsns.last()) else {
            continue;
        };
        let read = |lsn: u64| {
            let log = log.clone();
            async move {
                log.read(lsn)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|r| history::decode(&r.payload).ok())
            }
        };
        let name = match read(*first).await {
            Some(HistoryEvent::Started { name, .. }) => name,
            _ => continue,
        };
        match read(*last).await {
            Some(HistoryEvent::Finished { state, .. }) => table_set(&id, &name, state),
            _ => {
                table_set(&id, &name, InstanceState::Running);
                let r = engine.actor_ref::<WorkflowInstance>(id.clone());
                if let Err(e) = r.tell(ResumeMsg).await {
                    tracing::warn!(instance = %id, error = %e, "resuming a workflow instance failed");
                }
            }
        }
    }
}
