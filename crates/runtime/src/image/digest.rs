//! SHA-256 digests of blobs as they stream by, and byte counting for progress.

use std::io::{self, BufRead, Read};

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Hashes (SHA-256) and counts everything read through it.
pub struct Hashing<R> {
    inner: R,
    ctx: ring::digest::Context,
    count: u64,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R) -> Self {
        Hashing {
            inner,
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
            count: 0,
        }
    }

    /// Reads what is left, so the digest covers the whole stream (tar readers stop at the end
    /// marker and leave the padding after it).
    pub fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(|_| ())
    }

    /// `sha256:<hex>` of what was read, and how many bytes.
    pub fn finish(self) -> (String, u64) {
        (
            format!("sha256:{}", hex(self.ctx.finish().as_ref())),
            self.count,
        )
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Calls `f` with the running byte count, at most every 1 MiB and at the end.
pub struct Counting<R, F: FnMut(u64)> {
    inner: R,
    f: F,
    count: u64,
    reported: u64,
}

impl<R, F: FnMut(u64)> Counting<R, F> {
    pub fn new(inner: R, f: F) -> Self {
        Counting {
            inner,
            f,
            count: 0,
            reported: 0,
        }
    }
}

impl<R: Read, F: FnMut(u64)> Read for Counting<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if n == 0 || self.count - self.reported >= 1 << 20 {
            self.reported = self.count;
            (self.f)(self.count);
        }
        Ok(n)
    }
}

impl<R: BufRead, F: FnMut(u64)> BufRead for Counting<R, F> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.inner.consume(amt);
        self.count += amt as u64;
        if self.count - self.reported >= 1 << 20 {
            self.reported = self.count;
            (self.f)(self.count);
        }
    }
}
