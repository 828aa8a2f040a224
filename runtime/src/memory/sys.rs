//! The node's memory as the operating system sees it: resident set size and the cgroup's
//! limit.

use std::path::{Path, PathBuf};

/// Where the node's memory limit came from ([`super::NodeMemory::limit_source`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitSource {
    /// `[memory] limit_bytes`.
    Config,
    /// The process's memory cgroup: v2 `memory.max`, else v1 `memory.limit_in_bytes`.
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

/// The memory limit of this process's cgroup, bytes: the cgroup v2 `memory.max`, else (a
/// machine on cgroup v1, or v1's memory controller) the v1 `memory.limit_in_bytes`; `None`
/// without a limit (`max`, or v1's "unlimited", a value near 2^63) or when neither can be
/// read.
pub fn cgroup_limit_bytes() -> Option<u64> {
    if let Some(text) =
        cgroup_dir().and_then(|d| std::fs::read_to_string(d.join("memory.max")).ok())
    {
        return parse_memory_max(&text);
    }
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = v1_memory_path(&cgroups)?;
    let dir = Path::new("/sys/fs/cgroup/memory").join(rel.trim_start_matches('/'));
    parse_limit_in_bytes(&std::fs::read_to_string(dir.join("memory.limit_in_bytes")).ok()?)
}

/// The v1 memory controller's path in `/proc/self/cgroup` (the `N:...memory...:/path` line).
pub(crate) fn v1_memory_path(cgroups: &str) -> Option<&str> {
    cgroups.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then_some(path)
    })
}

/// v1 `memory.limit_in_bytes`: bytes; "unlimited" is the largest page-aligned `i64`
/// (9223372036854771712), so anything from 2^62 up is no limit.
pub(crate) fn parse_limit_in_bytes(text: &str) -> Option<u64> {
    let v: u64 = text.trim().parse().ok()?;
    (v < 1 << 62).then_some(v)
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

    #[test]
    fn cgroup_v1_memory_limit_is_found_and_unlimited_is_none() {
        let cgroups = "9:pids:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/\n0::/\n";
        assert_eq!(v1_memory_path(cgroups), Some("/process_api/abc"));
        assert_eq!(v1_memory_path("4:cpu:/x\n0::/\n"), None);
        assert_eq!(parse_limit_in_bytes("314572800\n"), Some(314_572_800));
        assert_eq!(parse_limit_in_bytes("9223372036854771712\n"), None);
        assert_eq!(parse_limit_in_bytes("junk"), None);
    }
}
