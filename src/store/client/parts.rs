//! The one part reader of S3 multipart, GCS resumable and Azure block uploads, the
//! buffers it fills, and the checksums computed while it fills them.
//!
//! Why: the buffers are the only per-transfer memory of a cloud upload. Every one comes
//! from the store's [`PartPool`] and goes back to it: the part buffer of a streamed
//! upload, and the whole-object buffer the engine's upload stage downloads a small
//! file into. The pool reuses them (the smallest idle buffer that holds what is asked
//! for) and keeps the bytes of the buffers it has made, idle or in use, within a limit
//! the engine sets ([`PartPool::limit`]: `SP_TASK_SYNC_CONCURRENCY` x one request's
//! size), so a run's buffer memory never exceeds it, whatever the sizes of the files; a
//! request for a buffer waits until one comes back when the limit is reached. A request
//! body is a slice of a buffer, never a copy. Objects whose announced size is below one
//! part get a buffer of their size (below [`SMALL`], one of their own: journal entries,
//! metadata).
//!
//! The checksums a provider asks for are computed over the bytes as they are read
//! from the source into the buffer, so a resend after a network failure carries the
//! same checksum and a byte flipped on the way is refused by the store: SHA-256 per
//! part (S3's signed payload, `x-amz-content-sha256`), CRC-64/NVME per part (Azure's
//! `x-ms-content-crc64`) and CRC32C of the whole object (GCS `x-goog-hash`). The two
//! CRCs are table-driven, eight bytes at a time (slicing-by-8), a few lines each.

use std::io::{self, Read};
use std::ops::{Deref, DerefMut};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::checksum::{crc32c_update, crc64_update, hex, CRC32C_INIT, CRC64_INIT};
use crate::store::{StoreError, StoreErrorKind};

/// Objects announced below this size get a buffer of their own size instead of a
/// pooled one (journal entries, metadata).
pub const SMALL: usize = 64 * 1024;

/// Pooled buffers are made in multiples of this, so that files of about one size
/// reuse each other's buffers.
const GRANULE: usize = 16 * 1024;

/// How often a request for a buffer that waits looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

/// The buffers of one store, reused; see the module comment.
pub struct PartPool {
    part: usize,
    state: Mutex<Buffers>,
    returned: Condvar,
}

struct Buffers {
    idle: Vec<Vec<u8>>,
    /// Bytes of every buffer made and not dropped, idle or in use.
    made: usize,
    limit: usize,
}

impl PartPool {
    /// A pool for parts of `part` bytes, without a limit until [`PartPool::limit`].
    pub fn new(part: usize) -> PartPool {
        PartPool {
            part: part.max(1),
            state: Mutex::new(Buffers {
                idle: Vec::new(),
                made: 0,
                limit: usize::MAX,
            }),
            returned: Condvar::new(),
        }
    }

    /// The size of one part.
    pub fn part_size(&self) -> usize {
        self.part
    }

    /// Keeps the bytes of the buffers made (idle or in use) within `bytes`; a buffer
    /// larger than that alone is still made when no other one exists.
    pub fn limit(&self, bytes: usize) {
        self.lock().limit = bytes.max(1);
        self.returned.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, Buffers> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A buffer of at least `len` bytes: the smallest idle one that holds them, or a new
    /// one when the limit leaves room (idle buffers are dropped to make it), or else
    /// the first one that comes back. Waiting ends when the process is asked to stop.
    pub fn take(&self, len: usize) -> Result<Buffer<'_>, StoreError> {
        let len = len.max(1);
        let size = len.div_ceil(GRANULE) * GRANULE;
        let mut st = self.lock();
        loop {
            let fits = st
                .idle
                .iter()
                .enumerate()
                .filter(|(_, b)| b.len() >= len)
                .min_by_key(|(_, b)| b.len())
                .map(|(i, _)| i);
            if let Some(i) = fits {
                let bytes = st.idle.swap_remove(i);
                return Ok(Buffer { pool: self, bytes });
            }
            while st.made + size > st.limit && !st.idle.is_empty() {
                let dropped = st.idle.pop().map_or(0, |b| b.len());
                st.made -= dropped;
            }
            if st.made + size <= st.limit || st.made == 0 {
                st.made += size;
                drop(st);
                return Ok(Buffer {
                    pool: self,
                    bytes: vec![0u8; size],
                });
            }
            if crate::shutdown::requested() {
                return Err(StoreError::transient(
                    "stopping: the process was asked to stop while waiting for an upload buffer",
                ));
            }
            crate::notify::alive();
            st = self
                .returned
                .wait_timeout(st, STOP_POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn give_back(&self, bytes: Vec<u8>) {
        let mut st = self.lock();
        if st.made > st.limit {
            // The limit was lowered meanwhile: this one goes.
            st.made -= bytes.len();
        } else {
            st.idle.push(bytes);
        }
        drop(st);
        self.returned.notify_one();
    }

    /// How many buffers wait for reuse, and the bytes of all buffers made.
    #[cfg(test)]
    fn usage(&self) -> (usize, usize) {
        let st = self.lock();
        (st.idle.len(), st.made)
    }
}

/// A buffer of a [`PartPool`], given back when dropped. Its bytes are its whole size
/// (zeroed when it was made, as its last user left them after that).
pub struct Buffer<'p> {
    pool: &'p PartPool,
    bytes: Vec<u8>,
}

impl Deref for Buffer<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl DerefMut for Buffer<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl Drop for Buffer<'_> {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.bytes));
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

/// The buffer a part is read into.
enum Space<'p> {
    /// Not taken yet.
    None,
    /// A small object's own buffer.
    Own(Vec<u8>),
    Pooled(Buffer<'p>),
}

impl Space<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Space::None => &[],
            Space::Own(v) => v,
            Space::Pooled(b) => b,
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Space::None => &mut [],
            Space::Own(v) => v,
            Space::Pooled(b) => b,
        }
    }
}

/// Reads a source part by part into one buffer; see the module comment.
pub struct PartReader<'p> {
    src_len_hint: Option<u64>,
    /// An announced size up to this is read whole into a buffer of its size.
    whole_up_to: u64,
    pool: &'p PartPool,
    space: Space<'p>,
    /// The bytes of the space a part is read into (a pooled buffer may be larger).
    cap: usize,
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
    /// Parts of the pool's part size; an object announced at most one part long is
    /// read whole into a buffer of its size.
    pub fn new(pool: &'p PartPool, size: Option<u64>, sums: Sums) -> PartReader<'p> {
        Self::reading_whole(pool, size, 0, sums)
    }

    /// [`PartReader::new`], reading an object announced at most `whole_up_to` bytes
    /// long whole into one buffer (S3's single PUT up to its multipart threshold).
    pub fn reading_whole(
        pool: &'p PartPool,
        size: Option<u64>,
        whole_up_to: u64,
        sums: Sums,
    ) -> PartReader<'p> {
        PartReader {
            src_len_hint: size,
            whole_up_to,
            pool,
            space: Space::None,
            cap: 0,
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
        let part = self.pool.part;
        if self.number == 0 {
            // An announced size gets a buffer of its size; one byte more tells a source
            // that is longer than announced, which then gets a whole part.
            match self.src_len_hint {
                Some(n) if n < part.min(SMALL) as u64 => self.own(n as usize + 1),
                Some(n) if n < part as u64 || n <= self.whole_up_to => {
                    self.pooled(n as usize + 1)?
                }
                _ => self.pooled(part)?,
            }
        }
        if let Some(b) = self.ahead.take() {
            self.space.bytes_mut()[0] = b;
            self.update(0, 1);
            self.len = 1;
        }
        loop {
            let cap = self.cap;
            let n = fill(src, &mut self.space.bytes_mut()[self.len..cap])?;
            self.update(self.len, n);
            self.len += n;
            if self.len < cap {
                break; // the source ended
            }
            if cap >= part {
                let mut one = [0u8; 1];
                if fill(src, &mut one)? == 1 {
                    self.ahead = Some(one[0]);
                }
                break;
            }
            // Longer than announced: move to a full part buffer and read on. (The bytes
            // so far leave the pool first, so that a full pool cannot hold this up.)
            let head = self.space.bytes()[..self.len].to_vec();
            self.space = Space::None;
            self.pooled(part)?;
            self.space.bytes_mut()[..head.len()].copy_from_slice(&head);
        }
        self.number += 1;
        let last = self.ahead.is_none();
        let len = self.len;
        Ok(Some(Part {
            bytes: &self.space.bytes()[..len],
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
        &self.space.bytes()[..self.len]
    }

    /// CRC32C of every byte read so far (the whole object after the last part).
    pub fn crc32c(&self) -> u32 {
        self.crc32c ^ CRC32C_INIT
    }

    fn own(&mut self, len: usize) {
        self.space = Space::Own(vec![0u8; len]);
        self.cap = len;
    }

    fn pooled(&mut self, len: usize) -> Result<(), StoreError> {
        self.space = Space::Pooled(self.pool.take(len)?);
        self.cap = len;
        Ok(())
    }

    fn update(&mut self, from: usize, n: usize) {
        let bytes = &self.space.bytes()[from..from + n];
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

/// Reads until `buf` is full or `src` ends; returns how many bytes were read.
pub fn fill(src: &mut dyn Read, buf: &mut [u8]) -> Result<usize, StoreError> {
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
        assert_eq!(pool.usage().0, 1, "the buffer went back to the pool");
        // Exactly one part: the read-ahead finds nothing, so it is the last.
        let mut r = PartReader::new(&pool, None, Sums::default());
        let mut src = &b"abcd"[..];
        assert!(r.next_part(&mut src).unwrap().unwrap().last);
        assert!(r.next_part(&mut src).unwrap().is_none());
        drop(r);
        assert_eq!(pool.usage().0, 1, "reused, not a second buffer");
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

    /// An object announced up to the S3 threshold is read whole, past the part size.
    #[test]
    fn an_object_up_to_the_whole_size_is_one_part() {
        let pool = PartPool::new(4);
        let mut r = PartReader::reading_whole(&pool, Some(10), 10, Sums::default());
        let mut src = &b"abcdefghij"[..];
        let p = r.next_part(&mut src).unwrap().unwrap();
        assert_eq!((p.bytes, p.last), (&b"abcdefghij"[..], true));
        assert!(r.next_part(&mut src).unwrap().is_none());
    }

    /// The bytes of the buffers made stay within the limit: an idle buffer that holds
    /// the request is reused, idle ones are dropped to make room for a larger one, and
    /// a request waits for a buffer in use to come back.
    #[test]
    fn the_pool_keeps_its_buffers_within_the_limit() {
        let pool = PartPool::new(4 * GRANULE);
        pool.limit(4 * GRANULE);
        let small = pool.take(100).unwrap();
        assert_eq!(small.len(), GRANULE, "made in granules");
        drop(small);
        let again = pool.take(GRANULE).unwrap();
        assert_eq!(pool.usage(), (0, GRANULE), "the idle buffer was reused");
        drop(again);
        let part = pool.take(4 * GRANULE).unwrap();
        assert_eq!(
            pool.usage(),
            (0, 4 * GRANULE),
            "the idle buffer was dropped to make room"
        );
        std::thread::scope(|s| {
            let waiter = s.spawn(|| pool.take(GRANULE).map(|b| b.len()));
            std::thread::sleep(Duration::from_millis(50));
            assert!(!waiter.is_finished(), "made a buffer beyond the limit");
            drop(part);
            assert_eq!(waiter.join().unwrap().unwrap(), 4 * GRANULE);
        });
        assert_eq!(pool.usage(), (1, 4 * GRANULE));
        // A buffer larger than the limit is made when it is the only one, and dropped
        // when it comes back.
        let large = pool.take(9 * GRANULE).unwrap();
        assert_eq!(pool.usage(), (0, 9 * GRANULE));
        drop(large);
        assert_eq!(pool.usage(), (0, 0));
    }
}
