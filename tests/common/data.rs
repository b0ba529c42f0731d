//! Deterministic test data: the one generator of the tests (xorshift64, seeded), the
//! pattern bytes it makes as a reader (any length, never held whole), and a reader that
//! breaks like a download cut off.

use std::io::{self, Read};

/// A small deterministic generator: the same seed, the same numbers.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value: 0 becomes 1, which xorshift needs).
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Deterministic bytes of a given length, produced while read (never held whole).
pub struct PatternReader {
    left: u64,
    rng: Rng,
}

impl PatternReader {
    pub fn new(len: u64, seed: u64) -> PatternReader {
        PatternReader {
            left: len,
            rng: Rng::new(seed),
        }
    }

    /// What a reader of `len` and `seed` gives, in memory.
    pub fn bytes(len: u64, seed: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(len as usize);
        PatternReader::new(len, seed).read_to_end(&mut v).unwrap();
        v
    }
}

impl Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        for b in &mut buf[..n] {
            *b = self.rng.next_u64() as u8;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Gives `good` bytes, then fails like a dropped download.
pub struct FailingReader {
    inner: PatternReader,
    good: u64,
}

impl FailingReader {
    pub fn new(good: u64) -> FailingReader {
        FailingReader {
            inner: PatternReader::new(u64::MAX, 7),
            good,
        }
    }
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.good == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "download cut off (test)",
            ));
        }
        let n = (buf.len() as u64).min(self.good) as usize;
        self.good -= n as u64;
        self.inner.read(&mut buf[..n])
    }
}
