//! Runs the `bank` example's scenario (runtime/examples/bank.rs) as a test.

#[path = "../examples/bank.rs"]
mod bank;

#[test]
fn the_bank_projection_equals_the_sum_of_the_accounts() {
    let tmp = tempfile::tempdir().unwrap();
    let branches = bank::run(tmp.path()).unwrap();
    assert_eq!(branches.len(), 3);
    // Money only moves between accounts, except the part-two withdrawals.
    let total: i64 = branches.values().sum();
    let deposits: i64 = (0..30).map(|i| 1_000 + i).sum();
    let withdrawn: i64 = (0..30).step_by(3).map(|i| 1 + i).sum();
    assert_eq!(total, deposits - withdrawn);
}
