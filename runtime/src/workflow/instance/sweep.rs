//! The per-shard instance table (what `Workflows::list` pages through) and the resume sweep
//! every node runs at start: each unfinished instance of the shard is activated, which replays
//! it and launches its pending steps again.

use super::*;

thread_local! {
    /// This shard's instances: id -> (orchestration name, state). Filled at start from the log
    /// and kept current by the instances; read by `Workflows::list`.
    static TABLE: RefCell<BTreeMap<String, (String, InstanceState)>> = const { RefCell::new(BTreeMap::new()) };
}

pub(crate) fn table_set(id: &str, name: &str, state: InstanceState) {
    TABLE.with(|t| {
        t.borrow_mut()
            .insert(id.to_owned(), (name.to_owned(), state))
    });
}

pub(super) fn table_remove(id: &str) {
    TABLE.with(|t| t.borrow_mut().remove(id));
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
            .filter(|(_, (n, s))| state.is_none_or(|x| x == *s) && name.is_none_or(|x| x == n))
            .take(limit)
            .map(|(id, (n, s))| (id.clone(), n.clone(), *s))
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
