//! PEFT sources (DESIGN.md 1.1): directories whose immediate sub-directories are adapters.
//! Discovery reads only directory listings and file metadata (format detection + a fingerprint of
//! the files' [`DirStamp`]: names, sizes, times, inodes); a rescan adds new adapters, drops removed
//! ones, and decides "changed" by content: an adapter whose fingerprint changed is read (as one
//! [`read_snapshot`]) and its content hash compared with the one of its current generation; only
//! different content gets a new generation. Two sources offering the same name: the first wins and
//! the conflict is reported.
//!
//! Content hashes are recorded lazily: a new adapter's files are not read at discovery (a source
//! may hold hundreds of adapters of hundreds of MB each, and the scan runs under the engine's
//! registry lock), so [`AdapterInfo::content_hash`] is learnt from the engine's loaded copy
//! ([`Served::Content`], passed to [`PeftRegistry::scan_with`]) or from a scan's own read. A
//! fingerprint change of a generation whose content is not known (never loaded, or being
//! loaded, or refused) is a change. The engine also reports every completed load
//! ([`PeftRegistry::note_loaded`]), so files rewritten between two scans, loaded, evicted and
//! restored to the earlier bytes before the next scan count as changed: the generation served
//! the rewritten bytes in between.
//!
//! Threading: not synchronised; the engine keeps it behind a mutex.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use super::snapshot::{read_snapshot, DirStamp};
use super::AdapterFormat;
use crate::error::{Error, Result};

/// One discovered adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterInfo {
    /// Name (the directory name).
    pub name: String,
    /// Its directory.
    pub dir: PathBuf,
    /// Detected format.
    pub format: AdapterFormat,
    /// Hash of the adapter files' metadata ([`fingerprint`]).
    pub fingerprint: u64,
    /// Generation number: bumped whenever the files' content changes (a metadata-only change,
    /// such as `touch` or a copy of the same bytes, keeps it).
    pub generation: u64,
    /// The content hash of this generation (`load::generation_of`, the `generation` string of
    /// the loaded adapter) once known; `None` until the engine has loaded it or a scan has read
    /// it (see the module docs).
    pub content_hash: Option<String>,
}

/// What the engine holds of one adapter generation, as told to [`PeftRegistry::scan_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Served {
    /// Nothing (never loaded, or evicted).
    Nothing,
    /// A load in flight or refused: what it read is not known.
    Pending,
    /// Loaded, with this content hash.
    Content(String),
}

/// What a scan changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// New adapters.
    pub added: Vec<String>,
    /// Adapters whose files' content changed (new generation).
    pub changed: Vec<String>,
    /// Adapters gone.
    pub removed: Vec<String>,
    /// Sub-directories that are not (yet) a recognisable adapter, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Names offered by more than one source (the first source wins).
    pub conflicts: Vec<String>,
}

/// The registry of every source's adapters. See the module docs.
#[derive(Debug, Default)]
pub struct PeftRegistry {
    sources: Vec<PathBuf>,
    adapters: BTreeMap<String, AdapterInfo>,
    next_generation: u64,
    last: ScanReport,
}

impl PeftRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            next_generation: 1,
            ..Self::default()
        }
    }

    /// Adds a source directory and scans. Errors: IO when it is not a readable directory,
    /// INVALID_ARGUMENT when already registered.
    pub fn add_source(&mut self, dir: &Path) -> Result<ScanReport> {
        let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
        if !meta.is_dir() {
            return Err(Error::invalid_argument(format!(
                "PEFT source {} is not a directory",
                dir.display()
            )));
        }
        let canon = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
        if self
            .sources
            .iter()
            .any(|s| s.canonicalize().ok().as_ref() == Some(&canon))
        {
            return Err(Error::invalid_argument(format!(
                "PEFT source {} is already registered",
                dir.display()
            )));
        }
        self.sources.push(dir.to_path_buf());
        Ok(self.scan())
    }

    /// Registered sources.
    pub fn sources(&self) -> &[PathBuf] {
        &self.sources
    }
    /// An adapter by name.
    pub fn get(&self, name: &str) -> Option<&AdapterInfo> {
        self.adapters.get(name)
    }
    /// Every adapter, by name.
    pub fn adapters(&self) -> impl Iterator<Item = &AdapterInfo> {
        self.adapters.values()
    }
    /// Records that generation `generation` of adapter `name` was loaded with content hash
    /// `hash` (what requests of that generation were served): the next scan that sees its files
    /// change compares with this hash. Ignored for another (older) generation or an unknown name.
    pub fn note_loaded(&mut self, name: &str, generation: u64, hash: &str) {
        if let Some(a) = self.adapters.get_mut(name) {
            if a.generation == generation {
                a.content_hash = Some(hash.to_string());
            }
        }
    }

    /// The last scan's report.
    pub fn last_report(&self) -> &ScanReport {
        &self.last
    }

    /// Rescans every source, knowing of no loaded adapter ([`Self::scan_with`]).
    pub fn scan(&mut self) -> ScanReport {
        self.scan_with(&|_, _| Served::Nothing)
    }

    /// Rescans every source. `served(name, generation)` says what the caller holds of an adapter
    /// generation. An adapter whose fingerprint or directory changed is read as a snapshot when
    /// the content of its generation is known (the loaded copy's hash, which must agree with the
    /// recorded one, else the recorded one when nothing is loaded): the same content keeps the
    /// generation (only the fingerprint is updated); different content, unknown content, a
    /// pending load, or a failed read gives a new generation, reported in `changed`.
    pub fn scan_with(&mut self, served: &dyn Fn(&str, u64) -> Served) -> ScanReport {
        let mut report = ScanReport::default();
        let mut seen = BTreeMap::<String, (PathBuf, AdapterFormat, u64)>::new();
        let mut conflicts = BTreeSet::new();
        for src in &self.sources {
            let Ok(rd) = std::fs::read_dir(src) else {
                report.skipped.push((
                    src.display().to_string(),
                    "source directory is not readable".into(),
                ));
                continue;
            };
            let mut dirs: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect();
            dirs.sort();
            for dir in dirs {
                let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string)
                else {
                    continue;
                };
                if name.starts_with('.') {
                    continue;
                }
                if seen.contains_key(&name) {
                    conflicts.insert(name);
                    continue;
                }
                match fingerprint(&dir) {
                    Ok((format, fp)) => {
                        seen.insert(name, (dir, format, fp));
                    }
                    Err(e) => report.skipped.push((name, e.message().to_string())),
                }
            }
        }
        report.conflicts = conflicts.into_iter().collect();
        let gone: Vec<String> = self
            .adapters
            .keys()
            .filter(|n| !seen.contains_key(*n))
            .cloned()
            .collect();
        for n in gone {
            self.adapters.remove(&n);
            report.removed.push(n);
        }
        for (name, (dir, format, fp)) in seen {
            match self.adapters.get_mut(&name) {
                Some(a) if a.fingerprint == fp && a.dir == dir => {
                    if a.content_hash.is_none() {
                        if let Served::Content(h) = served(&name, a.generation) {
                            a.content_hash = Some(h);
                        }
                    }
                }
                Some(a) => {
                    let known = match (served(&name, a.generation), &a.content_hash) {
                        (Served::Content(h), Some(r)) if &h != r => None,
                        (Served::Content(h), _) => Some(h),
                        (Served::Pending, _) => None,
                        (Served::Nothing, r) => r.clone(),
                    };
                    // The snapshot's own stamp becomes the fingerprint: it is what was hashed.
                    let now = known.as_ref().and_then(|_| {
                        read_snapshot(&dir, &name)
                            .ok()
                            .map(|snap| (snap.content_hash(), snap.stamp))
                    });
                    a.dir = dir;
                    a.format = format;
                    a.fingerprint = fp;
                    if let Some((_, stamp)) = &now {
                        a.format = stamp.format;
                        a.fingerprint = hash_stamp(stamp);
                    }
                    let now = now.map(|(hash, _)| hash);
                    if now.is_none() || now != known {
                        a.generation = self.next_generation;
                        self.next_generation += 1;
                        report.changed.push(name);
                    }
                    a.content_hash = now;
                }
                None => {
                    let generation = self.next_generation;
                    self.next_generation += 1;
                    self.adapters.insert(
                        name.clone(),
                        AdapterInfo {
                            name: name.clone(),
                            dir,
                            format,
                            fingerprint: fp,
                            generation,
                            content_hash: None,
                        },
                    );
                    report.added.push(name);
                }
            }
        }
        self.last = report.clone();
        report
    }
}

/// Detects the format and hashes the files' metadata ([`DirStamp`]: names, sizes, modification
/// and status-change times, inodes; no file contents).
pub fn fingerprint(dir: &Path) -> Result<(AdapterFormat, u64)> {
    let stamp = DirStamp::of(dir)?;
    Ok((stamp.format, hash_stamp(&stamp)))
}

fn hash_stamp(stamp: &DirStamp) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    stamp.files.hash(&mut h);
    h.finish()
}
