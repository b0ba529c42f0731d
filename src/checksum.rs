//! The checksums the connector computes while bytes stream: SHA-256 (S3 signs it),
//! CRC-32C (GCS checks it, and the archive manifest records it) and CRC-64/NVME (Azure
//! checks it), with their hex forms.
//!
//! A leaf: the platform side, the stores and the archive tools all use them.

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lower-case hex SHA-256 of `bytes` (ring).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

pub const CRC32C_INIT: u32 = 0xFFFF_FFFF;
pub const CRC64_INIT: u64 = u64::MAX;

/// Slicing-by-8 tables of a reflected CRC with polynomial `poly` (reversed form).
const fn tables(poly: u64, width: u32) -> [[u64; 256]; 8] {
    let mut t = [[0u64; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u64;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 { (c >> 1) ^ poly } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mask = if width == 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    };
    let mut s = 1;
    while s < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[s - 1][i];
            t[s][i] = ((prev >> 8) ^ t[0][(prev & 0xFF) as usize]) & mask;
            i += 1;
        }
        s += 1;
    }
    t
}

static CRC32C_TABLES: [[u64; 256]; 8] = tables(0x82F6_3B78, 32);
static CRC64_TABLES: [[u64; 256]; 8] = tables(0x9A6C_9329_AC4B_C9B5, 64);

fn sliced(t: &[[u64; 256]; 8], mut crc: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let v = crc ^ u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        crc = t[7][(v & 0xFF) as usize]
            ^ t[6][((v >> 8) & 0xFF) as usize]
            ^ t[5][((v >> 16) & 0xFF) as usize]
            ^ t[4][((v >> 24) & 0xFF) as usize]
            ^ t[3][((v >> 32) & 0xFF) as usize]
            ^ t[2][((v >> 40) & 0xFF) as usize]
            ^ t[1][((v >> 48) & 0xFF) as usize]
            ^ t[0][(v >> 56) as usize];
    }
    for &b in chunks.remainder() {
        crc = t[0][((crc ^ b as u64) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

/// Continues a CRC32C (Castagnoli) over `bytes`; start from `!0`, finish with `^ !0`.
/// On x86-64 CPUs with SSE 4.2 the CPU's own CRC32 instruction does it, eight bytes a
/// step (about ten times the tables' speed: every stored byte passes here once for the
/// archive manifest); elsewhere the slicing-by-8 tables.
pub fn crc32c_update(crc: u32, bytes: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU was just checked to have the instructions.
            return unsafe { crc32c_sse42(crc, bytes) };
        }
    }
    sliced(&CRC32C_TABLES, crc as u64, bytes) as u32
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn crc32c_sse42(crc: u32, bytes: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    let mut crc = crc as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        crc = _mm_crc32_u64(crc, v);
    }
    let mut crc = crc as u32;
    for &b in chunks.remainder() {
        crc = _mm_crc32_u8(crc, b);
    }
    crc
}

/// Continues a CRC-64/NVME over `bytes`; start from `!0`, finish with `^ !0`.
pub fn crc64_update(crc: u64, bytes: &[u8]) -> u64 {
    sliced(&CRC64_TABLES, crc, bytes)
}

pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c_update(CRC32C_INIT, bytes) ^ CRC32C_INIT
}

pub fn crc64(bytes: &[u8]) -> u64 {
    crc64_update(CRC64_INIT, bytes) ^ CRC64_INIT
}

/// Reads through to `inner`, keeping the CRC-32C of every byte read.
pub struct Crc32cReader<R> {
    inner: R,
    crc: u32,
}

impl<R> Crc32cReader<R> {
    pub fn new(inner: R) -> Crc32cReader<R> {
        Crc32cReader {
            inner,
            crc: CRC32C_INIT,
        }
    }

    /// The CRC-32C of the bytes read so far.
    pub fn crc32c(&self) -> u32 {
        self.crc ^ CRC32C_INIT
    }

    pub fn inner(&mut self) -> &mut R {
        &mut self.inner
    }
}

impl<R: std::io::Read> std::io::Read for Crc32cReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc = crc32c_update(self.crc, &buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_values() {
        // The catalogue's check values (CRC RevEng) for "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc64(b"123456789"), 0xAE8B_1486_0A79_9888);
        // Slicing and the byte loop agree at every split.
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let whole = crc32c(&data);
        assert_eq!(
            sliced(&CRC32C_TABLES, u64::from(CRC32C_INIT), &data) as u32 ^ CRC32C_INIT,
            whole,
            "the tables and the CPU's instruction agree"
        );
        for split in [0, 1, 7, 8, 9, 500, 999] {
            let c = crc32c_update(crc32c_update(!0, &data[..split]), &data[split..]) ^ !0;
            assert_eq!(c, whole, "{split}");
        }
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn a_reader_keeps_the_checksum_of_what_passed() {
        use std::io::Read;
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 13) as u8).collect();
        let mut r = Crc32cReader::new(&data[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(r.crc32c(), crc32c(&data));
    }
}
