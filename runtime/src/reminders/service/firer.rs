//! The firer task: pops due occurrences and delivers their ticks as turns.

use super::*;

impl Service {
    pub(super) async fn run_firer(self: Rc<Self>) {
        let mut inflight: FuturesUnordered<Delivery> = FuturesUnordered::new();
        let max = self.shared.config.ticks_inflight_max;
        let timeout = self.shared.config.tick_timeout;
        loop {
            if self.st.borrow().stopped || !self.engine.is_running() {
                return;
            }
            let now_us = wall_us();
            let now = now_us / 1000;
            let mut next_due = None;
            {
                let mut st = self.st.borrow_mut();
                while inflight.len() < max {
                    let Some((&(due, rid), _)) = st.heap.first_key_value() else {
                        break;
                    };
                    if due > now {
                        next_due = Some(due);
                        break;
                    }
                    let slot = st
                        .heap
                        .remove(&(due, rid))
                        .expect("invariant: the first key is in the heap");
                    let b = st.bucket(due);
                    let mut missed = 0;
                    if let Some(periods) = (now - due).checked_div(slot.period_ms) {
                        let k = periods + 1;
                        missed = k - 1;
                        let next = Slot {
                            due_ms: due + k * slot.period_ms,
                            ..slot.clone()
                        };
                        let nb = st.bucket(next.due_ms);
                        st.live.insert(rid, next.due_ms);
                        if nb != b {
                            st.crossings.entry(b).or_default().push(next.clone());
                        }
                        if nb < st.loaded_to {
                            let nd = next.due_ms;
                            *st.pending.entry(nb).or_default() += 1;
                            st.heap.insert((nd, rid), next);
                        }
                    } else {
                        st.live.remove(&rid);
                    }
                    let tick = ReminderTick {
                        name: slot.name,
                        due_ms: due,
                        fired_ms: now,
                        period_ms: slot.period_ms,
                        missed,
                    };
                    let (type_name, key) = match crate::outbox::format::decode_actor(&slot.actor) {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(shard = self.shard, error = %e, "a reminder's actor does not decode; dropped");
                            st.counters.undeliverable += 1;
                            let _ = st.unpend(b);
                            continue;
                        }
                    };
                    let Some(deliver) = self.shared.deliver.get(&type_name) else {
                        tracing::warn!(shard = self.shard, actor_type = %type_name, "a reminder's actor type is not registered for reminders; tick dropped");
                        st.counters.undeliverable += 1;
                        let _ = st.unpend(b);
                        continue;
                    };
                    let fut = deliver(self.engine.clone(), key, tick, timeout);
                    inflight.push(Box::pin(async move {
                        let r = fut.await;
                        if let Err(e) = &r {
                            if !matches!(e, CallError::ShuttingDown { .. }) {
                                tracing::warn!(error = %e, "a reminder tick's turn failed");
                            }
                        }
                        (b, r.is_ok())
                    }));
                }
            }
            let wait = match next_due {
                // To the µs: the timer rounds up to its next millisecond tick, so a tick fires
                // within that millisecond instead of a whole one later.
                Some(t) => {
                    Duration::from_micros((t * 1000).saturating_sub(now_us).max(1)).min(IDLE_POLL)
                }
                None => IDLE_POLL,
            };
            let sleep = Box::pin(quark_shard::sleep(wait));
            let wake = Box::pin(self.firer.wait());
            let done = if inflight.is_empty() {
                let _ = select(wake, sleep).await;
                None
            } else {
                match select(inflight.next(), select(wake, sleep)).await {
                    Either::Left((d, _)) => d,
                    Either::Right(_) => None,
                }
            };
            let mut finished: Vec<(u64, bool)> = done.into_iter().collect();
            while let Some(Some(d)) = futures::FutureExt::now_or_never(inflight.next()) {
                finished.push(d);
            }
            if !finished.is_empty() {
                let mut st = self.st.borrow_mut();
                let mut emptied = false;
                for (b, ok) in finished {
                    if ok {
                        st.counters.fired += 1;
                    } else {
                        st.counters.failed += 1;
                    }
                    emptied |= st.unpend(b);
                }
                drop(st);
                if emptied {
                    self.wake_writer();
                }
            }
        }
    }
}
