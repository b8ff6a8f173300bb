//! Where a plugin's words go: one bounded log shared by the `log` import and the guest's
//! stdout and stderr. A flood costs the host at most the log limit: what does not fit is
//! dropped and counted, and the log ends with a line naming the limit. Writing never fails
//! for the guest, so a chatty plugin is never turned into a trap.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::size_text;
use crate::model::{LogLevel, LogLine};

/// Longest line kept from printed output; longer ones are split.
const MAX_LINE: usize = 4096;

/// The evaluation's log.
#[derive(Clone)]
pub(super) struct LogSink {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    lines: Vec<LogLine>,
    used: usize,
    limit: usize,
    dropped: usize,
    /// Printed bytes not yet ended by a newline: stdout, stderr.
    partial: [Vec<u8>; 2],
}

/// Which printed stream.
#[derive(Clone, Copy)]
pub(super) enum Stream {
    Stdout = 0,
    Stderr = 1,
}

impl Stream {
    fn level(self) -> LogLevel {
        match self {
            Stream::Stdout => LogLevel::Stdout,
            Stream::Stderr => LogLevel::Stderr,
        }
    }
}

/// What the log came to.
pub(super) struct Finished {
    pub lines: Vec<LogLine>,
    /// Bytes kept.
    pub used: usize,
    /// Bytes dropped by the limit.
    pub dropped: usize,
}

impl LogSink {
    pub(super) fn new(limit: usize) -> Self {
        LogSink {
            inner: Arc::new(Mutex::new(Inner {
                lines: Vec::new(),
                used: 0,
                limit,
                dropped: 0,
                partial: [Vec::new(), Vec::new()],
            })),
        }
    }

    /// A line from the `log` import (or the host, on the plugin's behalf).
    pub(super) fn log(&self, level: LogLevel, message: String) {
        let mut inner = self.inner.lock().unwrap();
        if inner.used + message.len() > inner.limit {
            inner.dropped += message.len();
            return;
        }
        inner.used += message.len();
        inner.lines.push(LogLine { level, message });
    }

    /// A line the host adds about the plugin, kept even when the log is full.
    pub(super) fn note(&self, level: LogLevel, message: String) {
        self.inner
            .lock()
            .unwrap()
            .lines
            .push(LogLine { level, message });
    }

    /// Bytes the guest printed.
    fn print(&self, stream: Stream, bytes: &[u8]) {
        let mut inner = self.inner.lock().unwrap();
        let room = inner.limit - inner.used;
        let kept = bytes.len().min(room);
        inner.used += kept;
        inner.dropped += bytes.len() - kept;
        let inner = &mut *inner;
        let partial = &mut inner.partial[stream as usize];
        partial.extend_from_slice(&bytes[..kept]);
        while let Some(end) = partial
            .iter()
            .position(|&b| b == b'\n')
            .or((partial.len() >= MAX_LINE).then_some(MAX_LINE))
        {
            let line: Vec<u8> = partial.drain(..end).collect();
            if partial.first() == Some(&b'\n') {
                partial.remove(0);
            }
            inner.lines.push(LogLine {
                level: stream.level(),
                message: String::from_utf8_lossy(&line).into_owned(),
            });
        }
    }

    /// The lines, with unfinished printed lines and a note about dropped bytes at the end.
    pub(super) fn finish(&self) -> Finished {
        let mut inner = self.inner.lock().unwrap();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(&mut inner.partial[stream as usize]);
            if !rest.is_empty() {
                inner.lines.push(LogLine {
                    level: stream.level(),
                    message: String::from_utf8_lossy(&rest).into_owned(),
                });
            }
        }
        if inner.dropped > 0 {
            let message = format!(
                "plugin exceeded {} log limit; {} bytes were dropped",
                size_text(inner.limit),
                inner.dropped
            );
            inner.lines.push(LogLine {
                level: LogLevel::Warn,
                message,
            });
        }
        Finished {
            lines: std::mem::take(&mut inner.lines),
            used: inner.used,
            dropped: inner.dropped,
        }
    }

    /// The guest's stdout or stderr, writing into this log.
    pub(super) fn pipe(&self, stream: Stream) -> PrintPipe {
        PrintPipe {
            sink: self.clone(),
            stream,
        }
    }
}

/// A guest output stream that writes into a [`LogSink`].
#[derive(Clone)]
pub(super) struct PrintPipe {
    sink: LogSink,
    stream: Stream,
}

/// How much the guest may write in one go; the sink drops what does not fit.
const PERMIT: usize = 64 << 10;

impl OutputStream for PrintPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.sink.print(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for PrintPipe {
    async fn ready(&mut self) {}
}

impl AsyncWrite for PrintPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.sink.print(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for PrintPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for PrintPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_lines_are_split_and_a_flood_is_bounded_and_named() {
        let sink = LogSink::new(32);
        sink.print(Stream::Stdout, b"one\ntw");
        sink.log(LogLevel::Info, "hello".into());
        sink.print(Stream::Stdout, b"o\n");
        sink.print(Stream::Stderr, &[b'x'; 100]);
        let done = sink.finish();
        let text: Vec<String> = done
            .lines
            .iter()
            .map(|l| format!("{}:{}", l.level.as_str(), l.message))
            .collect();
        assert_eq!(text[0], "stdout:one");
        assert_eq!(text[1], "info:hello");
        assert_eq!(text[2], "stdout:two");
        assert_eq!(text[3], format!("stderr:{}", "x".repeat(32 - 13)));
        assert_eq!(
            text[4],
            "warn:plugin exceeded 32 bytes log limit; 81 bytes were dropped"
        );
        assert_eq!(done.used, 32);
        assert_eq!(done.dropped, 81);
    }
}
