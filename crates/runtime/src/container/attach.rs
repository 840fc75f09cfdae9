//! The agent's side of attach: a connection to the shim's `attach.sock` (protocol in
//! `shim.rs`) carrying the container's output as it happens, and its stdin and terminal size
//! the other way.

use std::io;
use std::path::Path;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::shim::{
    FRAME_RESIZE, FRAME_STDERR, FRAME_STDIN, FRAME_STDIN_CLOSE, FRAME_STDOUT, HELLO_ATTACH,
    HELLO_ATTACH_STDIN, MAX_FRAME, push_frame,
};
use super::sys;

/// Which stream an output chunk came from (a tty container has only stdout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
}

/// An attach session. `recv` yields output until the container exits (then `None`);
/// `split` gives separate halves for a reader task and a writer task.
pub struct AttachStream {
    pub reader: AttachReader,
    pub writer: AttachWriter,
    /// The container has a terminal: resize works, output is one stream.
    pub tty: bool,
    /// The container has a stdin this session may write.
    pub stdin: bool,
}

pub struct AttachReader {
    r: OwnedReadHalf,
}

pub struct AttachWriter {
    w: OwnedWriteHalf,
}

impl AttachStream {
    pub(crate) async fn connect(sock: &Path, tty: bool, stdin: bool) -> io::Result<AttachStream> {
        let mut s = connect(sock).await?;
        s.write_all(&[if stdin {
            HELLO_ATTACH_STDIN
        } else {
            HELLO_ATTACH
        }])
        .await?;
        let (r, w) = s.into_split();
        Ok(AttachStream {
            reader: AttachReader { r },
            writer: AttachWriter { w },
            tty,
            stdin,
        })
    }

    pub async fn recv(&mut self) -> io::Result<Option<(Output, Bytes)>> {
        self.reader.recv().await
    }

    pub fn split(self) -> (AttachReader, AttachWriter) {
        (self.reader, self.writer)
    }
}

impl AttachReader {
    /// The next chunk of output; `None` once the container exited and its output is drained.
    pub async fn recv(&mut self) -> io::Result<Option<(Output, Bytes)>> {
        loop {
            let mut head = [0u8; 5];
            match self.r.read_exact(&mut head).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e),
            }
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if len > MAX_FRAME {
                return Err(io::Error::other(format!("attach frame of {len} bytes")));
            }
            let mut payload = vec![0u8; len];
            self.r.read_exact(&mut payload).await?;
            let which = match head[0] {
                FRAME_STDOUT => Output::Stdout,
                FRAME_STDERR => Output::Stderr,
                _ => continue,
            };
            return Ok(Some((which, Bytes::from(payload))));
        }
    }
}

impl AttachWriter {
    pub async fn write_stdin(&mut self, data: &[u8]) -> io::Result<()> {
        for chunk in data.chunks(MAX_FRAME) {
            self.frame(FRAME_STDIN, chunk).await?;
        }
        Ok(())
    }

    /// This session is done writing; with `stdin_once` the container's stdin closes.
    pub async fn close_stdin(&mut self) -> io::Result<()> {
        self.frame(FRAME_STDIN_CLOSE, &[]).await
    }

    pub async fn resize(&mut self, cols: u16, rows: u16) -> io::Result<()> {
        let mut p = Vec::with_capacity(4);
        p.extend_from_slice(&cols.to_be_bytes());
        p.extend_from_slice(&rows.to_be_bytes());
        self.frame(FRAME_RESIZE, &p).await
    }

    async fn frame(&mut self, kind: u8, payload: &[u8]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(5 + payload.len());
        push_frame(&mut buf, kind, payload);
        self.w.write_all(&buf).await
    }
}

/// Connects to a unix socket even when its path is longer than `sun_path`.
pub(crate) async fn connect(sock: &Path) -> io::Result<UnixStream> {
    let (path, _dir) = sys::short_socket_path(sock)?;
    UnixStream::connect(&path).await
}
