//! Where the kernel runs a pinned shard's punted io_uring work.
//!
//! Since `[log] direct_io` (default `"auto"`), a write-through append is an aligned
//! `O_DIRECT | O_DSYNC` write that the kernel issues inline (`rt/log_io.rs`, docs/PERSIST.md
//! "Direct I/O"): it no longer goes through the worker below. What follows matters for the
//! buffered fallback (a file system that refuses `O_DIRECT`, such as tmpfs, or `direct_io =
//! "off"`) and for the operations the kernel still punts (opens, the segment roll's zero-fill
//! writes); it is kept for them.
//!
//! A buffered write-through log append (an `O_DSYNC` write) is never done inline by
//! `io_uring_enter`: the kernel hands it to an io-wq worker thread of the submitting thread,
//! which performs the write and the cache flush and then posts the completion. Those workers
//! inherit the CPU affinity of the thread that created its io_uring context, so the workers of
//! a shard pinned to core 0 can run on core 0 only. Measured on the 2-core test machine
//! (kernel 6.18, one virtio queue whose interrupt is delivered to core 1; docs/BENCHMARKS.md,
//! "Journal persist: where the time went"): the same `O_DSYNC` write took 174 µs from
//! submission to completion when shard 0's worker was confined to core 0, against 121 µs for
//! the same write from an unpinned thread, and the shard's persists were 1.6-1.7x the raw
//! write. The worker waits for the disk, not for the CPU, so confining it buys nothing: it
//! only queues it behind whatever else runs on the shard's core and keeps it away from the
//! core that takes the disk's interrupt.
//!
//! Registering a wider mask for the io-wq (`IORING_REGISTER_IOWQ_AFF`) is not enough: the
//! kernel intersects a new worker's mask with the `sched_setaffinity` mask of the thread that
//! creates it (the pinned shard). So [`widen_io_workers`] creates the worker while the shard
//! thread is briefly unpinned: it widens the thread's mask to the process's (the main
//! thread's), forces one no-op through the io-wq (`IOSQE_ASYNC`) on a throw-away ring (the
//! io-wq belongs to the thread, not to a ring, so the executor's ring uses the same workers),
//! and pins the thread back. The worker so created may run on any core of the process; being
//! its queue's last worker, it does not exit when idle. The shard thread itself stays pinned
//! everywhere else.

use std::io;
use std::mem::size_of;

/// Lets this thread's io_uring worker run on every core of the process's CPU mask. Call it
/// on the shard thread once its executor's ring exists. Errors (an old kernel, a seccomp
/// filter) leave the worker where the kernel puts it; the caller logs them. The thread's own
/// CPU mask is the same before and after the call.
pub(crate) fn widen_io_workers() -> io::Result<()> {
    let mine = affinity(0)?;
    // SAFETY: getpid cannot fail. The main thread's mask is the process's.
    let process = affinity(unsafe { libc::getpid() })?;
    if cpu_sets_equal(&mine, &process) {
        return Ok(()); // not pinned: the workers inherit the whole mask anyway
    }
    set_affinity(&process)?;
    let forced = force_one_worker();
    // Pin back whatever happened: the shard must not run unpinned.
    if let Err(e) = set_affinity(&mine) {
        tracing::warn!(error = %e, "could not pin the shard thread back after creating its io_uring worker: it runs on the process's cores");
        return Err(e);
    }
    forced
}

/// Sends one no-op through this thread's io-wq, which creates its worker (with this thread's
/// current CPU mask), and waits for it.
fn force_one_worker() -> io::Result<()> {
    let mut ring = io_uring::IoUring::new(2)?;
    let nop = io_uring::opcode::Nop::new()
        .build()
        .flags(io_uring::squeue::Flags::ASYNC)
        .user_data(1);
    // SAFETY: a no-op refers to no buffer or descriptor that could be freed before it completes.
    unsafe { ring.submission().push(&nop) }
        .map_err(|_| io::Error::other("io_uring submission queue full"))?;
    ring.submit_and_wait(1)?;
    let done = ring.completion().next();
    match done {
        Some(cqe) if cqe.result() >= 0 => Ok(()),
        Some(cqe) => Err(io::Error::from_raw_os_error(-cqe.result())),
        None => Err(io::Error::other("io_uring no-op: no completion")),
    }
}

/// The CPU mask of thread `tid` (0: the calling thread).
fn affinity(tid: libc::pid_t) -> io::Result<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is a valid (empty) set.
    let mut mask: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity writes at most `size_of::<cpu_set_t>()` bytes into `mask`,
    // which lives for the call.
    let rc = unsafe { libc::sched_getaffinity(tid, size_of::<libc::cpu_set_t>(), &mut mask) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(mask)
}

/// Sets the calling thread's CPU mask.
fn set_affinity(mask: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: sched_setaffinity reads `size_of::<cpu_set_t>()` bytes from `mask`.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), mask) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn cpu_sets_equal(a: &libc::cpu_set_t, b: &libc::cpu_set_t) -> bool {
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads one bit of a valid set, index < CPU_SETSIZE.
        .all(|c| unsafe { libc::CPU_ISSET(c, a) == libc::CPU_ISSET(c, b) })
}

#[cfg(all(test, not(loom)))]
mod tests {
    /// The io-wq worker of a thread pinned to one core may run on every core of the process
    /// once widened: read back from the worker thread's own `Cpus_allowed_list` after a punted
    /// write (an `O_DSYNC` write always goes to a worker).
    #[test]
    fn a_pinned_threads_io_worker_may_run_on_every_core_of_the_process() {
        let process = std::fs::read_to_string("/proc/self/status")
            .expect("read /proc/self/status")
            .lines()
            .find(|l| l.starts_with("Cpus_allowed_list:"))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
            .expect("Cpus_allowed_list in /proc/self/status");
        if process == "0" {
            eprintln!("one core only: nothing to widen");
            return;
        }
        let dir = std::env::temp_dir().join(format!("quark-iowq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("f");
        std::fs::write(&path, vec![0u8; 4096]).expect("create file");
        let worker_mask = std::thread::spawn(move || {
            crate::affinity::pin_current_thread(0).expect("pin to core 0");
            let mut rt = crate::rt::build_runtime(8, false).expect("runtime");
            if !crate::rt::is_uring(&rt) {
                return None;
            }
            // SAFETY: gettid has no arguments and cannot fail.
            let tid = unsafe { libc::gettid() };
            let own = std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
                .expect("own status");
            assert!(
                own.lines()
                    .any(|l| l.starts_with("Cpus_allowed_list:") && l.ends_with("\t0")),
                "the shard thread itself stays pinned to core 0"
            );
            rt.block_on(async {
                let file = crate::rt::log_io::UringIo;
                let f = quark_persist::LogIo::open_write_through(&file, &path)
                    .await
                    .expect("open O_DSYNC");
                quark_persist::LogFile::write_all_at(&f, std::rc::Rc::new(vec![1u8; 64]), 0)
                    .await
                    .expect("write");
            });
            // The workers are named after the thread they work for and outlive the write by
            // seconds (idle timeout). Every one of them (the write's included) may leave core 0.
            let tasks = std::fs::read_dir("/proc/self/task").expect("list tasks");
            let masks: Vec<String> = tasks
                .filter_map(|t| t.ok())
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == format!("iou-wrk-{tid}"))
                })
                .map(|t| {
                    std::fs::read_to_string(t.path().join("status"))
                        .expect("worker status")
                        .lines()
                        .find(|l| l.starts_with("Cpus_allowed_list:"))
                        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
                        .expect("worker Cpus_allowed_list")
                })
                .collect();
            Some(masks)
        })
        .join()
        .expect("pinned thread");
        let _ = std::fs::remove_dir_all(&dir);
        let Some(worker_masks) = worker_mask else {
            eprintln!("no io_uring (epoll fallback): nothing to check");
            return;
        };
        assert!(
            !worker_masks.is_empty(),
            "an O_DSYNC write through io_uring runs on an io-wq worker"
        );
        for mask in worker_masks {
            assert_eq!(
                mask, process,
                "every io worker of a thread pinned to core 0 runs on the process's cores"
            );
        }
    }
}
