//! Safe reading of (optionally gzip-compressed) tar archives such as `.nemo` files.
//!
//! Nothing is ever unpacked to disk: regular-file members are read into memory. The reader
//! refuses anything that could escape or surprise: members whose path is absolute or contains
//! `..`, symlink and hardlink members, device/fifo members, duplicate member names, non-UTF-8
//! names, members whose declared size exceeds what the archive can hold, and (for gzip) more
//! decompressed bytes than [`ArchiveLimits::max_decompressed`] allows, so that a gzip bomb errors
//! instead of exhausting memory. Leading `./` and `.` components are stripped from names.

use std::collections::BTreeMap;
use std::io::Read;

use crate::error::{Error, Result};

/// Size bounds applied while reading an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Largest total of member bytes read from a gzip archive (decompressed). Plain tars are
    /// bounded by their file size instead.
    pub max_decompressed: u64,
    /// Largest single member.
    pub max_member: u64,
}

impl ArchiveLimits {
    /// The limits used for a compressed file of `compressed_len` bytes: decompressed output up
    /// to `max(256 MiB, 64 × compressed size)`, never above 32 GiB; members up to the same bound.
    /// Adapter weights are close to incompressible, so real files stay far below the ratio.
    pub fn for_compressed(compressed_len: u64) -> Self {
        let cap = compressed_len.saturating_mul(64).clamp(256 << 20, 32 << 30);
        Self {
            max_decompressed: cap,
            max_member: cap,
        }
    }
}

/// The regular-file members of an archive, by normalised path (no leading `./`).
pub type Members = BTreeMap<String, Vec<u8>>;

/// A reader that fails (instead of truncating) once more than `cap` bytes have been read.
struct CappedReader<R> {
    inner: R,
    read: u64,
    cap: u64,
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // Read at most cap + 1 bytes in total so that exceeding the cap is detected.
        let left = self.cap.saturating_add(1).saturating_sub(self.read);
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if n == 0 {
            return Err(std::io::Error::other(GZIP_CAP_MSG));
        }
        let got = self.inner.read(&mut buf[..n])?;
        self.read += got as u64;
        if self.read > self.cap {
            return Err(std::io::Error::other(GZIP_CAP_MSG));
        }
        Ok(got)
    }
}

const GZIP_CAP_MSG: &str = "decompressed size exceeds the limit";

/// Reads tar or tar.gz bytes; `what` names the archive in errors.
///
/// Errors (`INVALID_ADAPTER`): unsafe or duplicate member names, link or special members,
/// declared sizes beyond the archive or the limits, decompressed output beyond the limit,
/// truncated or corrupt archives.
pub fn read_tar_bytes(bytes: &[u8], what: &str, limits: ArchiveLimits) -> Result<Members> {
    let gz = bytes.starts_with(&[0x1f, 0x8b]);
    if gz {
        // Multi-member gzip (concatenated streams) is valid gzip; decode all members.
        let dec = flate2::read::MultiGzDecoder::new(bytes);
        let capped = CappedReader {
            inner: dec,
            read: 0,
            cap: limits.max_decompressed,
        };
        read_entries(
            capped,
            what,
            limits.max_member.min(limits.max_decompressed),
            None,
        )
    } else {
        let len = bytes.len() as u64;
        read_entries(bytes, what, limits.max_member.min(len), Some(len))
    }
}

fn map_io(what: &str, gz: bool, e: std::io::Error) -> Error {
    let s = e.to_string();
    if s.contains(GZIP_CAP_MSG) {
        Error::invalid_adapter(format!(
            "{what}: gzip archive decompresses to more bytes than allowed (possible gzip bomb)"
        ))
    } else if gz {
        Error::invalid_adapter(format!("{what}: truncated or corrupt tar.gz archive: {s}"))
    } else {
        Error::invalid_adapter(format!("{what}: truncated or corrupt tar archive: {s}"))
    }
}

/// Normalises a member name: strips `./` and `.` components; refuses absolute paths and `..`.
pub fn normalize_member_name(raw: &[u8], what: &str) -> Result<String> {
    let name = std::str::from_utf8(raw)
        .map_err(|_| Error::invalid_adapter(format!("{what}: member name is not valid UTF-8")))?;
    if name.starts_with('/') || name.starts_with('\\') || name.contains(":\\") {
        return Err(Error::invalid_adapter(format!(
            "{what}: member '{name}' has an absolute path"
        )));
    }
    let mut parts = Vec::new();
    for c in name.split(['/', '\\']) {
        match c {
            "" | "." => {}
            ".." => {
                return Err(Error::invalid_adapter(format!(
                    "{what}: member '{name}' contains '..' (path traversal)"
                )))
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

/// `archive_len` is `Some(file size)` for a plain tar (declared sizes are checked against the
/// bytes left after each member's header), `None` for gzip (checked against `max_member`).
fn read_entries<R: Read>(
    reader: R,
    what: &str,
    max_member: u64,
    archive_len: Option<u64>,
) -> Result<Members> {
    let gz = archive_len.is_none();
    let mut ar = tar::Archive::new(reader);
    let mut out = Members::new();
    let mut budget = max_member;
    let entries = ar.entries().map_err(|e| map_io(what, gz, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| map_io(what, gz, e))?;
        let raw = entry.path_bytes().into_owned();
        let name = normalize_member_name(&raw, what)?;
        let ty = entry.header().entry_type();
        use tar::EntryType as T;
        match ty {
            T::Directory => continue,
            T::Regular | T::Continuous => {}
            T::Symlink | T::Link => {
                return Err(Error::invalid_adapter(format!(
                    "{what}: member '{name}' is a {} (links are refused)",
                    if ty == T::Symlink {
                        "symlink"
                    } else {
                        "hardlink"
                    }
                )))
            }
            other => {
                return Err(Error::invalid_adapter(format!(
                    "{what}: member '{name}' has unsupported tar entry type {:?}",
                    other
                )))
            }
        }
        let size = entry.header().size().map_err(|e| map_io(what, gz, e))?;
        if let Some(len) = archive_len {
            budget = budget.min(len.saturating_sub(entry.raw_file_position()));
        }
        if size > budget {
            return Err(Error::invalid_adapter(if gz {
                format!(
                    "{what}: member '{name}' declares {size} bytes, beyond the remaining \
                     decompressed-size limit of {budget} bytes (possible gzip bomb)"
                )
            } else {
                format!(
                    "{what}: member '{name}' declares {size} bytes but at most {budget} bytes of \
                     the archive are left for it (truncated or corrupt tar)"
                )
            }));
        }
        budget -= size;
        if name.is_empty() {
            return Err(Error::invalid_adapter(format!(
                "{what}: regular-file member with an empty name"
            )));
        }
        let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        entry
            .read_to_end(&mut data)
            .map_err(|e| map_io(what, gz, e))?;
        if data.len() as u64 != size {
            return Err(Error::invalid_adapter(format!(
                "{what}: member '{name}' is truncated ({} of {size} bytes)",
                data.len()
            )));
        }
        if out.insert(name.clone(), data).is_some() {
            return Err(Error::invalid_adapter(format!(
                "{what}: member '{name}' appears more than once"
            )));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(normalize_member_name(b"./a/b", "t").unwrap(), "a/b");
        assert_eq!(normalize_member_name(b"./", "t").unwrap(), "");
        assert!(normalize_member_name(b"a/../b", "t").is_err());
        assert!(normalize_member_name(b"/etc/passwd", "t").is_err());
    }

    #[test]
    fn capped_reader_errors() {
        let data = [0u8; 100];
        let mut r = CappedReader {
            inner: &data[..],
            read: 0,
            cap: 50,
        };
        let mut v = Vec::new();
        assert!(r.read_to_end(&mut v).is_err());
        let mut r = CappedReader {
            inner: &data[..],
            read: 0,
            cap: 100,
        };
        let mut v = Vec::new();
        assert_eq!(r.read_to_end(&mut v).unwrap(), 100);
    }
}
