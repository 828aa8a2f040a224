//! [`EdgeSketch`]: a bounded heavy-hitters counter (Space-Saving, Metwally et al. 2005) with
//! exponential decay.

use std::collections::HashMap;
use std::hash::Hash;

/// A Space-Saving top-K counter of weighted keys (actor-to-actor edges in the repartitioner),
/// with exponential decay.
///
/// Bounds and guarantees:
/// - at most `capacity` keys are held, whatever the number of distinct keys added;
/// - a key's reported count never under-estimates its true (decayed) weight while it is held,
///   and over-estimates it by at most its `error` (the count of the key it displaced);
/// - any key whose true weight exceeds `total / capacity` is held (the Space-Saving
///   guarantee), so heavy edges are never lost to a crowd of light ones;
/// - [`EdgeSketch::add`] is `O(log capacity)` (a min-heap over the counts, indexed by key).
///
/// ```
/// use quark_placement::locality::EdgeSketch;
/// let mut s = EdgeSketch::new(2);
/// s.add("a", 5.0);
/// s.add("b", 1.0);
/// s.add("c", 1.0); // displaces "b" (the smallest): count 1 + 1, error 1
/// assert_eq!(s.count(&"a"), Some(5.0));
/// assert_eq!(s.count(&"b"), None);
/// assert_eq!(s.count(&"c"), Some(2.0));
/// s.decay(0.5);
/// assert_eq!(s.count(&"a"), Some(2.5));
/// ```
#[derive(Debug, Clone)]
pub struct EdgeSketch<K> {
    capacity: usize,
    /// A min-heap on `count`.
    heap: Vec<Counter<K>>,
    /// Key -> its index in `heap`.
    index: HashMap<K, usize>,
    /// Sum of every weight added (decayed with the counts).
    total: f64,
}

/// One held key of an [`EdgeSketch`].
#[derive(Debug, Clone, PartialEq)]
pub struct Counter<K> {
    /// The key.
    pub key: K,
    /// Its estimated (decayed) weight: at least the true weight, at most `error` more.
    pub count: f64,
    /// The over-estimation bound (the count inherited from the key it displaced).
    pub error: f64,
}

impl<K: Hash + Eq + Clone> EdgeSketch<K> {
    /// An empty sketch holding at most `capacity` keys (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        EdgeSketch {
            capacity,
            heap: Vec::new(),
            index: HashMap::new(),
            total: 0.0,
        }
    }

    /// The bound on held keys.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// No key held.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The sum of every weight added, decayed as the counts are.
    pub fn total(&self) -> f64 {
        self.total
    }

    /// The estimated weight of `key`, if it is held.
    pub fn count(&self, key: &K) -> Option<f64> {
        self.index.get(key).map(|&i| self.heap[i].count)
    }

    /// Adds `weight` (> 0) to `key`. A key not held takes the place of the smallest counter
    /// when the sketch is full (its count and error start from that counter's count).
    pub fn add(&mut self, key: K, weight: f64) {
        if weight.is_nan() || weight <= 0.0 {
            return;
        }
        self.total += weight;
        if let Some(&i) = self.index.get(&key) {
            self.heap[i].count += weight;
            self.sift_down(i);
            return;
        }
        if self.heap.len() < self.capacity {
            let i = self.heap.len();
            self.index.insert(key.clone(), i);
            self.heap.push(Counter {
                key,
                count: weight,
                error: 0.0,
            });
            self.sift_up(i);
            return;
        }
        let min = self.heap[0].count;
        let old = std::mem::replace(
            &mut self.heap[0],
            Counter {
                key: key.clone(),
                count: min + weight,
                error: min,
            },
        );
        self.index.remove(&old.key);
        self.index.insert(key, 0);
        self.sift_down(0);
    }

    /// Multiplies every count (and the total) by `factor` (in `0..=1`), and forgets the keys
    /// whose count falls below `floor`: the exponential decay of one round.
    pub fn decay_and_trim(&mut self, factor: f64, floor: f64) {
        let factor = factor.clamp(0.0, 1.0);
        self.total *= factor;
        for c in &mut self.heap {
            c.count *= factor;
            c.error *= factor;
        }
        if self.heap.iter().any(|c| c.count < floor) {
            let kept: Vec<Counter<K>> = std::mem::take(&mut self.heap)
                .into_iter()
                .filter(|c| c.count >= floor)
                .collect();
            self.index.clear();
            for c in kept {
                let i = self.heap.len();
                self.index.insert(c.key.clone(), i);
                self.heap.push(c);
                self.sift_up(i);
            }
        }
    }

    /// [`EdgeSketch::decay_and_trim`] without trimming.
    pub fn decay(&mut self, factor: f64) {
        self.decay_and_trim(factor, 0.0);
    }

    /// The held counters, in no particular order.
    pub fn counters(&self) -> impl Iterator<Item = &Counter<K>> {
        self.heap.iter()
    }

    /// Adds every counter of `other` (its estimated counts) into this sketch.
    pub fn merge(&mut self, other: &EdgeSketch<K>) {
        for c in &other.heap {
            self.add(c.key.clone(), c.count);
        }
    }

    /// Empties the sketch.
    pub fn clear(&mut self) {
        self.heap.clear();
        self.index.clear();
        self.total = 0.0;
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        if let Some(x) = self.index.get_mut(&self.heap[a].key) {
            *x = a;
        }
        if let Some(x) = self.index.get_mut(&self.heap[b].key) {
            *x = b;
        }
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let p = (i - 1) / 2;
            if self.heap[i].count < self.heap[p].count {
                self.swap(i, p);
                i = p;
            } else {
                break;
            }
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let l = 2 * i + 1;
            let r = l + 1;
            let mut m = i;
            if l < n && self.heap[l].count < self.heap[m].count {
                m = l;
            }
            if r < n && self.heap[r].count < self.heap[m].count {
                m = r;
            }
            if m == i {
                break;
            }
            self.swap(i, m);
            i = m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heavy_keys_survive_a_crowd_of_light_ones() {
        let mut s = EdgeSketch::new(16);
        // One heavy key (1,000) among 10,000 distinct light keys (1 each): 1,000 is above
        // total / K = 11,000 / 16, so Space-Saving must hold it.
        for i in 0..10_000u32 {
            s.add(i + 1000, 1.0);
            if i % 10 == 0 {
                s.add(7, 1.0);
            }
        }
        assert!(s.len() <= 16);
        let c = s.count(&7).expect("a key above total / K is held");
        assert!(c >= 1000.0, "never under-estimates a held key: {c}");
        let bound = s
            .counters()
            .find(|x| x.key == 7)
            .map(|x| x.error)
            .unwrap_or(0.0);
        assert!(c - bound <= 1000.0 + 1e-9, "over-estimate within its error");
    }

    #[test]
    fn decay_scales_and_trims() {
        let mut s = EdgeSketch::new(4);
        s.add("x", 8.0);
        s.add("y", 1.0);
        s.decay_and_trim(0.5, 1.0);
        assert_eq!(s.count(&"x"), Some(4.0));
        assert_eq!(s.count(&"y"), None, "0.5 is below the floor");
        assert_eq!(s.len(), 1);
        assert!((s.total() - 4.5).abs() < 1e-9);
        s.add("z", 2.0);
        assert_eq!(s.count(&"z"), Some(2.0));
    }

    #[test]
    fn min_heap_displaces_the_smallest() {
        let mut s = EdgeSketch::new(3);
        s.add(1, 10.0);
        s.add(2, 3.0);
        s.add(3, 5.0);
        s.add(4, 1.0); // displaces 2 (count 3): 4 -> 4, error 3
        assert_eq!(s.count(&2), None);
        assert_eq!(s.count(&4), Some(4.0));
        s.add(5, 1.0); // displaces 4 (count 4) -> 5
        assert_eq!(s.count(&4), None);
        assert_eq!(s.count(&5), Some(5.0));
        assert_eq!(s.count(&1), Some(10.0));
    }
}
