//! Little-endian reads and writes for state payloads. Every read checks
//! the bytes present first, so a length in a corrupt file never slices past
//! the end or sizes an allocation.

use super::{Result, VmStateError};

/// Reads from a byte slice, front to back.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// The next `n` bytes; [`VmStateError::Truncated`] naming `what` if
    /// fewer are left.
    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(VmStateError::Truncated {
                what,
                needed: n as u64,
                available: self.buf.len() as u64,
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// As [`Reader::bytes`] with a 64-bit length read from the file.
    pub fn bytes_u64(&mut self, n: u64, what: &'static str) -> Result<&'a [u8]> {
        match usize::try_from(n) {
            Ok(n) => self.bytes(n, what),
            Err(_) => Err(VmStateError::Truncated {
                what,
                needed: n,
                available: self.buf.len() as u64,
            }),
        }
    }

    /// A little-endian u32.
    pub fn u32(&mut self, what: &'static str) -> Result<u32> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A little-endian u64.
    pub fn u64(&mut self, what: &'static str) -> Result<u64> {
        let b = self.bytes(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A u32 length followed by that many bytes.
    pub fn blob(&mut self, what: &'static str) -> Result<&'a [u8]> {
        let n = self.u32(what)?;
        self.bytes_u64(u64::from(n), what)
    }
}

/// Appends to a payload.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty payload.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a little-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a little-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a u32 length and `bytes`.
    pub fn blob(&mut self, bytes: &[u8]) -> Result<&mut Self> {
        let n = u32::try_from(bytes.len()).map_err(|_| VmStateError::TooLarge("blob"))?;
        self.u32(n);
        self.buf.extend_from_slice(bytes);
        Ok(self)
    }

    /// The payload.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}
