//! A node's data directory as a whole: its lock, its manifest, and the finishing of an
//! interrupted `quark data reshard`.
//!
//! Layout of a data directory `D`:
//!
//! ```text
//! D/.lock            flock(2) target; the exclusive holder's pid (quark_persist::DirLock)
//! D/MANIFEST         the layout the logs were written with (see `Manifest`)
//! D/shard-<N>/       shard N's log (each with its own .lock, held by its `Log`)
//! D/.reshard-tmp/    a reshard's new layout, being built or being installed
//! D/.reshard-old/    the layout a reshard replaced, being removed
//! ```
//!
//! A node opens the directory with [`DataDir::open_for_node`] before any shard touches it: that
//! takes the exclusive lock, finishes (or rolls back) an interrupted reshard, and compares the
//! manifest with the configuration, refusing a shard count, placement version or node id that
//! differs from the one the logs were written with. `docs/PERSIST.md` ("Manifest and locking")
//! is the guide.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use quark_persist::{DirLock, LockError};

/// File name of the manifest inside a data directory.
pub const MANIFEST_FILE: &str = "MANIFEST";
/// Temporary name the manifest is written under before its atomic rename.
const MANIFEST_TMP: &str = "MANIFEST.tmp";
/// Format version of the manifest written by this build.
pub const MANIFEST_FORMAT: u32 = 1;
/// Where `quark data reshard` builds the new layout.
pub const RESHARD_TMP_DIR: &str = ".reshard-tmp";
/// Where the layout a reshard replaced waits for removal.
pub const RESHARD_OLD_DIR: &str = ".reshard-old";

/// Where an interrupted reshard stands (the manifest's `reshard` line). The manifest rename
/// that sets [`ReshardPhase::Switch`] is the reshard's commit point: before it the old layout
/// is the data, after it the new one is, and [`finish_reshard`] completes the move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReshardPhase {
    /// No reshard in progress: `D/shard-<N>` is the layout the manifest describes.
    Done,
    /// Committed; the old `D/shard-<N>` directories are being moved to `D/.reshard-old/`.
    Switch,
    /// The old directories are all in `D/.reshard-old/`; the new ones are being moved from
    /// `D/.reshard-tmp/` to `D/shard-<N>`.
    Install,
}

impl ReshardPhase {
    fn name(self) -> &'static str {
        match self {
            ReshardPhase::Done => "none",
            ReshardPhase::Switch => "switch",
            ReshardPhase::Install => "install",
        }
    }
}

/// The layout a data directory's logs were written with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Format version of the manifest file.
    pub format_version: u32,
    /// Number of shard logs (`shard-0` … `shard-<shards-1>`).
    pub shards: u16,
    /// [`quark_placement::PLACEMENT_VERSION`] of the build that placed the actors.
    pub placement_version: u32,
    /// The cluster node id of the node that owns the data (`None`: a standalone node).
    pub node_id: Option<u64>,
    /// An interrupted reshard, if any.
    pub reshard: ReshardPhase,
}

impl Manifest {
    /// A manifest for `shards` logs placed by this build.
    pub fn new(shards: u16, node_id: Option<u64>) -> Self {
        Manifest {
            format_version: MANIFEST_FORMAT,
            shards,
            placement_version: quark_placement::PLACEMENT_VERSION,
            node_id,
            reshard: ReshardPhase::Done,
        }
    }

    // Format (MANIFEST, UTF-8 text, one `name = value` per line, '#' starts a comment):
    //   format_version = 1 | shards = <u16> | placement_version = <u32> |
    //   node_id = <u64> or none | reshard = none | switch | install
    fn encode(&self) -> String {
        let node = self
            .node_id
            .map_or_else(|| "none".to_string(), |n| n.to_string());
        format!(
            "# Quark data directory manifest (docs/PERSIST.md, \"Manifest and locking\").\n\
             # Written by Quark: do not edit; change the shard count with `quark data reshard`.\n\
             format_version = {}\nshards = {}\nplacement_version = {}\nnode_id = {}\nreshard = {}\n",
            self.format_version,
            self.shards,
            self.placement_version,
            node,
            self.reshard.name()
        )
    }

    fn decode(file: &Path, text: &str) -> Result<Self, DataDirError> {
        let bad = |line: usize, reason: &'static str| DataDirError::BadManifest {
            file: file.to_path_buf(),
            line,
            reason,
        };
        let (mut format, mut shards, mut placement, mut node, mut reshard) =
            (None, None, None, None, None);
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let l = raw.split('#').next().unwrap_or("").trim();
            if l.is_empty() {
                continue;
            }
            let (name, value) = l
                .split_once('=')
                .ok_or_else(|| bad(line, "expected `name = value`"))?;
            let value = value.trim();
            match name.trim() {
                "format_version" => {
                    format = Some(value.parse().map_err(|_| bad(line, "not a number"))?)
                }
                "shards" => {
                    let n: u16 = value.parse().map_err(|_| bad(line, "not a shard count"))?;
                    if n == 0 {
                        return Err(bad(line, "a data directory has at least one shard"));
                    }
                    shards = Some(n);
                }
                "placement_version" => {
                    placement = Some(value.parse().map_err(|_| bad(line, "not a number"))?)
                }
                "node_id" => {
                    node = Some(if value == "none" {
                        None
                    } else {
                        Some(value.parse().map_err(|_| bad(line, "not a node id"))?)
                    })
                }
                "reshard" => {
                    reshard = Some(match value {
                        "none" => ReshardPhase::Done,
                        "switch" => ReshardPhase::Switch,
                        "install" => ReshardPhase::Install,
                        _ => return Err(bad(line, "expected none, switch or install")),
                    })
                }
                _ => return Err(bad(line, "unknown field")),
            }
        }
        let format_version: u32 = format.ok_or_else(|| bad(0, "format_version is missing"))?;
        if format_version > MANIFEST_FORMAT {
            return Err(DataDirError::NewerManifest {
                file: file.to_path_buf(),
                found: format_version,
                supported: MANIFEST_FORMAT,
            });
        }
        Ok(Manifest {
            format_version,
            shards: shards.ok_or_else(|| bad(0, "shards is missing"))?,
            placement_version: placement.ok_or_else(|| bad(0, "placement_version is missing"))?,
            node_id: node.ok_or_else(|| bad(0, "node_id is missing"))?,
            reshard: reshard.unwrap_or(ReshardPhase::Done),
        })
    }
}

/// Why a data directory could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    /// Another process holds the directory (a running node, `quark data reshard`, or an
    /// offline reader when a writer asks).
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A file system operation failed.
    #[error("data directory: cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The manifest does not parse.
    #[error("bad manifest {file} (line {line}): {reason}")]
    BadManifest {
        /// The manifest file.
        file: PathBuf,
        /// The line (0: the whole file).
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// The manifest was written by a newer Quark.
    #[error("manifest {file} has format version {found}; this build reads up to {supported}")]
    NewerManifest {
        /// The manifest file.
        file: PathBuf,
        /// Version found.
        found: u32,
        /// Newest version supported.
        supported: u32,
    },
    /// The configured shard count differs from the one the logs were written with.
    #[error(
        "data directory {dir} was written with {was} shards, but this node is configured with \
         {now}: actors would be looked for on the wrong shard and their journals would fork. \
         Start the node with {was} shards again, or stop it and move the data with \
         `quark data reshard --data-dir {dir} --shards {now}`"
    )]
    ShardCountChanged {
        /// The data directory.
        dir: PathBuf,
        /// Shard count in the manifest.
        was: u16,
        /// Shard count configured.
        now: u16,
    },
    /// The logs were laid out by another version of the placement function.
    #[error(
        "data directory {dir} was laid out with placement version {was}, this build places \
         actors with version {now}: run `quark data reshard --data-dir {dir} --shards {shards}` \
         with this build to move every stream to the shard it now picks"
    )]
    PlacementChanged {
        /// The data directory.
        dir: PathBuf,
        /// Version in the manifest.
        was: u32,
        /// This build's version.
        now: u32,
        /// The shard count (unchanged).
        shards: u16,
    },
    /// The data belongs to another cluster node.
    #[error(
        "data directory {dir} belongs to node {was}, but this node is {}: the data belongs to \
         another node; point this node at its own [log] data_dir",
        now.map_or_else(|| "standalone (no [cluster] node_id)".to_string(), |n| format!("node {n}"))
    )]
    NodeIdChanged {
        /// The data directory.
        dir: PathBuf,
        /// Node id in the manifest.
        was: u64,
        /// Node id configured (`None`: standalone).
        now: Option<u64>,
    },
    /// A directory written before manifests existed holds shard logs the configured shard
    /// count does not cover.
    #[error(
        "data directory {dir} has no manifest (written by an older Quark) and its shard logs \
         (shard-0 … shard-{highest}) were written with {} shards, but this node is configured \
         with {now}: start it with {} shards, or run `quark data reshard --data-dir {dir} \
         --shards {now}`",
        highest + 1, highest + 1
    )]
    LegacyMismatch {
        /// The data directory.
        dir: PathBuf,
        /// The highest `shard-<N>` present.
        highest: u16,
        /// Shard count configured.
        now: u16,
    },
    /// An offline tool was pointed at a directory with neither a manifest nor a shard log.
    #[error(
        "{dir} is not a Quark data directory: it has no {MANIFEST_FILE} and no shard-<N>/ log \
         (pass the node's [log] data_dir)"
    )]
    NotADataDir {
        /// The directory.
        dir: PathBuf,
    },
    /// The reshard's new layout is missing after its commit (the directory was altered by hand).
    #[error(
        "data directory {dir}: an interrupted reshard (manifest phase {phase}) cannot be \
         finished: {what}"
    )]
    ReshardBroken {
        /// The data directory.
        dir: PathBuf,
        /// The manifest's phase.
        phase: &'static str,
        /// What is inconsistent.
        what: String,
    },
}

/// A data directory opened and locked (exclusively) with its manifest checked; the lock is
/// released when this value drops.
#[derive(Debug)]
pub struct DataDir {
    lock: DirLock,
    manifest: Manifest,
}

/// Called after each durable step of a reshard's roll-forward with a short name of the step
/// (for progress output, and for tests that kill the process at every step).
pub type StepHook<'a> = &'a mut dyn FnMut(&'static str);

impl DataDir {
    /// Opens `dir` for a node with `shards` shards and cluster id `node_id` (creating it if
    /// missing): takes the exclusive lock, finishes or rolls back an interrupted reshard, then
    /// checks the manifest, writing it at first start (or adopting a directory written before
    /// manifests existed when its shard logs fit `shards`).
    ///
    /// Errors name what changed (was/now) and what to do: [`DataDirError::ShardCountChanged`],
    /// [`DataDirError::PlacementChanged`], [`DataDirError::NodeIdChanged`],
    /// [`DataDirError::LegacyMismatch`]; [`DataDirError::Lock`] names the holder's pid.
    pub fn open_for_node(
        dir: &Path,
        shards: u16,
        node_id: Option<u64>,
    ) -> Result<DataDir, DataDirError> {
        let (lock, found) = open_locked(dir, &mut |_| {})?;
        let manifest = match found {
            Some(m) => {
                if m.node_id.is_some_and(|was| Some(was) != node_id) {
                    return Err(DataDirError::NodeIdChanged {
                        dir: dir.to_path_buf(),
                        was: m.node_id.expect("checked is_some"),
                        now: node_id,
                    });
                }
                if m.shards != shards {
                    return Err(DataDirError::ShardCountChanged {
                        dir: dir.to_path_buf(),
                        was: m.shards,
                        now: shards,
                    });
                }
                if m.placement_version != quark_placement::PLACEMENT_VERSION {
                    return Err(DataDirError::PlacementChanged {
                        dir: dir.to_path_buf(),
                        was: m.placement_version,
                        now: quark_placement::PLACEMENT_VERSION,
                        shards,
                    });
                }
                if m.node_id.is_none() && node_id.is_some() {
                    // A standalone node's data joins a cluster: the data is now this node's.
                    let m = Manifest { node_id, ..m };
                    write_manifest(dir, &m)?;
                    tracing::info!(dir = %dir.display(), node_id, "data directory now belongs to this node");
                    m
                } else {
                    m
                }
            }
            None => {
                if let Some(highest) = highest_shard_dir(dir)? {
                    if highest + 1 != shards {
                        return Err(DataDirError::LegacyMismatch {
                            dir: dir.to_path_buf(),
                            highest,
                            now: shards,
                        });
                    }
                    tracing::info!(dir = %dir.display(), shards, "adopting a data directory written before manifests: writing its manifest");
                }
                let m = Manifest::new(shards, node_id);
                write_manifest(dir, &m)?;
                m
            }
        };
        Ok(DataDir { lock, manifest })
    }

    /// Opens an existing `dir` for an offline tool that rewrites it (`quark data reshard`):
    /// takes the exclusive lock and finishes or rolls back an interrupted reshard, calling
    /// `step` after each durable step. A directory without a manifest gets one describing its
    /// `shard-<N>` logs (not written until the tool commits).
    pub fn open_offline(dir: &Path, step: StepHook<'_>) -> Result<DataDir, DataDirError> {
        if !dir.is_dir() {
            return Err(DataDirError::NotADataDir {
                dir: dir.to_path_buf(),
            });
        }
        let (lock, found) = open_locked(dir, step)?;
        let manifest = match found {
            Some(m) => m,
            None => {
                let shards = highest_shard_dir(dir)?.map_or(0, |h| h + 1);
                if shards == 0 {
                    return Err(DataDirError::NotADataDir {
                        dir: dir.to_path_buf(),
                    });
                }
                Manifest::new(shards, None)
            }
        };
        Ok(DataDir { lock, manifest })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        self.lock.dir()
    }

    /// The manifest in force.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Commits a reshard whose new layout (`shards` logs) is complete and synced in
    /// `D/.reshard-tmp/`: writes the manifest (the commit point) and moves the new layout in
    /// place, calling `step` after each durable step.
    pub fn commit_reshard(&mut self, shards: u16, step: StepHook<'_>) -> Result<(), DataDirError> {
        let m = Manifest {
            shards,
            placement_version: quark_placement::PLACEMENT_VERSION,
            reshard: ReshardPhase::Switch,
            ..self.manifest.clone()
        };
        write_manifest(self.dir(), &m)?;
        step("commit: manifest names the new layout");
        self.manifest = finish_reshard(self.dir(), m, step)?;
        Ok(())
    }
}

/// Locks `dir` (creating it), reads its manifest and finishes or rolls back a reshard.
fn open_locked(
    dir: &Path,
    step: StepHook<'_>,
) -> Result<(DirLock, Option<Manifest>), DataDirError> {
    std::fs::create_dir_all(dir).map_err(|source| DataDirError::Io {
        op: "create",
        path: dir.to_path_buf(),
        source,
    })?;
    let lock = DirLock::exclusive(dir)?;
    let manifest = match read_manifest(dir)? {
        Some(m) if m.reshard != ReshardPhase::Done => {
            tracing::warn!(dir = %dir.display(), phase = m.reshard.name(), "finishing an interrupted reshard");
            Some(finish_reshard(dir, m, step)?)
        }
        m => {
            let tmp = dir.join(RESHARD_TMP_DIR);
            if tmp.exists() {
                // Never committed: the old layout is the data.
                tracing::warn!(dir = %dir.display(), "removing the new layout of a reshard that did not commit");
                remove_all(&tmp)?;
                sync_dir(dir)?;
                step("roll back: removed the uncommitted layout");
            }
            m
        }
    };
    Ok((lock, manifest))
}

/// Reads `dir/MANIFEST` (`None` when there is none).
pub fn read_manifest(dir: &Path) -> Result<Option<Manifest>, DataDirError> {
    let file = dir.join(MANIFEST_FILE);
    match std::fs::read_to_string(&file) {
        Ok(text) => Manifest::decode(&file, &text).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DataDirError::Io {
            op: "read",
            path: file,
            source,
        }),
    }
}

/// Writes `dir/MANIFEST` atomically: a temporary file, `fsync`, rename, `fsync` of `dir`.
pub fn write_manifest(dir: &Path, m: &Manifest) -> Result<(), DataDirError> {
    let tmp = dir.join(MANIFEST_TMP);
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| DataDirError::Io { op, path, source }
    };
    let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(m.encode().as_bytes())
        .map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    drop(f);
    let file = dir.join(MANIFEST_FILE);
    std::fs::rename(&tmp, &file).map_err(io("rename into place", &file))?;
    sync_dir(dir)
}

/// Rolls a committed reshard forward to [`ReshardPhase::Done`] (idempotent: each step checks
/// what is left to do, so a crash anywhere inside is finished by the next call).
pub fn finish_reshard(
    dir: &Path,
    mut m: Manifest,
    step: StepHook<'_>,
) -> Result<Manifest, DataDirError> {
    let tmp = dir.join(RESHARD_TMP_DIR);
    let old = dir.join(RESHARD_OLD_DIR);
    let broken = |phase: ReshardPhase, what: String| DataDirError::ReshardBroken {
        dir: dir.to_path_buf(),
        phase: phase.name(),
        what,
    };
    if m.reshard == ReshardPhase::Switch {
        if !tmp.is_dir() {
            return Err(broken(
                m.reshard,
                format!("the new layout {} is missing", tmp.display()),
            ));
        }
        create_dir(&old)?;
        sync_dir(dir)?;
        for (_, path) in shard_dirs(dir)? {
            let to = old.join(path.file_name().expect("a listed entry has a name"));
            rename(&path, &to)?;
            step("switch: moved an old shard log aside");
        }
        sync_dir(&old)?;
        sync_dir(dir)?;
        m.reshard = ReshardPhase::Install;
        write_manifest(dir, &m)?;
        step("switch: old layout moved aside");
    }
    if m.reshard == ReshardPhase::Install {
        if tmp.is_dir() {
            let new = shard_dirs(&tmp)?;
            if let Some((n, _)) = new.iter().find(|(n, _)| *n >= m.shards) {
                return Err(broken(
                    m.reshard,
                    format!(
                        "the new layout has shard-{n} but the manifest says {} shards",
                        m.shards
                    ),
                ));
            }
            for (_, path) in new {
                let to = dir.join(path.file_name().expect("a listed entry has a name"));
                if to.exists() {
                    return Err(broken(
                        m.reshard,
                        format!("{} exists already", to.display()),
                    ));
                }
                rename(&path, &to)?;
                step("install: moved a new shard log in");
            }
            sync_dir(dir)?;
            remove_all(&tmp)?;
        }
        if old.exists() {
            remove_all(&old)?;
        }
        sync_dir(dir)?;
        step("install: removed the old layout");
        m.reshard = ReshardPhase::Done;
        write_manifest(dir, &m)?;
        step("done: manifest final");
    }
    Ok(m)
}

/// The `shard-<N>` directories of `dir`, by N.
pub fn shard_dirs(dir: &Path) -> Result<Vec<(u16, PathBuf)>, DataDirError> {
    let entries = std::fs::read_dir(dir).map_err(|source| DataDirError::Io {
        op: "list",
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(|source| DataDirError::Io {
            op: "list",
            path: dir.to_path_buf(),
            source,
        })?;
        let name = e.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix("shard-"))
            .and_then(|n| n.parse::<u16>().ok())
        else {
            continue;
        };
        if e.path().is_dir() {
            out.push((n, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn highest_shard_dir(dir: &Path) -> Result<Option<u16>, DataDirError> {
    Ok(shard_dirs(dir)?.last().map(|(n, _)| *n))
}

/// `fsync` of a directory, so the renames and creations in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), DataDirError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|source| DataDirError::Io {
            op: "fsync directory",
            path: dir.to_path_buf(),
            source,
        })
}

fn create_dir(path: &Path) -> Result<(), DataDirError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(DataDirError::Io {
            op: "create",
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), DataDirError> {
    std::fs::rename(from, to).map_err(|source| DataDirError::Io {
        op: "rename",
        path: from.to_path_buf(),
        source,
    })
}

fn remove_all(path: &Path) -> Result<(), DataDirError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DataDirError::Io {
            op: "remove",
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips_and_rejects_bad_lines() {
        let m = Manifest {
            node_id: Some(7),
            reshard: ReshardPhase::Install,
            ..Manifest::new(3, None)
        };
        let f = Path::new("MANIFEST");
        assert_eq!(Manifest::decode(f, &m.encode()).unwrap(), m);
        let none = Manifest::new(1, None);
        assert_eq!(Manifest::decode(f, &none.encode()).unwrap(), none);
        for bad in [
            "format_version = 1\nshards = 0\nplacement_version = 1\nnode_id = none\n",
            "format_version = 1\nplacement_version = 1\nnode_id = none\n",
            "format_version = 1\nshards = 2\nplacement_version = 1\nnode_id = none\ncolour = red\n",
            "format_version = 9\nshards = 2\nplacement_version = 1\nnode_id = none\n",
        ] {
            assert!(Manifest::decode(f, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_node_writes_then_checks_the_manifest() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("data");
        drop(DataDir::open_for_node(&dir, 2, None).unwrap());
        assert_eq!(read_manifest(&dir).unwrap().unwrap().shards, 2);
        let err = DataDir::open_for_node(&dir, 1, None).unwrap_err();
        assert!(matches!(
            err,
            DataDirError::ShardCountChanged { was: 2, now: 1, .. }
        ));
        let text = err.to_string();
        assert!(
            text.contains("quark data reshard") && text.contains("--shards 1"),
            "{text}"
        );
        // A standalone directory joins a cluster; then it belongs to that node.
        drop(DataDir::open_for_node(&dir, 2, Some(4)).unwrap());
        let err = DataDir::open_for_node(&dir, 2, Some(5)).unwrap_err();
        assert!(matches!(
            err,
            DataDirError::NodeIdChanged {
                was: 4,
                now: Some(5),
                ..
            }
        ));
        assert!(err.to_string().contains("belongs to node 4"));
    }

    #[test]
    fn another_placement_version_is_refused_with_the_reshard_hint() {
        let d = tempfile::tempdir().unwrap();
        let old = Manifest {
            placement_version: quark_placement::PLACEMENT_VERSION + 1,
            ..Manifest::new(2, None)
        };
        write_manifest(d.path(), &old).unwrap();
        let err = DataDir::open_for_node(d.path(), 2, None).unwrap_err();
        assert!(
            matches!(err, DataDirError::PlacementChanged { shards: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("--shards 2"), "{err}");
        assert_eq!(read_manifest(d.path()).unwrap().unwrap(), old, "unchanged");
    }

    #[test]
    fn legacy_directories_are_adopted_only_with_their_shard_count() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("shard-0")).unwrap();
        std::fs::create_dir_all(d.path().join("shard-1")).unwrap();
        let err = DataDir::open_for_node(d.path(), 1, None).unwrap_err();
        assert!(
            matches!(
                err,
                DataDirError::LegacyMismatch {
                    highest: 1,
                    now: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(read_manifest(d.path()).unwrap().is_none());
        let err = DataDir::open_for_node(d.path(), 4, None).unwrap_err();
        assert!(
            matches!(
                err,
                DataDirError::LegacyMismatch {
                    highest: 1,
                    now: 4,
                    ..
                }
            ),
            "{err}"
        );
        drop(DataDir::open_for_node(d.path(), 2, None).unwrap());
        assert_eq!(read_manifest(d.path()).unwrap().unwrap().shards, 2);
    }

    #[test]
    fn a_second_opener_is_refused_with_the_pid() {
        let d = tempfile::tempdir().unwrap();
        let held = DataDir::open_for_node(d.path(), 1, None).unwrap();
        let err = DataDir::open_for_node(d.path(), 1, None).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("process {}", std::process::id())),
            "{err}"
        );
        drop(held);
    }
}
