//! Container logs in the CRI format the kubelet reads: one record per line,
//! `<RFC3339Nano time> <stdout|stderr> <F|P> <text>\n`, `P` for the parts of a line longer than
//! [`MAX_LINE`]. The shim writes them with [`LogWriter`] (rotating at a size limit, keeping a
//! number of files, like the kubelet's containerLogMaxSize/MaxFiles); the kubelet reads them
//! with [`read_logs`] for `kubectl logs`.

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures::Stream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::LogRotation;

/// Longest record payload; longer lines are split into `P` records (containerd's default).
pub const MAX_LINE: usize = 16 * 1024;

/// How often a follower looks for new lines at the end of the file.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    fn name(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// The shim's log writer. Not buffered across calls: every record is in the file when
/// `write` returns, so a reader never waits for a flush.
pub(crate) struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    rotation: LogRotation,
    /// Bytes of an unfinished line per stream.
    partial: [Vec<u8>; 2],
    out: Vec<u8>,
}

impl LogWriter {
    pub fn open(path: &Path, rotation: LogRotation) -> io::Result<LogWriter> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            path: path.to_path_buf(),
            file,
            size,
            rotation,
            partial: [Vec::new(), Vec::new()],
            out: Vec::new(),
        })
    }

    /// Logs what the container wrote; complete lines become `F` records, a line reaching
    /// [`MAX_LINE`] without a newline a `P` record.
    pub fn write(&mut self, stream: LogStream, data: &[u8], now: SystemTime) -> io::Result<()> {
        let idx = stream as usize;
        let mut pending = std::mem::take(&mut self.partial[idx]);
        let mut rest = data;
        while !rest.is_empty() {
            match rest.iter().position(|&b| b == b'\n') {
                Some(i) if pending.len() + i <= MAX_LINE => {
                    pending.extend_from_slice(&rest[..i]);
                    rest = &rest[i + 1..];
                    self.record(stream, b'F', &pending, now)?;
                    pending.clear();
                }
                _ => {
                    let room = MAX_LINE - pending.len();
                    let take = room.min(rest.len());
                    pending.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if pending.len() == MAX_LINE {
                        self.record(stream, b'P', &pending, now)?;
                        pending.clear();
                    }
                }
            }
        }
        self.partial[idx] = pending;
        self.flush()
    }

    /// At the end of the stream: an unfinished line becomes a full record (like containerd).
    pub fn finish(&mut self, now: SystemTime) -> io::Result<()> {
        for stream in [LogStream::Stdout, LogStream::Stderr] {
            let pending = std::mem::take(&mut self.partial[stream as usize]);
            if !pending.is_empty() {
                self.record(stream, b'F', &pending, now)?;
            }
        }
        self.flush()
    }

    fn record(
        &mut self,
        stream: LogStream,
        tag: u8,
        line: &[u8],
        now: SystemTime,
    ) -> io::Result<()> {
        let ts = format_rfc3339_nano(now);
        let len = (ts.len() + stream.name().len() + 4 + line.len() + 1) as u64;
        if self.size + self.out.len() as u64 + len > self.rotation.max_size
            && self.size + self.out.len() as u64 > 0
        {
            self.flush()?;
            self.rotate(now)?;
        }
        self.out.extend_from_slice(ts.as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(stream.name().as_bytes());
        self.out.extend_from_slice(&[b' ', tag, b' ']);
        self.out.extend_from_slice(line);
        self.out.push(b'\n');
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.file.write_all(&self.out)?;
            self.size += self.out.len() as u64;
            self.out.clear();
        }
        Ok(())
    }

    /// `0.log` → `0.log.<YYYYmmdd-HHMMSS.nnnnnnnnn>`, then drops the oldest beyond max_files.
    fn rotate(&mut self, now: SystemTime) -> io::Result<()> {
        let stamp = rotation_stamp(now);
        let mut rotated = self.path.as_os_str().to_owned();
        rotated.push(format!(".{stamp}"));
        fs::rename(&self.path, &rotated)?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        let mut old = rotated_files(&self.path)?;
        let keep = self.rotation.max_files.saturating_sub(1) as usize;
        if old.len() > keep {
            old.sort();
            for f in &old[..old.len() - keep] {
                let _ = fs::remove_file(f);
            }
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// Rotated siblings of `path` (`<name>.<stamp>`), unsorted.
pub fn rotated_files(path: &Path) -> io::Result<Vec<PathBuf>> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{name}.");
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let n = entry.file_name();
        if let Some(rest) = n.to_str().and_then(|n| n.strip_prefix(&prefix))
            && rest.len() == 25
            && rest.as_bytes()[8] == b'-'
        {
            out.push(entry.path());
        }
    }
    Ok(out)
}

fn rotation_stamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (y, mo, day, h, mi, s) = civil(d.as_secs() as i64);
    format!(
        "{y:04}{mo:02}{day:02}-{h:02}{mi:02}{s:02}.{:09}",
        d.subsec_nanos()
    )
}

/// Go's `time.RFC3339Nano` in UTC: fraction without trailing zeros, none when whole seconds.
pub fn format_rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (y, mo, day, h, mi, s) = civil(d.as_secs() as i64);
    let mut out = format!("{y:04}-{mo:02}-{day:02}T{h:02}:{mi:02}:{s:02}");
    let nanos = d.subsec_nanos();
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// Parses RFC 3339 with an optional fraction and `Z` or a `±hh:mm` offset.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[13] != b':' || b[16] != b':' || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &s[start..i];
        if digits.is_empty() {
            return None;
        }
        let mut frac = digits.chars().take(9).collect::<String>();
        while frac.len() < 9 {
            frac.push('0');
        }
        nanos = frac.parse().ok()?;
    }
    let offset = match s.get(i..)? {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) => {
            let oh: i64 = o.get(1..3)?.parse().ok()?;
            let om: i64 = o.get(4..6)?.parse().ok()?;
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset;
    if secs < 0 {
        return None;
    }
    Some(UNIX_EPOCH + Duration::new(secs as u64, nanos))
}

/// (year, month, day, hour, minute, second) of a Unix time, proleptic Gregorian (H. Hinnant).
fn civil(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// What `kubectl logs` asks for.
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    /// Keep reading new lines (across rotations) until `stop` resolves.
    pub follow: bool,
    /// Only the last N records of the current file.
    pub tail_lines: Option<u64>,
    /// Only records at or after this time.
    pub since: Option<SystemTime>,
    /// Prefix each record with its RFC3339Nano time, like `kubectl logs --timestamps`.
    pub timestamps: bool,
    /// Stop after this many bytes of output.
    pub limit_bytes: Option<u64>,
}

/// Reads a CRI log file as `kubectl logs` shows it. With `follow`, new records are streamed
/// until `stop` resolves (pass the container's exit, e.g. `Runtime::wait`), after which what
/// is left is read and the stream ends. The current file only, like the kubelet.
pub fn read_logs(
    path: impl Into<PathBuf>,
    opts: LogOptions,
    stop: impl Future<Output = ()> + Send + 'static,
) -> impl Stream<Item = io::Result<Bytes>> + Send {
    let reader = Reader {
        path: path.into(),
        opts,
        stop: Box::pin(stop),
        stopped: false,
        file: None,
        ino: 0,
        buf: BytesMut::new(),
        sent: 0,
        done: false,
    };
    futures::stream::unfold(reader, |mut r| async move {
        match r.next_chunk().await {
            Ok(Some(b)) => Some((Ok(b), r)),
            Ok(None) => None,
            Err(e) => {
                r.done = true;
                Some((Err(e), r))
            }
        }
    })
}

struct Reader {
    path: PathBuf,
    opts: LogOptions,
    stop: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
    stopped: bool,
    file: Option<tokio::fs::File>,
    ino: u64,
    /// Read but not yet complete (no newline) bytes.
    buf: BytesMut,
    sent: u64,
    done: bool,
}

impl Reader {
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        if self.file.is_none() {
            self.open_first().await?;
        }
        loop {
            let mut chunk = vec![0u8; 64 * 1024];
            let n = match self.file.as_mut() {
                Some(f) => f.read(&mut chunk).await?,
                None => 0,
            };
            if n > 0 {
                self.buf.extend_from_slice(&chunk[..n]);
                if let Some(out) = self.render() {
                    return Ok(Some(out));
                }
                continue;
            }
            // At the end of the file.
            if self.reopen_if_rotated().await? {
                if let Some(out) = self.render() {
                    return Ok(Some(out));
                }
                continue;
            }
            if !self.opts.follow || self.stopped {
                self.done = true;
                return Ok(None);
            }
            tokio::select! {
                _ = &mut self.stop => self.stopped = true,
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
            }
        }
    }

    async fn open_first(&mut self) -> io::Result<()> {
        let mut f = tokio::fs::File::open(&self.path).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("opening log {}: {e}", self.path.display()),
            )
        })?;
        self.ino = f.metadata().await?.ino();
        if let Some(n) = self.opts.tail_lines {
            let path = self.path.clone();
            let offset = tokio::task::spawn_blocking(move || tail_offset(&path, n))
                .await
                .map_err(io::Error::other)??;
            f.seek(io::SeekFrom::Start(offset)).await?;
        }
        self.file = Some(f);
        Ok(())
    }

    /// After a rotation the path names a new file: continue there from its start.
    async fn reopen_if_rotated(&mut self) -> io::Result<bool> {
        let ino = match tokio::fs::metadata(&self.path).await {
            Ok(m) => m.ino(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        if ino == self.ino {
            return Ok(false);
        }
        // Records appended to the old file between our last read and the rename.
        if let Some(old) = self.file.as_mut() {
            let mut rest = Vec::new();
            old.read_to_end(&mut rest).await?;
            self.buf.extend_from_slice(&rest);
        }
        let f = match tokio::fs::File::open(&self.path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        self.ino = f.metadata().await?.ino();
        self.file = Some(f);
        Ok(true)
    }

    /// Turns the complete records in `buf` into output, honouring since/timestamps/limit.
    fn render(&mut self) -> Option<Bytes> {
        let end = self.buf.iter().rposition(|&b| b == b'\n')? + 1;
        let records = self.buf.split_to(end);
        let mut out = BytesMut::with_capacity(records.len());
        for line in records[..].split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            let Some(rec) = Record::parse(line) else {
                continue;
            };
            if let Some(since) = self.opts.since
                && parse_rfc3339(rec.time).is_some_and(|t| t < since)
            {
                continue;
            }
            if self.opts.timestamps {
                out.extend_from_slice(rec.time.as_bytes());
                out.extend_from_slice(b" ");
            }
            out.extend_from_slice(rec.text);
            if rec.full {
                out.extend_from_slice(b"\n");
            }
        }
        if let Some(limit) = self.opts.limit_bytes {
            let room = limit.saturating_sub(self.sent) as usize;
            if out.len() >= room {
                out.truncate(room);
                self.done = true;
            }
        }
        self.sent += out.len() as u64;
        if out.is_empty() {
            return if self.done { Some(Bytes::new()) } else { None };
        }
        Some(out.freeze())
    }
}

struct Record<'a> {
    time: &'a str,
    full: bool,
    text: &'a [u8],
}

impl<'a> Record<'a> {
    fn parse(line: &'a [u8]) -> Option<Record<'a>> {
        let mut parts = line.splitn(4, |&b| b == b' ');
        let time = std::str::from_utf8(parts.next()?).ok()?;
        let _stream = parts.next()?;
        let tag = parts.next()?;
        let text = parts.next().unwrap_or(b"");
        Some(Record {
            time,
            full: tag.first() != Some(&b'P'),
            text,
        })
    }
}

/// Offset of the start of the last `n` records of the file, reading backwards in blocks.
fn tail_offset(path: &Path, n: u64) -> io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    if n == 0 {
        return Ok(len);
    }
    let mut pos = len;
    let mut newlines = 0u64;
    let mut block = vec![0u8; 16 * 1024];
    let mut first = true;
    while pos > 0 {
        let take = (block.len() as u64).min(pos) as usize;
        pos -= take as u64;
        f.seek(SeekFrom::Start(pos))?;
        f.read_exact(&mut block[..take])?;
        for i in (0..take).rev() {
            if block[i] != b'\n' {
                continue;
            }
            // The file's final newline ends the last record; it does not start one.
            if first && pos + i as u64 == len - 1 {
                first = false;
                continue;
            }
            first = false;
            newlines += 1;
            if newlines == n {
                return Ok(pos + i as u64 + 1);
            }
        }
        first = false;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn rfc3339_nano_formats_like_go() {
        let cases = [
            (at(0, 0), "1970-01-01T00:00:00Z"),
            (
                at(1_704_067_200, 123_456_789),
                "2024-01-01T00:00:00.123456789Z",
            ),
            (at(1_704_067_200, 500_000_000), "2024-01-01T00:00:00.5Z"),
            (at(951_782_400, 0), "2000-02-29T00:00:00Z"),
            (at(4_102_444_799, 1), "2099-12-31T23:59:59.000000001Z"),
        ];
        for (t, want) in cases {
            assert_eq!(format_rfc3339_nano(t), want);
            assert_eq!(parse_rfc3339(want), Some(t), "{want}");
        }
        assert_eq!(
            parse_rfc3339("2024-01-01T02:00:00.5+02:00"),
            Some(at(1_704_067_200, 500_000_000))
        );
        for bad in [
            "",
            "2024-01-01",
            "2024-13-01T00:00:00Z",
            "2024-01-01T00:00:00",
            "x024-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    fn read_all(dir: &Path) -> String {
        fs::read_to_string(dir.join("0.log")).unwrap()
    }

    #[test]
    fn writer_splits_lines_and_long_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(&dir.path().join("0.log"), LogRotation::default()).unwrap();
        let t = at(1_704_067_200, 1);
        w.write(LogStream::Stdout, b"hello\nwor", t).unwrap();
        w.write(LogStream::Stderr, b"oops\n", t).unwrap();
        w.write(LogStream::Stdout, b"ld\n", t).unwrap();
        let long = vec![b'x'; MAX_LINE + 10];
        w.write(LogStream::Stdout, &long, t).unwrap();
        w.write(LogStream::Stdout, b"tail", t).unwrap();
        w.finish(t).unwrap();
        let text = read_all(dir.path());
        let lines: Vec<&str> = text.lines().collect();
        let ts = "2024-01-01T00:00:00.000000001Z";
        assert_eq!(lines[0], format!("{ts} stdout F hello"));
        assert_eq!(lines[1], format!("{ts} stderr F oops"));
        assert_eq!(lines[2], format!("{ts} stdout F world"));
        assert_eq!(lines[3], format!("{ts} stdout P {}", "x".repeat(MAX_LINE)));
        assert_eq!(lines[4], format!("{ts} stdout F xxxxxxxxxxtail"));
        assert_eq!(lines.len(), 5);
    }

    #[test]
    fn writer_rotates_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let rotation = LogRotation {
            max_size: 200,
            max_files: 3,
        };
        let mut w = LogWriter::open(&path, rotation).unwrap();
        for i in 0..40u64 {
            w.write(
                LogStream::Stdout,
                format!("line {i}\n").as_bytes(),
                at(1_700_000_000, i as u32 + 1),
            )
            .unwrap();
        }
        let rotated = rotated_files(&path).unwrap();
        assert_eq!(rotated.len(), 2, "{rotated:?}");
        assert!(fs::metadata(&path).unwrap().len() <= 200);
        assert!(read_all(dir.path()).ends_with("stdout F line 39\n"));
    }

    async fn collect(path: &Path, opts: LogOptions) -> String {
        let s = read_logs(path.to_path_buf(), opts, async {});
        let chunks: Vec<io::Result<Bytes>> = s.collect().await;
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&c.unwrap());
        }
        String::from_utf8(out).unwrap()
    }

    fn sample(dir: &Path) -> PathBuf {
        let path = dir.join("0.log");
        fs::write(
            &path,
            "2024-01-01T00:00:01Z stdout F one\n\
             2024-01-01T00:00:02Z stderr P tw\n\
             2024-01-01T00:00:02.5Z stderr F o\n\
             2024-01-01T00:00:03Z stdout F three\n",
        )
        .unwrap();
        path
    }

    #[tokio::test]
    async fn reader_options() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        let cases: Vec<(LogOptions, &str)> = vec![
            (LogOptions::default(), "one\ntwo\nthree\n"),
            (
                LogOptions {
                    tail_lines: Some(1),
                    ..Default::default()
                },
                "three\n",
            ),
            (
                LogOptions {
                    tail_lines: Some(2),
                    ..Default::default()
                },
                "o\nthree\n",
            ),
            (
                LogOptions {
                    tail_lines: Some(0),
                    ..Default::default()
                },
                "",
            ),
            (
                LogOptions {
                    tail_lines: Some(99),
                    ..Default::default()
                },
                "one\ntwo\nthree\n",
            ),
            (
                LogOptions {
                    since: parse_rfc3339("2024-01-01T00:00:02.1Z"),
                    ..Default::default()
                },
                "o\nthree\n",
            ),
            (
                LogOptions {
                    limit_bytes: Some(6),
                    ..Default::default()
                },
                "one\ntw",
            ),
            (
                LogOptions {
                    timestamps: true,
                    tail_lines: Some(1),
                    ..Default::default()
                },
                "2024-01-01T00:00:03Z three\n",
            ),
        ];
        for (opts, want) in cases {
            assert_eq!(collect(&path, opts.clone()).await, want, "{opts:?}");
        }
    }

    #[tokio::test]
    async fn follow_reads_new_lines_across_rotation_until_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let rotation = LogRotation {
            max_size: 120,
            max_files: 2,
        };
        let mut w = LogWriter::open(&path, rotation).unwrap();
        w.write(LogStream::Stdout, b"first\n", SystemTime::now())
            .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stream = read_logs(
            path.clone(),
            LogOptions {
                follow: true,
                ..Default::default()
            },
            async move {
                let _ = rx.await;
            },
        );
        let reader = tokio::spawn(async move {
            let chunks: Vec<io::Result<Bytes>> = stream.collect().await;
            chunks
                .into_iter()
                .map(|c| c.unwrap())
                .fold(Vec::new(), |mut a, c| {
                    a.extend_from_slice(&c);
                    a
                })
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        for i in 0..5 {
            w.write(
                LogStream::Stdout,
                format!("more {i}\n").as_bytes(),
                SystemTime::now(),
            )
            .unwrap();
            tokio::time::sleep(Duration::from_millis(120)).await;
        }
        assert!(
            !rotated_files(&path).unwrap().is_empty(),
            "the test should rotate"
        );
        tx.send(()).unwrap();
        let out = String::from_utf8(reader.await.unwrap()).unwrap();
        assert_eq!(out, "first\nmore 0\nmore 1\nmore 2\nmore 3\nmore 4\n");
    }
}
