//! Durable jobs: an image-processing-style pipeline (see `docs/JOBS.md`).
//!
//! - `Resize` jobs, one per uploaded image, with a per-customer concurrency key (at most two
//!   of a customer's images are resized at once) and a retry policy with backoff (the fake
//!   resizer fails the first attempt of every third image);
//! - on completion, a `Thumbnail` follow-up written atomically with the resize's completion;
//! - an `Album` job per customer that depends on all of the customer's resizes (fan-in, in
//!   one atomic batch) and receives their results;
//! - a unique `Report` job per customer: triggers while it is queued collapse into one.
//!
//! `cargo run -p quark --example jobs`

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quark::jobs::{
    Dep, Job, JobContext, JobFailure, JobOptions, JobState, JobTypeConfig, NewJob, RetryPolicy,
};
use quark::{block_on, Node, NodeConfig};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Resize {
    customer: String,
    image: u32,
}
impl Job for Resize {
    const TYPE_NAME: &'static str = "resize";
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Thumbnail {
    customer: String,
    image: u32,
}
impl Job for Thumbnail {
    const TYPE_NAME: &'static str = "thumbnail";
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Album {
    customer: String,
}
impl Job for Album {
    const TYPE_NAME: &'static str = "album";
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Report {
    customer: String,
}
impl Job for Report {
    const TYPE_NAME: &'static str = "report";
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let config = NodeConfig::from_toml(
        &format!(
            "[node]\nshards = 2\n[log]\ndata_dir = {:?}\nfsync = \"always\"\n",
            dir.path().to_str().ok_or("temp dir is not UTF-8")?
        ),
        "example.toml",
    )?;
    // Per customer: how many resizes run right now, and the most seen at once.
    let running: Arc<Mutex<HashMap<String, (u32, u32)>>> = Arc::default();
    let thumbs = Arc::new(AtomicU32::new(0));
    let reports = Arc::new(AtomicU32::new(0));
    let (r, t, rep) = (
        Arc::clone(&running),
        Arc::clone(&thumbs),
        Arc::clone(&reports),
    );
    let node = Node::builder()
        .config(config)
        .register_job::<Resize, _, _>(
            JobTypeConfig {
                retry: RetryPolicy {
                    max_attempts: 3,
                    base_ms: 20,
                    factor: 2.0,
                    cap_ms: 1_000,
                    jitter: 0.5,
                },
                timeout: Duration::from_secs(5),
                ..JobTypeConfig::default()
            },
            move |job: Resize, ctx: JobContext| {
                let r = Arc::clone(&r);
                async move {
                    {
                        let mut m = r.lock().map_err(|_| JobFailure::fatal("poisoned"))?;
                        let e = m.entry(job.customer.clone()).or_default();
                        e.0 += 1;
                        e.1 = e.1.max(e.0);
                    }
                    ctx.progress(10);
                    quark_shard::sleep(Duration::from_millis(5)).await; // "resizing"
                    ctx.progress(100);
                    if let Ok(mut m) = r.lock() {
                        if let Some(e) = m.get_mut(&job.customer) {
                            e.0 -= 1;
                        }
                    }
                    if job.image.is_multiple_of(3) && ctx.attempt() == 1 {
                        return Err(JobFailure::retry("storage timeout (simulated)"));
                    }
                    ctx.set_result(format!("{}/{}.webp", job.customer, job.image).into_bytes());
                    // Stored in the same log batch as this completion.
                    ctx.enqueue_on_completion(NewJob::new(
                        &Thumbnail {
                            customer: job.customer,
                            image: job.image,
                        },
                        JobOptions::default().priority(1),
                    ))
                    .map_err(|e| JobFailure::fatal(e.to_string()))?;
                    Ok(())
                }
            },
        )
        .register_job::<Thumbnail, _, _>(
            JobTypeConfig::default(),
            move |_j: Thumbnail, _ctx: JobContext| {
                t.fetch_add(1, Ordering::Relaxed);
                async { Ok(()) }
            },
        )
        .register_job::<Album, _, _>(
            JobTypeConfig::default(),
            |a: Album, ctx: JobContext| async move {
                let pages: Vec<String> = ctx
                    .parent_results()
                    .into_iter()
                    .filter_map(|(_, r)| r.map(|r| String::from_utf8_lossy(&r).into_owned()))
                    .collect();
                ctx.set_result(
                    format!("album of {} with {} pages", a.customer, pages.len()).into_bytes(),
                );
                Ok(())
            },
        )
        .register_job::<Report, _, _>(
            JobTypeConfig::default(),
            move |_j: Report, _ctx: JobContext| {
                rep.fetch_add(1, Ordering::Relaxed);
                async { Ok(()) }
            },
        )
        .start()?;
    let jobs = node.jobs();

    let mut ids = Vec::new();
    for customer in ["acme", "globex", "initech"] {
        // Six resizes and the album that waits for them, in one atomic batch.
        let mut batch = Vec::new();
        let mut album = JobOptions::default();
        for image in 0..6 {
            let job = Resize {
                customer: customer.into(),
                image,
            };
            batch.push(NewJob::new(
                &job,
                JobOptions::default().concurrency(customer, 2),
            ));
            album = album.depends_on(Dep::InBatch(image as usize));
        }
        batch.push(NewJob::new(
            &Album {
                customer: customer.into(),
            },
            album,
        ));
        ids.extend(block_on(jobs.enqueue_batch(batch))?);
        // Three triggers, one report (scheduled a little later so they collapse).
        let report = JobOptions::default()
            .unique(format!("report-{customer}"))
            .after(Duration::from_millis(200));
        let a = block_on(jobs.enqueue(
            &Report {
                customer: customer.into(),
            },
            report.clone(),
        ))?;
        let b = block_on(jobs.enqueue(
            &Report {
                customer: customer.into(),
            },
            report.clone(),
        ))?;
        let c = block_on(jobs.enqueue(
            &Report {
                customer: customer.into(),
            },
            report,
        ))?;
        assert!(a == b && b == c);
        ids.push(a);
    }
    for id in &ids {
        let s = block_on(jobs.wait(*id))?;
        println!(
            "{:>8} {:<8} {:?} after {} attempt(s){}",
            id.to_string(),
            s.type_name,
            s.state,
            s.attempt,
            s.result
                .map(|r| format!(" -> {}", String::from_utf8_lossy(&r)))
                .unwrap_or_default()
        );
        assert_eq!(s.state, JobState::Completed);
    }
    // The thumbnails were enqueued by the completions; wait for them to drain.
    while thumbs.load(Ordering::Relaxed) < 18 {
        std::thread::sleep(Duration::from_millis(5));
    }
    for (customer, (_, max)) in running.lock().map_err(|_| "poisoned")?.iter() {
        println!("{customer}: at most {max} resizes at once (limit 2)");
    }
    println!(
        "thumbnails: {}, reports: {} (9 triggers)",
        thumbs.load(Ordering::Relaxed),
        reports.load(Ordering::Relaxed)
    );
    println!("counts: {:?}", block_on(jobs.counts())?);
    println!("inspect the log after a stop with: quark jobs inspect --data-dir <dir>");
    node.shutdown();
    Ok(())
}
