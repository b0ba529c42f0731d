//! The one part reader of S3 multipart, GCS resumable and Azure block uploads, the
//! buffers it fills, and the checksums computed while it fills them.
//!
//! Why: the part buffer is the only per-transfer memory of a cloud upload. Buffers of
//! the part size come from a [`PartPool`] owned by the store and go back to it when
//! the upload ends, so a run allocates at most one per worker (the pool grows to the
//! number of uploads in flight at once, `SP_TASK_SYNC_CONCURRENCY`) and reuses them;
//! the request body is a slice of that buffer, never a copy. Objects whose announced
//! size is below one part (journal entries, metadata) get a buffer of their size.
//!
//! The checksums a provider asks for are computed over the bytes as they are read
//! from the source into the buffer, so a resend after a network failure carries the
//! same checksum and a byte flipped on the way is refused by the store: SHA-256 per
//! part (S3's signed payload, `x-amz-content-sha256`), CRC-64/NVME per part (Azure's
//! `x-ms-content-crc64`) and CRC32C of the whole object (GCS `x-goog-hash`). The two
//! CRCs are table-driven, eight bytes at a time (slicing-by-8), a few lines each.

use std::io::{self, Read};
use std::sync::Mutex;

use crate::checksum::{crc32c_update, crc64_update, hex, CRC32C_INIT, CRC64_INIT};
use crate::store::{StoreError, StoreErrorKind};

/// Objects announced below this size get a buffer of their own size instead of a
/// pooled part (journal entries, metadata).
pub const SMALL: usize = 64 * 1024;

/// Reusable buffers of one part size.
pub struct PartPool {
    size: usize,
    free: Mutex<Vec<Vec<u8>>>,
}

impl PartPool {
    pub fn new(size: usize) -> PartPool {
        PartPool {
            size: size.max(1),
            free: Mutex::new(Vec::new()),
        }
    }

    fn take(&self) -> Vec<u8> {
        let reused = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        reused.unwrap_or_else(|| vec![0u8; self.size])
    }

    fn give_back(&self, buf: Vec<u8>) {
        if buf.len() == self.size {
            self.free
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(buf);
        }
    }

    /// How many buffers wait for reuse.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Which checksums the provider needs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sums {
    pub sha256: bool,
    pub crc64: bool,
    pub crc32c_whole: bool,
}

/// One part as it is sent.
pub struct Part<'a> {
    pub bytes: &'a [u8],
    /// 1-based.
    pub number: u32,
    /// Offset of the first byte in the object.
    pub offset: u64,
    /// No byte follows this part.
    pub last: bool,
    /// Lower-case hex SHA-256 of `bytes`, when asked for.
    pub sha256: Option<String>,
    /// CRC-64/NVME of `bytes`, when asked for.
    pub crc64: Option<u64>,
}

/// Reads a source part by part into one buffer; see the module comment.
pub struct PartReader<'p> {
    src_len_hint: Option<u64>,
    pool: &'p PartPool,
    buf: Vec<u8>,
    pooled: bool,
    len: usize,
    /// One byte read ahead after a full part (it begins the next one).
    ahead: Option<u8>,
    number: u32,
    offset: u64,
    sums: Sums,
    crc32c: u32,
    sha: Option<ring::digest::Context>,
    crc64: u64,
}

impl<'p> PartReader<'p> {
    pub fn new(pool: &'p PartPool, size: Option<u64>, sums: Sums) -> PartReader<'p> {
        PartReader {
            src_len_hint: size,
            pool,
            buf: Vec::new(),
            pooled: false,
            len: 0,
            ahead: None,
            number: 0,
            offset: 0,
            sums,
            crc32c: CRC32C_INIT,
            sha: None,
            crc64: CRC64_INIT,
        }
    }

    /// Reads the next part; `None` after the last one. A read error of the source is
    /// [`StoreErrorKind::Source`].
    pub fn next_part(&mut self, src: &mut dyn Read) -> Result<Option<Part<'_>>, StoreError> {
        if self.number > 0 && self.ahead.is_none() {
            return Ok(None);
        }
        self.offset += self.len as u64;
        self.len = 0;
        self.sha = self
            .sums
            .sha256
            .then(|| ring::digest::Context::new(&ring::digest::SHA256));
        self.crc64 = CRC64_INIT;
        let part = self.pool.size;
        if self.number == 0 {
            // Small announced sizes get their own small buffer; one byte more tells a
            // source that is longer than announced, which then gets a whole part.
            match self.src_len_hint {
                Some(n) if n < part.min(SMALL) as u64 => self.buf = vec![0u8; n as usize + 1],
                _ => self.take_pooled(),
            }
        } else if !self.pooled {
            self.take_pooled();
        }
        if let Some(b) = self.ahead.take() {
            self.buf[0] = b;
            self.update(0, 1);
            self.len = 1;
        }
        loop {
            let end = self.buf.len();
            let n = fill(src, &mut self.buf[self.len..end])?;
            self.update(self.len, n);
            self.len += n;
            if self.len < self.buf.len() {
                break; // the source ended
            }
            if self.pooled {
                let mut one = [0u8; 1];
                if fill(src, &mut one)? == 1 {
                    self.ahead = Some(one[0]);
                }
                break;
            }
            // Longer than announced: move to a full part buffer and read on.
            let small = std::mem::take(&mut self.buf);
            self.take_pooled();
            self.buf[..small.len()].copy_from_slice(&small);
        }
        self.number += 1;
        let last = self.ahead.is_none();
        Ok(Some(Part {
            bytes: &self.buf[..self.len],
            number: self.number,
            offset: self.offset,
            last,
            sha256: self.sha.take().map(|c| hex(c.finish().as_ref())),
            crc64: self.sums.crc64.then_some(self.crc64 ^ CRC64_INIT),
        }))
    }

    /// Whether the part read last is the last one.
    pub fn is_last(&self) -> bool {
        self.ahead.is_none()
    }

    /// The bytes of the part read last.
    pub fn current(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// CRC32C of every byte read so far (the whole object after the last part).
    pub fn crc32c(&self) -> u32 {
        self.crc32c ^ CRC32C_INIT
    }

    fn take_pooled(&mut self) {
        self.buf = self.pool.take();
        self.pooled = true;
    }

    fn update(&mut self, from: usize, n: usize) {
        let bytes = &self.buf[from..from + n];
        if let Some(sha) = self.sha.as_mut() {
            sha.update(bytes);
        }
        if self.sums.crc64 {
            self.crc64 = crc64_update(self.crc64, bytes);
        }
        if self.sums.crc32c_whole {
            self.crc32c = crc32c_update(self.crc32c, bytes);
        }
    }
}

impl Drop for PartReader<'_> {
    fn drop(&mut self) {
        if self.pooled {
            self.pool.give_back(std::mem::take(&mut self.buf));
        }
    }
}

/// Reads until `buf` is full or `src` ends; returns how many bytes were read.
fn fill(src: &mut dyn Read, buf: &mut [u8]) -> Result<usize, StoreError> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StoreError::new(StoreErrorKind::Source, e.to_string())),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::{crc32c, crc64, sha256_hex};

    #[test]
    fn parts_reuse_one_buffer_and_mark_the_last() {
        let pool = PartPool::new(4);
        let data = b"abcdefghij".to_vec();
        let sums = Sums {
            sha256: true,
            crc64: true,
            crc32c_whole: true,
        };
        let mut seen = Vec::new();
        {
            let mut r = PartReader::new(&pool, None, sums);
            let mut src = &data[..];
            while let Some(p) = r.next_part(&mut src).unwrap() {
                assert_eq!(p.sha256.as_deref(), Some(sha256_hex(p.bytes).as_str()));
                assert_eq!(p.crc64, Some(crc64(p.bytes)));
                seen.push((p.bytes.to_vec(), p.number, p.offset, p.last));
            }
            assert_eq!(r.crc32c(), crc32c(&data));
        }
        assert_eq!(
            seen,
            vec![
                (b"abcd".to_vec(), 1, 0, false),
                (b"efgh".to_vec(), 2, 4, false),
                (b"ij".to_vec(), 3, 8, true)
            ]
        );
        assert_eq!(pool.idle(), 1, "the buffer went back to the pool");
        // Exactly one part: the read-ahead finds nothing, so it is the last.
        let mut r = PartReader::new(&pool, None, Sums::default());
        let mut src = &b"abcd"[..];
        assert!(r.next_part(&mut src).unwrap().unwrap().last);
        assert!(r.next_part(&mut src).unwrap().is_none());
        drop(r);
        assert_eq!(pool.idle(), 1, "reused, not a second buffer");
        // A small hint gets a small buffer; a source longer than announced grows.
        let mut r = PartReader::new(&pool, Some(2), Sums::default());
        let mut src = &b"abcdef"[..];
        let p = r.next_part(&mut src).unwrap().unwrap();
        assert_eq!((p.bytes, p.last), (&b"abcd"[..], false));
        let p = r.next_part(&mut src).unwrap().unwrap();
        assert_eq!((p.bytes, p.last, p.offset), (&b"ef"[..], true, 4));
        let mut r = PartReader::new(&pool, Some(3), Sums::default());
        let mut src = &b"abc"[..];
        let p = r.next_part(&mut src).unwrap().unwrap();
        assert_eq!((p.bytes, p.last), (&b"abc"[..], true));
        let mut r = PartReader::new(&pool, Some(0), Sums::default());
        let p = r.next_part(&mut &b""[..]).unwrap().unwrap();
        assert!(p.bytes.is_empty() && p.last);
    }
}
