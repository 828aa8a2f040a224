//! The machine line and the commit every benchmark binary prints with its results, so that a
//! figure copied into docs/BENCHMARKS.md carries where and from what it was measured.

use std::process::Command;

/// The commit this crate was built from (see `build.rs`).
const BUILD_COMMIT: &str = env!("QUARK_BENCH_BUILD_COMMIT");

/// Cores, kernel, CPU model, memory and load average of this machine, and the date (UTC).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    /// CPUs this process may run on (`nproc`).
    pub cores: usize,
    /// `uname -r`.
    pub kernel: String,
    /// `model name` of the first CPU in /proc/cpuinfo.
    pub cpu_model: String,
    /// MemTotal, GiB.
    pub mem_gib: f64,
    /// /proc/loadavg's three averages when the line was taken.
    pub load_average: String,
    /// The git commit (`git rev-parse --short HEAD` in the current directory at run time),
    /// with `-dirty` when the work tree has uncommitted changes; `unknown` outside a checkout.
    pub commit: String,
    /// The commit the binary was built from (`git rev-parse --short HEAD` at build time).
    pub build_commit: String,
    /// UTC date and time (`date -u +%FT%TZ`).
    pub date_utc: String,
}

fn first_line_of(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8_lossy(&out.stdout);
    s.lines().next().map(|l| l.trim().to_owned())
}

/// The git commit of the current directory's checkout (`<hash>` or `<hash>-dirty`).
pub fn git_commit() -> String {
    let Some(hash) = first_line_of("git", &["rev-parse", "--short", "HEAD"]) else {
        return "unknown".to_owned();
    };
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    if dirty {
        format!("{hash}-dirty")
    } else {
        hash
    }
}

impl Machine {
    /// Reads the machine's description now.
    pub fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let mem_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kib| kib.parse::<f64>().ok())
            })
            .map_or(0.0, |kib| kib / (1024.0 * 1024.0));
        Machine {
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".to_owned()),
            cpu_model,
            mem_gib,
            load_average: std::fs::read_to_string("/proc/loadavg")
                .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|_| "?".to_owned()),
            commit: git_commit(),
            build_commit: BUILD_COMMIT.to_owned(),
            date_utc: first_line_of("date", &["-u", "+%FT%TZ"]).unwrap_or_default(),
        }
    }

    /// One line: `machine: 2 cores, kernel …, CPU …, 24.0 GiB, load … | commit … | date …`;
    /// the commit says `(binary built from …)` when the build's commit differs.
    pub fn line(&self) -> String {
        let stale = if self.commit.trim_end_matches("-dirty") == self.build_commit {
            String::new()
        } else {
            format!(" (binary built from {})", self.build_commit)
        };
        format!(
            "machine: {} cores, kernel {}, CPU {}, {:.1} GiB, load average {} | commit {}{} | {}",
            self.cores,
            self.kernel,
            self.cpu_model,
            self.mem_gib,
            self.load_average,
            self.commit,
            stale,
            self.date_utc
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_cores_kernel_cpu_and_commit() {
        let m = Machine::describe();
        assert!(m.cores >= 1);
        let line = m.line();
        for part in ["cores", "kernel", "CPU", "commit"] {
            assert!(line.contains(part), "{line}");
        }
        assert!(!m.commit.is_empty());
    }
}
