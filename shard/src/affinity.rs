//! CPU affinity: the one place that reads the process's CPU mask and pins threads to cores
//! (shard threads, and the benchmark binaries' client and server threads).

/// Why a thread could not be pinned to a core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PinError {
    /// The core id is outside what a `cpu_set_t` can name.
    #[error("core {core} is out of range (a CPU set names cores below {max})")]
    OutOfRange {
        /// The requested core.
        core: usize,
        /// `CPU_SETSIZE`.
        max: usize,
    },
    /// `sched_setaffinity` refused (the core is not in the process's allowed set, or the
    /// sandbox forbids changing affinity).
    #[error("sched_setaffinity to core {core} failed")]
    Refused {
        /// The requested core.
        core: usize,
        /// The system call's error.
        #[source]
        source: std::io::Error,
    },
}

/// The cores in this process's affinity mask (all cores `0..available_parallelism` if the mask
/// cannot be read).
pub fn allowed_cores() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at most
    // sizeof(cpu_set_t) bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            return (0..n).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Pins the calling thread to `core`. On error the thread's affinity is unchanged.
pub fn pin_current_thread(core: usize) -> Result<(), PinError> {
    let max = libc::CPU_SETSIZE as usize;
    if core >= max {
        return Err(PinError::OutOfRange { core, max });
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it for
    // core < CPU_SETSIZE (checked above); sched_setaffinity reads sizeof(cpu_set_t) bytes.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(PinError::Refused {
                core,
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// The CPU the calling thread is running on right now (`None` if the kernel does not say).
pub fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu takes no arguments and returns -1 on error.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

/// The NUMA node of `core`, read from sysfs (`None` where sysfs does not say).
pub(crate) fn numa_node_of(core: usize) -> Option<usize> {
    let dir = std::fs::read_dir(format!("/sys/devices/system/cpu/cpu{core}")).ok()?;
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .find_map(|name| name.strip_prefix("node")?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_core_is_an_error() {
        assert!(matches!(
            pin_current_thread(usize::MAX),
            Err(PinError::OutOfRange { .. })
        ));
    }

    #[test]
    fn pins_to_an_allowed_core() {
        let core = allowed_cores()[0];
        // A thread of its own, so the test runner's thread keeps its mask.
        std::thread::spawn(move || {
            pin_current_thread(core).expect("an allowed core");
            assert_eq!(current_cpu(), Some(core));
        })
        .join()
        .expect("the pinned thread ran");
    }
}
