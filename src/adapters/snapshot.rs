//! Consistent reads of an adapter directory: the files an adapter format uses ([`detect_files`])
//! are read as one snapshot, so a file replaced or rewritten while it is being read is retried and
//! never served torn (half old, half new, or one file old and another new).
//!
//! A snapshot is taken by stamping the file list with per-file metadata ([`DirStamp`]: length,
//! modification and status-change times with nanoseconds, inode and device), reading every file,
//! and stamping again; equal stamps mean nothing visible changed during the read. Otherwise the
//! read is retried after a short backoff ([`SnapshotRetry`]); an adapter that never settles is
//! refused with an `IO` error naming the adapter and the file that kept changing.
//!
//! Limitation: a rewrite in place that keeps the length and lands within the filesystem's
//! timestamp granularity leaves the metadata unchanged and cannot be seen; writers should write
//! elsewhere and rename into place (a new inode), which is always seen.
//!
//! Everything here is synchronous and thread-safe (no shared state).

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use crate::adapters::load::{detect_files, generation_of, read_adapter_file};
use crate::adapters::AdapterFormat;
use crate::error::{Error, ErrorCode, Result};

/// The metadata of one adapter file compared before and after a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileStamp {
    /// Length in bytes.
    pub len: u64,
    /// Modification time, nanoseconds since the Unix epoch (0 when unavailable).
    pub mtime_ns: i128,
    /// Status-change time in nanoseconds (unix; 0 elsewhere): changes on every write, even one
    /// that restores the modification time.
    pub ctime_ns: i128,
    /// Inode number (unix; 0 elsewhere): changes when the file is replaced by a rename.
    pub ino: u64,
    /// Device number (unix; 0 elsewhere).
    pub dev: u64,
}

impl FileStamp {
    /// The stamp of `meta` (metadata of the file itself, symlinks followed).
    pub fn of(meta: &std::fs::Metadata) -> Self {
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Self {
                len: meta.len(),
                mtime_ns,
                ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
                ino: meta.ino(),
                dev: meta.dev(),
            }
        }
        #[cfg(not(unix))]
        {
            Self {
                len: meta.len(),
                mtime_ns,
                ctime_ns: 0,
                ino: 0,
                dev: 0,
            }
        }
    }
}

/// An adapter directory's format and the stamp of each file it uses, in [`detect_files`] order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DirStamp {
    /// The detected format.
    pub format: AdapterFormat,
    /// `(file name, stamp)` per file the format reads.
    pub files: Vec<(String, FileStamp)>,
}

impl DirStamp {
    /// Stamps `dir`. Errors: those of [`detect_files`], and `IO` naming a file whose metadata
    /// cannot be read.
    pub fn of(dir: &Path) -> Result<Self> {
        let (format, names) = detect_files(dir)?;
        let mut files = Vec::with_capacity(names.len());
        for n in names {
            let p = dir.join(&n);
            let m = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?;
            files.push((n, FileStamp::of(&m)));
        }
        Ok(Self { format, files })
    }

    /// The first file that differs between `self` (before) and `after`: changed, vanished or
    /// appeared.
    fn first_difference(&self, after: &DirStamp) -> String {
        for (name, st) in &self.files {
            match after.files.iter().find(|(n, _)| n == name) {
                Some((_, s)) if s == st => {}
                Some(_) => return format!("{name} (changed)"),
                None => return format!("{name} (vanished)"),
            }
        }
        for (name, _) in &after.files {
            if !self.files.iter().any(|(n, _)| n == name) {
                return format!("{name} (appeared)");
            }
        }
        "the adapter format".into()
    }
}

/// How often and how patiently [`read_snapshot_with`] retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotRetry {
    /// Reads tried in all (at least 1).
    pub attempts: u32,
    /// Wait before retry `k` (1-based) is `k × backoff`.
    pub backoff: Duration,
}

impl Default for SnapshotRetry {
    /// 5 attempts, 20 ms more wait before each retry (at most 200 ms of waiting in all).
    fn default() -> Self {
        Self {
            attempts: 5,
            backoff: Duration::from_millis(20),
        }
    }
}

/// The files of one adapter, read consistently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The detected format.
    pub format: AdapterFormat,
    /// `(file name, contents)` in [`detect_files`] order.
    pub files: Vec<(String, Vec<u8>)>,
    /// The stamp that held before and after the read.
    pub stamp: DirStamp,
}

impl Snapshot {
    /// The content hash ([`generation_of`]) of the files read: what `load_adapter` stores as
    /// `NormalizedAdapter::generation`.
    pub fn content_hash(&self) -> String {
        let refs: Vec<(&str, &[u8])> = self
            .files
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        generation_of(&refs)
    }
}

/// Reads adapter `name` in `dir` as one snapshot through [`read_adapter_file`], with the default
/// [`SnapshotRetry`]. See [`read_snapshot_with`].
pub fn read_snapshot(dir: &Path, name: &str) -> Result<Snapshot> {
    read_snapshot_with(dir, name, SnapshotRetry::default(), &mut |d, f| {
        read_adapter_file(d, f)
    })
}

/// Reads adapter `name` in `dir` as one snapshot, reading each file with `read` (the engine
/// passes [`read_adapter_file`]; tests pass a step that writes between the two stamps).
///
/// Each attempt stamps the directory ([`DirStamp::of`]), reads every file, and stamps again; the
/// first attempt whose two stamps are equal is returned. An error of the first stamp is returned
/// as is (the adapter is not usable as it stands); a read error is returned as is when the stamps
/// agree (the file is stable and bad), else the attempt is retried like any other change. After
/// `retry.attempts` unsettled attempts: `IO`, naming the adapter, the directory and the file that
/// kept changing.
pub fn read_snapshot_with(
    dir: &Path,
    name: &str,
    retry: SnapshotRetry,
    read: &mut dyn FnMut(&Path, &str) -> Result<Vec<u8>>,
) -> Result<Snapshot> {
    let ctx = |e: Error| e.context(format!("adapter '{name}'"));
    let attempts = retry.attempts.max(1);
    let mut unsettled = String::new();
    for attempt in 0..attempts {
        if attempt > 0 {
            std::thread::sleep(retry.backoff * attempt);
        }
        let before = DirStamp::of(dir).map_err(ctx)?;
        let files: Result<Vec<(String, Vec<u8>)>> = before
            .files
            .iter()
            .map(|(n, _)| read(dir, n).map(|b| (n.clone(), b)))
            .collect();
        let after = DirStamp::of(dir);
        match (files, after) {
            (Ok(files), Ok(after)) if after == before => {
                return Ok(Snapshot {
                    format: before.format,
                    files,
                    stamp: before,
                })
            }
            (Err(e), Ok(after)) if after == before => return Err(ctx(e)),
            (_, Ok(after)) => unsettled = before.first_difference(&after),
            (_, Err(e)) => unsettled = format!("the file set ({})", e.message()),
        }
    }
    Err(Error::new(
        ErrorCode::Io,
        format!(
            "adapter '{name}': {}: {unsettled} kept changing while being read ({attempts} \
             attempts); write adapter files elsewhere and rename them into place",
            dir.display()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hf_dir(cfg: &[u8], weights: &[u8]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("adapter_config.json"), cfg).unwrap();
        std::fs::write(d.path().join("adapter_model.safetensors"), weights).unwrap();
        d
    }

    fn quick() -> SnapshotRetry {
        SnapshotRetry {
            attempts: 3,
            backoff: Duration::from_millis(1),
        }
    }

    #[test]
    fn a_stable_directory_reads_in_one_attempt() {
        let d = hf_dir(b"{}", b"weights");
        let mut calls = 0;
        let s = read_snapshot_with(d.path(), "a", quick(), &mut |d, f| {
            calls += 1;
            read_adapter_file(d, f)
        })
        .unwrap();
        assert_eq!(calls, 2);
        assert_eq!(s.format, AdapterFormat::HfSafetensors);
        assert_eq!(
            s.files,
            vec![
                ("adapter_config.json".to_string(), b"{}".to_vec()),
                ("adapter_model.safetensors".to_string(), b"weights".to_vec()),
            ]
        );
        assert_eq!(
            s.content_hash(),
            generation_of(&[
                ("adapter_config.json", b"{}"),
                ("adapter_model.safetensors", b"weights")
            ])
        );
    }

    /// The config is read (old), then rewritten before the weights are read: the first attempt
    /// would pair the old config with the new weights. The retry returns both new files.
    #[test]
    fn a_write_between_the_stamps_is_retried_and_never_mixed() {
        let d = hf_dir(b"{\"old\": 1}", b"old weights");
        let mut reads = 0;
        let s = read_snapshot_with(d.path(), "a", quick(), &mut |dir, f| {
            reads += 1;
            if reads == 2 {
                // Between the first attempt's stamps: a new config and new weights.
                std::fs::write(dir.join("adapter_config.json"), b"{\"new\": 22}").unwrap();
                std::fs::write(dir.join("adapter_model.safetensors"), b"new weights!").unwrap();
            }
            read_adapter_file(dir, f)
        })
        .unwrap();
        assert_eq!(reads, 4, "the torn first attempt was not retried");
        assert_eq!(s.files[0].1, b"{\"new\": 22}");
        assert_eq!(s.files[1].1, b"new weights!");
        assert_eq!(s.stamp, DirStamp::of(d.path()).unwrap());
    }

    /// An atomic replace (write elsewhere, rename) keeps the length; the new inode shows it.
    #[test]
    fn a_rename_into_place_with_the_same_length_is_seen() {
        let d = hf_dir(b"{}", b"AAAA");
        let mut reads = 0;
        let s = read_snapshot_with(d.path(), "a", quick(), &mut |dir, f| {
            reads += 1;
            let bytes = read_adapter_file(dir, f);
            if reads == 2 {
                let tmp = dir.join(".tmp");
                std::fs::write(&tmp, b"BBBB").unwrap();
                std::fs::rename(&tmp, dir.join("adapter_model.safetensors")).unwrap();
            }
            bytes
        })
        .unwrap();
        assert_eq!(reads, 4);
        assert_eq!(s.files[1].1, b"BBBB");
    }

    #[test]
    fn a_file_that_keeps_changing_is_refused_naming_it() {
        let d = hf_dir(b"{}", b"w");
        let mut n = 0usize;
        let e = read_snapshot_with(d.path(), "busy", quick(), &mut |dir, f| {
            let bytes = read_adapter_file(dir, f);
            if f == "adapter_model.safetensors" {
                n += 1;
                std::fs::write(dir.join(f), vec![b'w'; n + 1]).unwrap();
            }
            bytes
        })
        .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Io);
        let m = e.message();
        assert!(m.contains("adapter 'busy'"), "{m}");
        assert!(
            m.contains("adapter_model.safetensors (changed) kept changing"),
            "{m}"
        );
        assert!(m.contains("3 attempts"), "{m}");
        assert_eq!(n, 3);
    }

    #[test]
    fn a_file_vanishing_during_the_read_is_retried() {
        // TRT-LLM: config + weights; the .npy weights are swapped for a .bin mid-read.
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("model.lora_config.npy"), b"c").unwrap();
        std::fs::write(d.path().join("model.lora_weights.npy"), b"w").unwrap();
        let mut reads = 0;
        let s = read_snapshot_with(d.path(), "t", quick(), &mut |dir, f| {
            reads += 1;
            if reads == 1 {
                std::fs::remove_file(dir.join("model.lora_weights.npy")).unwrap();
                std::fs::write(dir.join("model.lora_weights.bin"), b"w2").unwrap();
            }
            read_adapter_file(dir, f)
        })
        .unwrap();
        assert_eq!(
            s.files,
            vec![
                ("model.lora_config.npy".to_string(), b"c".to_vec()),
                ("model.lora_weights.bin".to_string(), b"w2".to_vec()),
            ]
        );
    }

    #[test]
    fn a_stable_bad_file_fails_at_once_with_its_own_error() {
        let d = hf_dir(b"{}", b"w");
        let mut calls = 0;
        let e = read_snapshot_with(d.path(), "bad", quick(), &mut |_, f| {
            calls += 1;
            Err(Error::invalid_adapter(format!("{f}: broken")))
        })
        .unwrap_err();
        assert_eq!(calls, 1);
        assert_eq!(e.code(), ErrorCode::InvalidAdapter);
        assert_eq!(e.message(), "adapter 'bad': adapter_config.json: broken");
    }

    #[test]
    fn a_directory_that_is_no_adapter_fails_with_the_detection_error() {
        let d = tempfile::tempdir().unwrap();
        let e = read_snapshot(d.path(), "none").unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidAdapter);
        assert!(
            e.message().starts_with("adapter 'none': "),
            "{}",
            e.message()
        );
    }
}
