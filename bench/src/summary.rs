//! Median and spread over repeated runs: the one definition every benchmark binary uses.
//!
//! The median of an even number of runs is the mean of the two middle values; the spread is
//! the smallest and the largest run. Ratios are taken per run first (numerator and
//! denominator from the same run), then summarised like any other figure.

/// Median, minimum and maximum of a set of runs.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Spread {
    /// Median (mean of the two middle values for an even count).
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

/// The spread of `values` (which must not be empty).
pub fn spread(values: &[f64]) -> Spread {
    assert!(!values.is_empty(), "a spread needs at least one run");
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Spread {
        median,
        min: v[0],
        max: v[n - 1],
    }
}

/// Per-run ratios `num[i] / den[i]` (the two slices hold the same runs, in order).
pub fn per_run_ratios(num: &[f64], den: &[f64]) -> Vec<f64> {
    assert_eq!(num.len(), den.len(), "ratios pair the figures of one run");
    num.iter().zip(den).map(|(n, d)| n / d).collect()
}

/// `median [min .. max]` with `decimals` decimals, e.g. `1.37 [0.53 .. 2.58]`.
pub fn format_spread(s: &Spread, decimals: usize) -> String {
    format!(
        "{:.d$} [{:.d$} .. {:.d$}]",
        s.median,
        s.min,
        s.max,
        d = decimals
    )
}

/// The values of every run, comma-separated, with `decimals` decimals.
pub fn format_runs(values: &[f64], decimals: usize) -> String {
    values
        .iter()
        .map(|v| format!("{v:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        let s = spread(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(spread(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
        assert_eq!(spread(&[5.0]).median, 5.0);
    }

    #[test]
    fn ratios_pair_runs_in_order() {
        let r = per_run_ratios(&[2.0, 9.0, 4.0], &[1.0, 3.0, 8.0]);
        assert_eq!(r, vec![2.0, 3.0, 0.5]);
        assert_eq!(spread(&r).median, 2.0);
        assert_eq!(format_spread(&spread(&r), 2), "2.00 [0.50 .. 3.00]");
        assert_eq!(format_runs(&r, 1), "2.0, 3.0, 0.5");
    }
}
