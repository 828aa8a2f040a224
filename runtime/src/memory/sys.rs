//! The node's memory as the operating system sees it: resident set size and the cgroup's
//! limit.

use std::path::{Path, PathBuf};

/// Where the node's memory limit came from ([`super::NodeMemory::limit_source`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitSource {
    /// `[memory] limit_bytes`.
    Config,
    /// The cgroup v2 `memory.max` of the process's cgroup.
    Cgroup,
    /// No limit known: node thresholds are off.
    None,
}

/// The process's resident set size, bytes (`/proc/self/statm`, second field, in pages);
/// `None` where it cannot be read.
pub fn resident_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok().filter(|p| *p > 0)?)
}

/// The cgroup v2 directory of this process (`/proc/self/cgroup`'s `0::/path` line, under
/// `/sys/fs/cgroup`).
fn cgroup_dir() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/')))
}

/// The cgroup v2 `memory.max` of this process's cgroup, bytes; `None` when it is `max`, or
/// there is no cgroup v2 (or it cannot be read).
pub fn cgroup_limit_bytes() -> Option<u64> {
    let text = std::fs::read_to_string(cgroup_dir()?.join("memory.max")).ok()?;
    parse_memory_max(&text)
}

/// `memory.max`'s text: a number of bytes, or `max` (no limit).
pub(crate) fn parse_memory_max(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    t.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_max_reads_bytes_and_max() {
        assert_eq!(parse_memory_max("268435456\n"), Some(268_435_456));
        assert_eq!(parse_memory_max("max\n"), None);
        assert_eq!(parse_memory_max("junk"), None);
        assert!(resident_bytes().is_some_and(|b| b > 0));
    }
}
