//! PEFT sources (DESIGN.md 1.1): directories whose immediate sub-directories are adapters.
//! Discovery reads only directory listings and file metadata (format detection + a fingerprint of
//! names, sizes and modification times); a rescan adds new adapters, gives changed ones a new
//! generation and drops removed ones. Two sources offering the same name: the first wins and the
//! conflict is reported.
//!
//! Threading: not synchronised; the engine keeps it behind a mutex.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::load::detect_files;
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
    /// Hash of the adapter files' names, sizes and modification times.
    pub fingerprint: u64,
    /// Generation number: bumped whenever the fingerprint changes.
    pub generation: u64,
}

/// What a scan changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// New adapters.
    pub added: Vec<String>,
    /// Adapters whose files changed (new generation).
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
    /// The last scan's report.
    pub fn last_report(&self) -> &ScanReport {
        &self.last
    }

    /// Rescans every source.
    pub fn scan(&mut self) -> ScanReport {
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
                Some(a) if a.fingerprint == fp && a.dir == dir => {}
                Some(a) => {
                    a.dir = dir;
                    a.format = format;
                    a.fingerprint = fp;
                    a.generation = self.next_generation;
                    self.next_generation += 1;
                    report.changed.push(name);
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

/// Detects the format and hashes file names, sizes and modification times (no file contents).
pub fn fingerprint(dir: &Path) -> Result<(AdapterFormat, u64)> {
    let (format, files) = detect_files(dir)?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in &files {
        let p = dir.join(f);
        let m = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?;
        f.hash(&mut h);
        m.len().hash(&mut h);
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        mtime.hash(&mut h);
    }
    Ok((format, h.finish()))
}
