//! A minimal `torch.save` writer: a protocol-2 pickle of a `dict` of f32 tensors inside a
//! stored (uncompressed) zip whose records start on 64-byte boundaries, laid out the way
//! `torch.save` does (`<prefix>/data.pkl`, `<prefix>/data/<n>`, `byteorder`, `version`...), so
//! that both loraplex's reader and `torch.load(weights_only=True)` accept it.

use crate::error::{Error, Result};

/// One tensor to save: key, shape, row-major f32 elements.
pub struct TorchTensor<'a> {
    /// State-dict key.
    pub key: String,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Elements (`shape.product()` of them).
    pub data: &'a [f32],
}

fn put_int(p: &mut Vec<u8>, v: u64) {
    if v < 256 {
        p.extend_from_slice(&[b'K', v as u8]);
    } else if v < 65536 {
        p.push(b'M');
        p.extend_from_slice(&(v as u16).to_le_bytes());
    } else if v <= i32::MAX as u64 {
        p.push(b'J');
        p.extend_from_slice(&(v as i32).to_le_bytes());
    } else {
        // LONG1: 8 little-endian two's-complement bytes plus a 0 sign byte.
        p.extend_from_slice(&[0x8a, 9]);
        p.extend_from_slice(&v.to_le_bytes());
        p.push(0);
    }
}

fn put_str(p: &mut Vec<u8>, s: &str) {
    p.push(b'X');
    p.extend_from_slice(&(s.len() as u32).to_le_bytes());
    p.extend_from_slice(s.as_bytes());
}

fn put_tuple(p: &mut Vec<u8>, vals: &[u64]) {
    match vals.len() {
        0 => p.push(b')'),
        1..=3 => {
            for &v in vals {
                put_int(p, v);
            }
            p.push([0x85, 0x86, 0x87][vals.len() - 1]);
        }
        _ => {
            p.push(b'(');
            for &v in vals {
                put_int(p, v);
            }
            p.push(b't');
        }
    }
}

/// The pickle (`data.pkl`) of a dict mapping each key to `_rebuild_tensor_v2` of storage `i`.
fn pickle(tensors: &[TorchTensor<'_>]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'('];
    for (i, t) in tensors.iter().enumerate() {
        put_str(&mut p, &t.key);
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.push(b'(');
        put_str(&mut p, "storage");
        p.extend_from_slice(b"ctorch\nFloatStorage\n");
        put_str(&mut p, &i.to_string());
        put_str(&mut p, "cpu");
        put_int(&mut p, t.data.len() as u64);
        p.extend_from_slice(b"tQ");
        put_int(&mut p, 0);
        let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
        let mut strides = vec![1u64; shape.len()];
        for k in (0..shape.len().saturating_sub(1)).rev() {
            strides[k] = strides[k + 1] * shape[k + 1];
        }
        put_tuple(&mut p, &shape);
        put_tuple(&mut p, &strides);
        p.push(0x89); // NEWFALSE (requires_grad)
        p.extend_from_slice(b"ccollections\nOrderedDict\n)R"); // backward_hooks
        p.extend_from_slice(b"tR");
    }
    p.extend_from_slice(b"u.");
    p
}

struct ZipOut {
    buf: Vec<u8>,
    central: Vec<u8>,
    count: u16,
}

impl ZipOut {
    fn add(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let too_big = || Error::invalid_argument("torch zip writer: file over 4 GiB (no zip64)");
        let size = u32::try_from(data.len()).map_err(|_| too_big())?;
        let offset = u32::try_from(self.buf.len()).map_err(|_| too_big())?;
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let crc = crc.sum();
        let name_len = name.len() as u16;
        // "FB" extra field padding so that the data start is 64-byte aligned (as torch does).
        let base = self.buf.len() + 30 + name.len() + 4;
        let pad = (64 - base % 64) % 64;
        let common = |v: &mut Vec<u8>| {
            v.extend_from_slice(&20u16.to_le_bytes()); // version needed
            v.extend_from_slice(&0u16.to_le_bytes()); // flags
            v.extend_from_slice(&0u16.to_le_bytes()); // stored
            v.extend_from_slice(&0u16.to_le_bytes()); // time
            v.extend_from_slice(&0x21u16.to_le_bytes()); // date 1980-01-01
            v.extend_from_slice(&crc.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&name_len.to_le_bytes());
        };
        self.buf.extend_from_slice(&0x04034b50u32.to_le_bytes());
        common(&mut self.buf);
        self.buf
            .extend_from_slice(&((4 + pad) as u16).to_le_bytes());
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b"FB");
        self.buf.extend_from_slice(&(pad as u16).to_le_bytes());
        self.buf.resize(self.buf.len() + pad, b'Z');
        self.buf.extend_from_slice(data);
        self.central.extend_from_slice(&0x02014b50u32.to_le_bytes());
        self.central.extend_from_slice(&20u16.to_le_bytes()); // made by
        common(&mut self.central);
        self.central.extend_from_slice(&[0; 8]); // extra, comment, disk, internal attrs
        self.central.extend_from_slice(&0u32.to_le_bytes()); // external attrs
        self.central.extend_from_slice(&offset.to_le_bytes());
        self.central.extend_from_slice(name.as_bytes());
        self.count = self
            .count
            .checked_add(1)
            .ok_or_else(|| Error::invalid_argument("torch zip writer: too many records"))?;
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<u8>> {
        let cd_off = u32::try_from(self.buf.len())
            .map_err(|_| Error::invalid_argument("torch zip writer: file over 4 GiB"))?;
        let cd_len = self.central.len() as u32;
        self.buf.extend_from_slice(&self.central);
        self.buf.extend_from_slice(&0x06054b50u32.to_le_bytes());
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.extend_from_slice(&self.count.to_le_bytes());
        self.buf.extend_from_slice(&self.count.to_le_bytes());
        self.buf.extend_from_slice(&cd_len.to_le_bytes());
        self.buf.extend_from_slice(&cd_off.to_le_bytes());
        self.buf.extend_from_slice(&0u16.to_le_bytes());
        Ok(self.buf)
    }
}

/// Serialises `tensors` as `torch.save(dict)` would, with every record under `prefix/`.
///
/// Errors (`INVALID_ARGUMENT`): a tensor whose data length differs from its shape, or an
/// archive beyond 4 GiB / 65535 records (no zip64 support).
pub fn write_torch_zip(tensors: &[TorchTensor<'_>], prefix: &str) -> Result<Vec<u8>> {
    for t in tensors {
        if t.shape.iter().product::<usize>() != t.data.len() {
            return Err(Error::invalid_argument(format!(
                "torch zip writer: tensor '{}' has {} elements for shape {:?}",
                t.key,
                t.data.len(),
                t.shape
            )));
        }
    }
    let mut z = ZipOut {
        buf: Vec::new(),
        central: Vec::new(),
        count: 0,
    };
    z.add(&format!("{prefix}/data.pkl"), &pickle(tensors))?;
    z.add(&format!("{prefix}/.format_version"), b"1")?;
    z.add(&format!("{prefix}/.storage_alignment"), b"64")?;
    z.add(&format!("{prefix}/byteorder"), b"little")?;
    for (i, t) in tensors.iter().enumerate() {
        let bytes: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        z.add(&format!("{prefix}/data/{i}"), &bytes)?;
    }
    z.add(&format!("{prefix}/version"), b"3\n")?;
    z.add(
        &format!("{prefix}/.data/serialization_id"),
        b"0000000000000000000000000000000000000000",
    )?;
    z.finish()
}
