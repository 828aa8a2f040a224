//! The locality repartitioner on the admin endpoint (docs/LOCALITY.md, docs/OPERATIONS.md):
//! the `locality` part of `/quark/load` (its counters and the last round's heaviest actor
//! pairs, for the dashboard) and its `/metrics` counters. Read from the repartitioner's own
//! state at request time; nothing is computed for it otherwise.

use std::sync::Arc;

use prometheus::proto::{Metric, MetricFamily, MetricType};
use serde::{Deserialize, Serialize};

use super::load::{counter, gauge, label};
use crate::LocalityStats;

/// Reads the repartitioner's counters (a clone of its state's).
pub(crate) type LocalityReader = Arc<dyn Fn() -> LocalityStats + Send + Sync>;

/// The repartitioner in [`super::LoadReport::locality`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LocalityLoad {
    /// Rounds run since the node started.
    pub rounds: u64,
    /// Moves made.
    pub moves: u64,
    /// Moves the engine refused.
    pub moves_failed: u64,
    /// Moves left out because another mover had moved the actor within the cooldown.
    pub moves_skipped_cooldown: u64,
    /// Moves left out because the destination shard was at its memory warning level.
    pub moves_skipped_memory: u64,
    /// The last round's number (0 before the first).
    pub last_round: u64,
    /// Moves the last round made or tried.
    pub last_round_moves: usize,
    /// Expected cross-shard messages the last round's moves save (the sum of their
    /// `saved_cross_shard`, successful moves only).
    pub last_round_saved: f64,
    /// The last round's heaviest actor-to-actor edges, heaviest first.
    pub top_pairs: Vec<PairLoad>,
}

/// One actor pair in [`LocalityLoad::top_pairs`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PairLoad {
    /// The sender, `type/key`.
    pub from: String,
    /// The receiver, `type/key`.
    pub to: String,
    /// Estimated messages (see `quark::LocalityPair::messages_est`).
    pub messages_est: f64,
    /// The sender's shard when the round looked (`None`: not on this node or not active).
    pub from_shard: Option<u16>,
    /// The receiver's shard, as `from_shard`.
    pub to_shard: Option<u16>,
    /// Both ends on this node, on different shards: the traffic crosses shards.
    pub crossing: bool,
}

impl LocalityLoad {
    /// The dashboard's view of `s`.
    pub(crate) fn of(s: &LocalityStats) -> LocalityLoad {
        let last = s.last_round.as_ref();
        LocalityLoad {
            rounds: s.rounds,
            moves: s.moves,
            moves_failed: s.moves_failed,
            moves_skipped_cooldown: s.moves_skipped_cooldown,
            moves_skipped_memory: s.moves_skipped_memory,
            last_round: last.map_or(0, |r| r.round),
            last_round_moves: last.map_or(0, |r| r.moves.len()),
            last_round_saved: last.map_or(0.0, |r| {
                r.moves
                    .iter()
                    .filter(|m| m.error.is_none())
                    .map(|m| m.saved_cross_shard)
                    .sum()
            }),
            top_pairs: last
                .map(|r| {
                    r.top_pairs
                        .iter()
                        .map(|p| PairLoad {
                            from: p.from.to_string(),
                            to: p.to.to_string(),
                            messages_est: p.messages_est,
                            from_shard: p.from_shard,
                            to_shard: p.to_shard,
                            crossing: matches!((p.from_shard, p.to_shard), (Some(a), Some(b)) if a != b),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// The metrics of this module: `(name, type, help)`; documented in `docs/OPERATIONS.md`.
pub const LOCALITY_METRICS: &[(&str, MetricType, &str)] = &[
    ("quark_locality_rounds_total", MetricType::COUNTER, "Locality repartitioning rounds run since the node started (docs/LOCALITY.md). Unit: rounds."),
    ("quark_locality_moves_total", MetricType::COUNTER, "Moves the locality rounds decided, label result: moved, failed (the engine refused), skipped_cooldown (another mover moved the actor recently) or skipped_memory (the destination shard was at its memory warning level). Unit: moves."),
    ("quark_locality_pair_messages", MetricType::GAUGE, "Estimated messages between the heaviest actor pairs of the last round (labels from and to, type/key; at most 20 pairs), decayed by half each round. Unit: messages."),
];

fn family(name: &str, metrics: Vec<Metric>) -> Option<MetricFamily> {
    super::load::family_of(LOCALITY_METRICS, name, metrics)
}

/// The `/metrics` families of `s`.
pub(crate) fn families(s: &LocalityStats) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    out.extend(family(
        "quark_locality_rounds_total",
        vec![counter(vec![], s.rounds)],
    ));
    out.extend(family(
        "quark_locality_moves_total",
        vec![
            counter(vec![label("result", "moved")], s.moves),
            counter(vec![label("result", "failed")], s.moves_failed),
            counter(
                vec![label("result", "skipped_cooldown")],
                s.moves_skipped_cooldown,
            ),
            counter(
                vec![label("result", "skipped_memory")],
                s.moves_skipped_memory,
            ),
        ],
    ));
    let pairs = s
        .last_round
        .as_ref()
        .map(|r| {
            r.top_pairs
                .iter()
                .map(|p| {
                    gauge(
                        vec![
                            label("from", p.from.to_string()),
                            label("to", p.to.to_string()),
                        ],
                        p.messages_est,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.extend(family("quark_locality_pair_messages", pairs));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LocalityMove, LocalityPair, LocalityRound};
    use quark_shard::ActorId;

    fn stats() -> LocalityStats {
        LocalityStats {
            rounds: 4,
            moves: 3,
            moves_failed: 1,
            moves_skipped_cooldown: 2,
            moves_skipped_memory: 5,
            last_round: Some(LocalityRound {
                round: 4,
                moves: vec![LocalityMove {
                    actor: ActorId::new("order", 1u64),
                    from: 0,
                    to: 1,
                    saved_cross_shard: 128.0,
                    error: None,
                }],
                top_pairs: vec![
                    LocalityPair {
                        from: ActorId::new("order", 1u64),
                        to: ActorId::new("stock", 2u64),
                        messages_est: 640.0,
                        from_shard: Some(0),
                        to_shard: Some(1),
                    },
                    LocalityPair {
                        from: ActorId::new("order", 3u64),
                        to: ActorId::new("stock", 4u64),
                        messages_est: 64.0,
                        from_shard: Some(1),
                        to_shard: Some(1),
                    },
                ],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn the_dashboard_view_has_the_pairs_and_which_cross_shards() {
        let l = LocalityLoad::of(&stats());
        assert_eq!((l.rounds, l.moves, l.last_round), (4, 3, 4));
        assert_eq!(l.last_round_saved, 128.0);
        assert_eq!(l.top_pairs.len(), 2);
        assert_eq!(l.top_pairs[0].from, "order/1");
        assert_eq!(l.top_pairs[0].to, "stock/2");
        assert!(l.top_pairs[0].crossing);
        assert!(!l.top_pairs[1].crossing);
    }

    #[test]
    fn counters_and_pairs_are_exported() {
        use prometheus::Encoder;
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&families(&stats()), &mut out)
            .unwrap();
        let t = String::from_utf8(out).unwrap();
        for needle in [
            "quark_locality_rounds_total 4",
            "quark_locality_moves_total{result=\"moved\"} 3",
            "quark_locality_moves_total{result=\"failed\"} 1",
            "quark_locality_moves_total{result=\"skipped_cooldown\"} 2",
            "quark_locality_moves_total{result=\"skipped_memory\"} 5",
            "quark_locality_pair_messages{from=\"order/1\",to=\"stock/2\"} 640",
        ] {
            assert!(t.contains(needle), "missing {needle:?} in\n{t}");
        }
    }
}
