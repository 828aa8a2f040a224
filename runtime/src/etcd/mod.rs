//! Membership on etcd v3 (`[cluster.membership] provider = "etcd"`; docs/CLUSTER.md,
//! "Membership on etcd"). Built with the cargo feature `etcd` only.
//!
//! The client (`etcd-client`, tonic) runs on a side thread with its own current-thread tokio
//! runtime; the node's shards are never blocked by it. The thread:
//! - registers the node: `<prefix><id>` → its [`MemberRecord`] (JSON) under a lease of
//!   `lease_ttl_s`, and its seat `<prefix>seats/<id>` (no lease: the placement of its actors
//!   that are not movable, whose state is on its disk; an operator removes a retired node's
//!   seat with `etcdctl del`);
//! - keeps the lease alive (a keep-alive every TTL/4); if etcd answers that the lease is gone
//!   (it expired while the node was cut off, or etcd lost it), grants a new one and registers
//!   again;
//! - watches the prefix from the revision of its initial read, and after a watch or connection
//!   error **resumes from the last revision seen**; if that revision was compacted, it reads the
//!   prefix again and resynchronises;
//! - hands every change of the member set to the engine ([`EngineHandle::set_members`]): new
//!   members are dialed, a deleted key (a graceful leave, or an expired lease) takes the member
//!   out of the movable placement;
//! - split-brain rule: a keep-alive acknowledged at time `t` (the time it was sent) keeps the
//!   lease until `t + TTL` as etcd counts; once that passes with no newer acknowledgement, the
//!   node fences itself ([`EngineHandle::set_fenced`]: first messages of movable actors are
//!   held, not activated) until it holds a lease again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use quark_placement::{MemberState, NodeId};
use quark_shard::{EngineHandle, MemberUpdate};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::cluster::EtcdSettings;

/// Why the etcd membership could not start or act.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    /// etcd did not answer in time (not running, not reachable, or no leader).
    #[error("etcd at {endpoints:?}: {op} got no answer within {timeout:?}{hint}")]
    Timeout {
        /// The endpoints tried.
        endpoints: Vec<String>,
        /// What was asked.
        op: &'static str,
        /// The deadline.
        timeout: Duration,
        /// What to check when TLS to etcd is configured (else empty).
        hint: &'static str,
    },
    /// etcd refused or failed a request.
    #[error("etcd at {endpoints:?}: {op}{hint}")]
    Request {
        /// The endpoints tried.
        endpoints: Vec<String>,
        /// What was asked.
        op: &'static str,
        /// What to check when TLS to etcd is configured (else empty).
        hint: &'static str,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// A TLS file named by `[cluster.membership]` (`ca`, `cert`, `key`) could not be read.
    #[error("TLS to etcd: cannot read {key} {path:?}")]
    TlsFile {
        /// The config key (`cluster.membership.ca`, `.cert`, `.key`).
        key: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// The side thread or its runtime could not be started.
    #[error("starting the etcd membership thread")]
    Thread(#[source] std::io::Error),
    /// The side thread ended (a panic in the client).
    #[error("the etcd membership thread is gone")]
    Gone,
}

/// A member as registered in etcd (the value of `<prefix><id>`, JSON).
// Format: {"id": u64, "addr": "ip:port", "app_version": str, "zone": str, "state": "up"|"draining"}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The node id.
    pub id: NodeId,
    /// The address peers and clients dial.
    pub addr: String,
    /// `[node] app_version`.
    pub app_version: String,
    /// `[cluster.membership] zone`.
    pub zone: String,
    /// `up` or `draining`.
    pub state: String,
}

impl MemberRecord {
    fn update(&self) -> Option<MemberUpdate> {
        Some(MemberUpdate {
            id: self.id,
            addr: self.addr.parse().ok()?,
            state: if self.state == "draining" {
                MemberState::Draining
            } else {
                MemberState::Up
            },
            app_version: self.app_version.clone(),
            zone: self.zone.clone(),
        })
    }
}

/// What the node and its tests can read of the provider.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdView {
    /// The registered members (leases alive), by id.
    pub live: BTreeMap<NodeId, MemberRecord>,
    /// Every seat (members that ever registered and were not retired).
    pub seats: BTreeSet<NodeId>,
    /// The etcd revision of the last change seen.
    pub revision: i64,
    /// True while the node is fenced (lost etcd past its lease).
    pub fenced: bool,
    /// Times the node registered (1 at start; more after its lease was lost).
    pub registrations: u64,
    /// Times the watch resumed from its last revision after an error.
    pub watch_resumes: u64,
    /// Times the member set was read again in full (start, compaction).
    pub resyncs: u64,
    /// Times a session with etcd ended on an error (connection, timeout, stream).
    pub session_errors: u64,
}

#[derive(Default)]
struct Shared {
    view: EtcdView,
    handle: Option<EngineHandle>,
    /// `draining` while the node drains; `None` after it left (not registered again).
    state: Option<&'static str>,
    /// The node's lease lasts at least until then, as etcd counts it (`None`: no lease).
    valid_until: Option<Instant>,
    /// The member set's epoch (docs/CLUSTER.md, "Concurrent joins"): the highest
    /// `mod_revision` of the prefix's keys seen (watch events, deletions included, and full
    /// reads); never the header's revision, which other keys of the etcd also raise.
    epoch: u64,
}

impl Shared {
    fn publish(&self) {
        let Some(h) = &self.handle else { return };
        let live: Vec<MemberUpdate> = self
            .view
            .live
            .values()
            .filter_map(MemberRecord::update)
            .collect();
        let mut seats: Vec<NodeId> = self.view.seats.iter().copied().collect();
        seats.extend(live.iter().map(|m| m.id));
        h.set_members_at(self.epoch, seats, live);
    }

    /// Fences the node once its lease may have expired (checked every 20 ms by the
    /// watchdog task, so the fence is never later than that).
    fn fence_if_due(&mut self) {
        if self.state.is_none() || self.view.registrations == 0 || self.view.fenced {
            return;
        }
        if self.valid_until.is_none_or(|t| Instant::now() >= t) {
            tracing::warn!(
                "etcd unreachable past the lease: this node may be out of the membership; \
                 holding new activations of movable actors"
            );
            self.set_fenced(true);
        }
    }

    fn set_fenced(&mut self, fenced: bool) {
        if self.view.fenced == fenced {
            return;
        }
        self.view.fenced = fenced;
        if let Some(h) = &self.handle {
            h.set_fenced(fenced);
        }
    }
}

enum Cmd {
    State(std::sync::mpsc::SyncSender<()>),
    Leave(std::sync::mpsc::SyncSender<()>),
}

/// A node's registration in etcd and its watch of the member set (see the module docs).
/// Dropping it stops the thread without deleting the registration (its lease then expires);
/// [`stop`](Self::stop) deletes it first.
pub struct EtcdMembership {
    shared: Arc<Mutex<Shared>>,
    cmds: mpsc::Sender<Cmd>,
    stop: Option<oneshot::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
    op_timeout: Duration,
}

impl std::fmt::Debug for EtcdMembership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdMembership")
            .field("view", &self.view())
            .finish()
    }
}

fn lock(s: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    // Plain data, no invariant a panicking holder could break.
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl EtcdMembership {
    /// Connects, registers `me` and reads the member set; returns once registered (or the
    /// first attempt failed: etcd must be reachable when a node starts). Blocks; not on a
    /// shard thread.
    pub fn start(cfg: EtcdSettings, me: MemberRecord) -> Result<EtcdMembership, EtcdError> {
        Self::spawn(cfg, me, Some("up"))
    }

    /// Reads and watches the member set without registering (a `Client`): no lease, no fence.
    pub fn watch(cfg: EtcdSettings) -> Result<EtcdMembership, EtcdError> {
        let nobody = MemberRecord {
            id: NodeId::MAX,
            addr: String::new(),
            app_version: String::new(),
            zone: String::new(),
            state: String::new(),
        };
        Self::spawn(cfg, nobody, None)
    }

    fn spawn(
        cfg: EtcdSettings,
        me: MemberRecord,
        state: Option<&'static str>,
    ) -> Result<EtcdMembership, EtcdError> {
        let shared = Arc::new(Mutex::new(Shared {
            state,
            ..Shared::default()
        }));
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let op_timeout = op_timeout(cfg.lease_ttl_s);
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("quark-etcd".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(EtcdError::Thread(e)));
                        return;
                    }
                };
                rt.block_on(run(cfg, me, sh, cmd_rx, stop_rx, ready_tx));
            })
            .map_err(EtcdError::Thread)?;
        let started = ready_rx.recv().unwrap_or(Err(EtcdError::Gone));
        let m = EtcdMembership {
            shared,
            cmds: cmd_tx,
            stop: Some(stop_tx),
            thread: Some(thread),
            op_timeout,
        };
        started.map(|()| m)
    }

    /// The members registered now (leases alive), for the node's start: its first peers.
    pub fn view(&self) -> EtcdView {
        lock(&self.shared).view.clone()
    }

    /// Hands member changes to `handle` from now on (and the current set at once).
    pub fn attach(&self, handle: EngineHandle) {
        let mut s = lock(&self.shared);
        let fenced = s.view.fenced;
        s.handle = Some(handle);
        s.publish();
        if fenced {
            if let Some(h) = &s.handle {
                h.set_fenced(true);
            }
        }
    }

    fn command(&self, make: impl FnOnce(std::sync::mpsc::SyncSender<()>) -> Cmd) -> bool {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if self.cmds.try_send(make(tx)).is_err() {
            return false;
        }
        // The thread answers once etcd did; it waits at most `op_timeout` per request.
        rx.recv_timeout(self.op_timeout * 2).is_ok()
    }

    /// Registers the node as draining (peers stop sending it new activations). Blocks at most
    /// about twice the request timeout; false if etcd did not confirm it.
    pub fn set_draining(&self) -> bool {
        lock(&self.shared).state = Some("draining");
        self.command(Cmd::State)
    }

    /// Deletes the node's registration (after its drain): every member takes it out of
    /// placement. The node is not registered again. Blocks like [`set_draining`](Self::set_draining).
    pub fn leave(&self) -> bool {
        lock(&self.shared).state = None;
        self.command(Cmd::Leave)
    }

    /// Stops the thread; with `leave`, deletes the registration first (a graceful stop),
    /// else leaves it to expire with its lease.
    pub fn stop(mut self, leave: bool) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(leave);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EtcdMembership {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(false);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The TLS options of a connection to etcd, from the files as they are now (read at every
/// connection: a rotated certificate is used from the next one).
fn tls_options(t: &crate::cluster::EtcdTls) -> Result<etcd_client::TlsOptions, EtcdError> {
    let read = |key: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| EtcdError::TlsFile {
            key,
            path: path.to_path_buf(),
            source,
        })
    };
    let mut o = etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(
        read("cluster.membership.ca", &t.ca)?,
    ));
    if let Some((cert, key)) = &t.identity {
        o = o.identity(etcd_client::Identity::from_pem(
            read("cluster.membership.cert", cert)?,
            read("cluster.membership.key", key)?,
        ));
    }
    if let Some(name) = &t.server_name {
        o = o.domain_name(name.clone());
    }
    Ok(o)
}

/// The deadline of one etcd request: half the lease TTL (at least 500 ms), so that a node
/// notices a silent etcd before its lease would expire.
fn op_timeout(ttl_s: u64) -> Duration {
    Duration::from_millis((ttl_s * 500).max(500))
}

/// Why a session with etcd ended.
enum End {
    /// Connection or stream error: reconnect, keep the lease if it is still alive, resume the
    /// watch from the last revision.
    Reconnect,
    /// etcd says the lease is gone: register again.
    LeaseLost,
    /// The watch's revision was compacted: read the member set again.
    Resync,
    /// Stop requested.
    Stop,
}

struct Run {
    cfg: EtcdSettings,
    me: MemberRecord,
    shared: Arc<Mutex<Shared>>,
    ttl: Duration,
    op: Duration,
    lease: Option<i64>,
    revision: i64,
    stop_leave: Option<bool>,
    /// No watch was opened yet (the first one is not a resume).
    first_watch: bool,
}

async fn run(
    cfg: EtcdSettings,
    me: MemberRecord,
    shared: Arc<Mutex<Shared>>,
    mut cmds: mpsc::Receiver<Cmd>,
    mut stop: oneshot::Receiver<bool>,
    ready: std::sync::mpsc::SyncSender<Result<(), EtcdError>>,
) {
    let mut r = Run {
        ttl: Duration::from_secs(cfg.lease_ttl_s),
        op: op_timeout(cfg.lease_ttl_s),
        cfg,
        me,
        shared,
        lease: None,
        revision: 0,
        stop_leave: None,
        first_watch: true,
    };
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(50);
    // The fence's watchdog (ends with the runtime).
    let sh = r.shared.clone();
    tokio::spawn(async move {
        loop {
            lock(&sh).fence_if_due();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    loop {
        let end = match r.session(&mut cmds, &mut stop, &mut ready).await {
            Ok(end) => end,
            Err(e) => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Err(e));
                    return;
                }
                tracing::warn!(error = %crate::ErrorChain(&e), "etcd membership: retrying");
                End::Reconnect
            }
        };
        match end {
            End::Stop => break,
            End::LeaseLost => {
                r.lease_lost();
                backoff = Duration::from_millis(50);
            }
            End::Resync => {
                r.revision = 0;
                r.first_watch = true;
            }
            End::Reconnect => {
                lock(&r.shared).view.session_errors += 1;
                r.check_fence();
                // Wait, but notice a stop (and keep checking the fence).
                let wake = tokio::time::sleep(backoff);
                tokio::pin!(wake);
                tokio::select! {
                    _ = &mut wake => {}
                    l = &mut stop => {
                        r.stop_leave = Some(l.unwrap_or(false));
                        break;
                    }
                }
                backoff = (backoff * 2).min(Duration::from_millis(500));
                r.check_fence();
            }
        }
        if r.stop_leave.is_some() {
            break;
        }
    }
    if r.stop_leave == Some(true) {
        r.delete().await;
    }
}

impl Run {
    /// The hint of a failed request over TLS: what to check when the cause is a certificate.
    fn tls_hint(&self) -> &'static str {
        if self.cfg.tls.is_some() {
            " (over TLS: if the cause is a certificate, check that cluster.membership.ca signs \
             etcd's certificate and names its host, and cluster.membership.cert/key if etcd \
             requires client certificates)"
        } else {
            ""
        }
    }

    fn err(&self, op: &'static str) -> impl FnOnce(etcd_client::Error) -> EtcdError + '_ {
        move |source| EtcdError::Request {
            endpoints: self.cfg.endpoints.clone(),
            op,
            hint: self.tls_hint(),
            source,
        }
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, EtcdError> {
        match tokio::time::timeout(self.op, f).await {
            Ok(r) => r.map_err(self.err(op)),
            Err(_) => Err(EtcdError::Timeout {
                endpoints: self.cfg.endpoints.clone(),
                op,
                timeout: self.op,
                hint: self.tls_hint(),
            }),
        }
    }

    fn check_fence(&self) {
        lock(&self.shared).fence_if_due();
    }

    /// A keep-alive sent at `sent` was acknowledged with `ttl`: the lease lasts at least until
    /// `sent + ttl` (etcd counts from when it received it, later).
    fn extend(&self, sent: Instant, ttl: Duration) {
        let mut s = lock(&self.shared);
        let until = sent + ttl;
        s.valid_until = Some(s.valid_until.map_or(until, |t| t.max(until)));
        s.set_fenced(false);
    }

    fn lease_lost(&mut self) {
        self.lease = None;
        let mut s = lock(&self.shared);
        s.valid_until = None;
        s.fence_if_due();
    }

    fn key(&self) -> String {
        format!("{}{}", self.cfg.prefix, self.me.id)
    }

    fn record(&self) -> Option<String> {
        let state = lock(&self.shared).state?;
        let rec = MemberRecord {
            state: state.to_owned(),
            ..self.me.clone()
        };
        serde_json::to_string(&rec).ok()
    }

    async fn delete(&mut self) {
        let Ok(mut c) = self.connect().await else {
            return;
        };
        let key = self.key();
        let _ = self.timed("delete", c.delete(key, None)).await;
        if let Some(l) = self.lease.take() {
            let _ = self.timed("lease revoke", c.lease_revoke(l)).await;
        }
    }

    async fn connect(&self) -> Result<Client, EtcdError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(self.op)
            .with_keep_alive(self.op, self.op)
            .with_keep_alive_while_idle(true);
        if let Some(t) = &self.cfg.tls {
            opts = opts.with_tls(tls_options(t)?);
        }
        if let Some(a) = &self.cfg.auth {
            opts = opts.with_user(a.user.clone(), a.password.clone());
        }
        self.timed(
            "connect",
            Client::connect(self.cfg.endpoints.clone(), Some(opts)),
        )
        .await
    }

    /// Registers under a new lease (the seat, then the leased key).
    async fn register(&mut self, c: &mut Client) -> Result<(), EtcdError> {
        let sent = Instant::now();
        let lease = self
            .timed(
                "lease grant",
                c.lease_grant(self.ttl.as_secs() as i64, None),
            )
            .await?;
        let granted = Duration::from_secs(lease.ttl().max(1) as u64);
        self.ttl = granted;
        let seat = format!("{}seats/{}", self.cfg.prefix, self.me.id);
        let addr = self.me.addr.clone();
        self.timed("put seat", c.put(seat, addr, None)).await?;
        if let Some(rec) = self.record() {
            let key = self.key();
            let opts = PutOptions::new().with_lease(lease.id());
            self.timed("put member", c.put(key, rec, Some(opts)))
                .await?;
        }
        self.lease = Some(lease.id());
        let mut s = lock(&self.shared);
        s.valid_until = Some(sent + granted);
        s.view.registrations += 1;
        s.set_fenced(false);
        tracing::info!(
            node = self.me.id,
            lease = lease.id(),
            ttl_s = granted.as_secs(),
            "registered in etcd"
        );
        Ok(())
    }

    /// Reads the whole member set; returns its revision.
    async fn read_all(&mut self, c: &mut Client) -> Result<(), EtcdError> {
        let opts = GetOptions::new().with_prefix();
        let got = self
            .timed("read members", c.get(self.cfg.prefix.clone(), Some(opts)))
            .await?;
        let mut live = BTreeMap::new();
        let mut seats = BTreeSet::new();
        let mut epoch = 0u64;
        for kv in got.kvs() {
            let revision = u64::try_from(kv.mod_revision()).unwrap_or(0);
            match self.parse(kv.key(), kv.value()) {
                Some(Key::Live(id, Some(rec))) => {
                    live.insert(id, rec);
                    epoch = epoch.max(revision);
                }
                Some(Key::Seat(id)) => {
                    seats.insert(id);
                    epoch = epoch.max(revision);
                }
                _ => {}
            }
        }
        self.revision = got.header().map_or(0, |h| h.revision());
        let mut s = lock(&self.shared);
        s.view.live = live;
        s.view.seats = seats;
        s.view.revision = self.revision;
        s.epoch = s.epoch.max(epoch);
        s.view.resyncs += 1;
        s.publish();
        Ok(())
    }

    fn parse(&self, key: &[u8], value: &[u8]) -> Option<Key> {
        let rest = std::str::from_utf8(key)
            .ok()?
            .strip_prefix(&self.cfg.prefix)?;
        if let Some(id) = rest.strip_prefix("seats/") {
            return Some(Key::Seat(id.parse().ok()?));
        }
        let id: NodeId = rest.parse().ok()?;
        if value.is_empty() {
            return Some(Key::Live(id, None));
        }
        match serde_json::from_slice::<MemberRecord>(value) {
            Ok(rec) if rec.id == id && rec.addr.parse::<SocketAddr>().is_ok() => {
                Some(Key::Live(id, Some(rec)))
            }
            _ => {
                tracing::warn!(key = %String::from_utf8_lossy(key), "etcd: ignored a malformed member record");
                None
            }
        }
    }

    async fn session(
        &mut self,
        cmds: &mut mpsc::Receiver<Cmd>,
        stop: &mut oneshot::Receiver<bool>,
        ready: &mut Option<std::sync::mpsc::SyncSender<Result<(), EtcdError>>>,
    ) -> Result<End, EtcdError> {
        let mut c = self.connect().await?;
        let registered = lock(&self.shared).state.is_some();
        if self.lease.is_none() && registered {
            self.register(&mut c).await?;
        }
        if self.revision == 0 {
            self.read_all(&mut c).await?;
        }
        if let Some(tx) = ready.take() {
            let _ = tx.send(Ok(()));
        }
        let (mut keeper, mut beats) = match self.lease {
            Some(l) => {
                // The client reads the first answer: a lease etcd no longer has is an error.
                let sent = Instant::now();
                match tokio::time::timeout(self.op, c.lease_keep_alive(l)).await {
                    Ok(Ok((k, b))) => {
                        self.extend(sent, self.ttl);
                        (Some(k), Some(b))
                    }
                    Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => {
                        tracing::warn!(
                            node = self.me.id,
                            "etcd: the lease expired; registering again"
                        );
                        return Ok(End::LeaseLost);
                    }
                    Ok(Err(e)) => return Err(self.err("lease keep-alive")(e)),
                    Err(_) => {
                        return Err(EtcdError::Timeout {
                            endpoints: self.cfg.endpoints.clone(),
                            op: "lease keep-alive",
                            timeout: self.op,
                            hint: self.tls_hint(),
                        })
                    }
                }
            }
            None => (None, None),
        };
        if self.revision > 0 && lock(&self.shared).view.resyncs > 0 && !self.first_watch {
            // A session after an error: the watch resumes from the last revision seen.
            lock(&self.shared).view.watch_resumes += 1;
        }
        self.first_watch = false;
        let wopts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.revision + 1);
        let mut watch = self
            .timed("watch", c.watch(self.cfg.prefix.clone(), Some(wopts)))
            .await?;
        let mut tick = tokio::time::interval((self.ttl / 4).max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Keep-alives sent and not yet acknowledged, oldest first (their send times).
        let mut sent: std::collections::VecDeque<Instant> = Default::default();
        loop {
            tokio::select! {
                l = &mut *stop => {
                    self.stop_leave = Some(l.unwrap_or(false));
                    return Ok(End::Stop);
                }
                _ = tick.tick() => {
                    self.check_fence();
                    if let Some(k) = keeper.as_mut() {
                        if sent.len() > 8 {
                            return Ok(End::Reconnect);
                        }
                        if tokio::time::timeout(self.op, k.keep_alive()).await.ok().and_then(Result::ok).is_none() {
                            return Ok(End::Reconnect);
                        }
                        sent.push_back(Instant::now());
                    }
                }
                b = next_beat(&mut beats) => match b {
                    Ok(Some(resp)) if resp.ttl() > 0 => {
                        if let Some(t) = sent.pop_front() {
                            self.extend(t, Duration::from_secs(resp.ttl() as u64));
                        }
                    }
                    Ok(Some(_)) => {
                        tracing::warn!(node = self.me.id, "etcd: the lease expired; registering again");
                        return Ok(End::LeaseLost);
                    }
                    _ => return Ok(End::Reconnect),
                },
                w = watch.message() => match w {
                    Ok(Some(resp)) => {
                        if resp.compact_revision() > 0 {
                            tracing::warn!(revision = self.revision, compacted = resp.compact_revision(),
                                "etcd: watch revision compacted; reading the members again");
                            return Ok(End::Resync);
                        }
                        if resp.canceled() {
                            return Ok(End::Reconnect);
                        }
                        self.apply(resp.events());
                    }
                    _ => return Ok(End::Reconnect),
                },
                cmd = cmds.recv() => match cmd {
                    Some(Cmd::State(tx)) => {
                        if let (Some(rec), Some(l)) = (self.record(), self.lease) {
                            let opts = PutOptions::new().with_lease(l);
                            let key = self.key();
                            self.timed("put member", c.put(key, rec, Some(opts))).await?;
                        }
                        let _ = tx.send(());
                    }
                    Some(Cmd::Leave(tx)) => {
                        let key = self.key();
                        self.timed("delete member", c.delete(key, None)).await?;
                        if let Some(l) = self.lease.take() {
                            let _ = self.timed("lease revoke", c.lease_revoke(l)).await;
                        }
                        keeper = None;
                        beats = None;
                        let _ = tx.send(());
                    }
                    None => {}
                },
            }
        }
    }

    fn apply(&mut self, events: &[etcd_client::Event]) {
        let mut s = lock(&self.shared);
        let (mut changed, mut bumped) = (false, false);
        for e in events {
            let Some(kv) = e.kv() else { continue };
            self.revision = self.revision.max(kv.mod_revision());
            let value = if e.event_type() == EventType::Delete {
                &[][..]
            } else {
                kv.value()
            };
            let parsed = self.parse(kv.key(), value);
            if parsed.is_some() {
                // A member key written again unchanged (a new lease) still raises the epoch
                // that a joiner's full read would compute: published below.
                let revision = u64::try_from(kv.mod_revision()).unwrap_or(0);
                if revision > s.epoch {
                    s.epoch = revision;
                    bumped = true;
                }
            }
            match (parsed, e.event_type()) {
                (Some(Key::Live(id, Some(rec))), EventType::Put) => {
                    changed |= s.view.live.insert(id, rec.clone()).as_ref() != Some(&rec);
                }
                (Some(Key::Live(id, _)), EventType::Delete) => {
                    changed |= s.view.live.remove(&id).is_some();
                }
                (Some(Key::Seat(id)), EventType::Put) => changed |= s.view.seats.insert(id),
                (Some(Key::Seat(id)), EventType::Delete) => changed |= s.view.seats.remove(&id),
                _ => {}
            }
        }
        s.view.revision = self.revision;
        if changed {
            tracing::info!(revision = self.revision, live = ?s.view.live.keys().collect::<Vec<_>>(),
                "etcd: member set changed");
        }
        if changed || bumped {
            s.publish();
        }
    }
}

enum Key {
    Live(NodeId, Option<MemberRecord>),
    Seat(NodeId),
}

async fn next_beat(
    beats: &mut Option<etcd_client::LeaseKeepAliveStream>,
) -> Result<Option<etcd_client::LeaseKeepAliveResponse>, etcd_client::Error> {
    match beats {
        Some(b) => b.message().await,
        None => std::future::pending().await,
    }
}

/// Starts the etcd membership of a node about to start (`Node::start`, after binding its
/// listener at `bound`): registers it, and makes the members registered now its first peers
/// (`NetConfig::membership`; later ones come through [`EtcdMembership::attach`]).
pub(crate) fn start_for_node(
    cluster: &mut crate::cluster::ClusterSettings,
    app_version: &str,
    bound: SocketAddr,
) -> Result<Option<EtcdMembership>, EtcdError> {
    let crate::cluster::MembershipSettings::Etcd(cfg) = &cluster.membership else {
        return Ok(None);
    };
    let mut cfg = cfg.clone();
    if cfg.advertise.port() == 0 {
        // `listen` had port 0: advertise the port bound.
        cfg.advertise.set_port(bound.port());
    }
    let me = cluster.net.node_id;
    let record = MemberRecord {
        id: me,
        addr: cfg.advertise.to_string(),
        app_version: app_version.to_owned(),
        zone: cfg.zone.clone(),
        state: "up".to_owned(),
    };
    let m = EtcdMembership::start(cfg.clone(), record)?;
    let view = m.view();
    let mut nodes = vec![quark_net::MemberAddr {
        id: me,
        addr: cfg.advertise.to_string(),
    }];
    for r in view.live.values().filter(|r| r.id != me) {
        if nodes.iter().any(|n| n.addr == r.addr) {
            tracing::warn!(node = r.id, addr = %r.addr,
                "etcd: two members registered with one address; ignoring this one");
            continue;
        }
        nodes.push(quark_net::MemberAddr {
            id: r.id,
            addr: r.addr.clone(),
        });
    }
    match quark_net::Membership::from_config(&quark_net::ClusterConfig {
        cluster_id: cluster.net.membership.cluster_id().to_owned(),
        nodes,
    }) {
        Ok(ms) => cluster.net.membership = ms,
        Err(e) => tracing::warn!(error = %e, "etcd: member set unusable at start; starting alone"),
    }
    Ok(Some(m))
}
