//! What a plugin hands back, bounded before the host uses it: its log
//! output (the `log` import, stdout and stderr, one budget), and the text
//! it returns (checked in `call.rs` against [`PluginLimits`]).
//!
//! Plugin text reaches the host's log only escaped (control characters,
//! e.g. a newline that would forge a log line or an ANSI sequence, become
//! `\u{..}`) and cut to [`MAX_LOG_LINE`].

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

use super::limits::{LOG_LINE_COST, MAX_LOG_LINE};
use super::state::Caller;
use super::{LogLevel, LogLine};
use crate::text::escape_bounded;

/// The log of one call: every line from `log`, stdout and stderr, charged
/// [`LOG_LINE_COST`] plus its (escaped) length against one budget. Lines
/// past the budget are dropped and counted; the host logs one line saying
/// how many at the end of the call.
pub(crate) struct LogSink {
    caller: Arc<Caller>,
    budget: usize,
    limit: usize,
    lines: Vec<LogLine>,
    dropped: usize,
    /// The unfinished last line of stdout and of stderr, at most
    /// [`MAX_LOG_LINE`] bytes (the rest of an overlong line is dropped).
    partial: [Vec<u8>; 2],
}

impl LogSink {
    pub(crate) fn new(caller: Arc<Caller>, budget: usize) -> Self {
        LogSink {
            caller,
            budget,
            limit: budget,
            lines: Vec::new(),
            dropped: 0,
            partial: [Vec::new(), Vec::new()],
        }
    }

    /// Records one line (cut and escaped), if the budget allows.
    pub(crate) fn line(&mut self, level: LogLevel, text: &str) {
        if self.budget == 0 {
            self.dropped += 1;
            return;
        }
        let message = escape_bounded(text, MAX_LOG_LINE);
        let cost = LOG_LINE_COST + message.len();
        if cost > self.budget {
            // Past the budget everything else is dropped: a call cannot
            // fill the log with small lines after a big one was refused.
            self.budget = 0;
            self.dropped += 1;
            return;
        }
        self.budget -= cost;
        let (plugin, digest) = (&self.caller.name, self.caller.short_digest());
        match level {
            LogLevel::Trace => tracing::trace!(target: "cb::plugin", plugin, digest, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "cb::plugin", plugin, digest, "{message}"),
            LogLevel::Info => tracing::info!(target: "cb::plugin", plugin, digest, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "cb::plugin", plugin, digest, "{message}"),
            LogLevel::Error => tracing::error!(target: "cb::plugin", plugin, digest, "{message}"),
        }
        self.lines.push(LogLine { level, message });
    }

    /// Bytes written to stdout (`stream` 0, level info) or stderr (1,
    /// warn): each finished line is logged.
    fn write(&mut self, stream: usize, mut bytes: &[u8]) {
        let level = if stream == 0 {
            LogLevel::Info
        } else {
            LogLevel::Warn
        };
        while !bytes.is_empty() {
            if self.budget == 0 {
                // Everything from here on is dropped: no need to look for
                // line ends (a guest may write megabytes).
                self.dropped += 1;
                self.partial[stream].clear();
                return;
            }
            let (chunk, rest, ends_line) = match memchr::memchr(b'\n', bytes) {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            let partial = &mut self.partial[stream];
            let room = MAX_LOG_LINE.saturating_sub(partial.len());
            partial.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if ends_line {
                let text = String::from_utf8_lossy(&std::mem::take(partial)).into_owned();
                self.line(level, &text);
            }
            bytes = rest;
        }
    }

    /// Ends the call: the unfinished lines are logged, and a count of the
    /// dropped lines if any. Returns the lines kept.
    pub(crate) fn finish(&mut self) -> Vec<LogLine> {
        for (stream, level) in [(0, LogLevel::Info), (1, LogLevel::Warn)] {
            let partial = std::mem::take(&mut self.partial[stream]);
            if !partial.is_empty() {
                self.line(level, &String::from_utf8_lossy(&partial));
            }
        }
        if self.dropped > 0 {
            tracing::warn!(
                target: "cb::plugin",
                plugin = %self.caller.name,
                digest = self.caller.short_digest(),
                dropped = self.dropped,
                budget = self.limit,
                "log lines past the call's log budget were dropped"
            );
            self.dropped = 0;
        }
        std::mem::take(&mut self.lines)
    }
}

/// A shared [`LogSink`].
pub(crate) type SharedSink = Arc<Mutex<LogSink>>;

/// The guest's stdout or stderr: accepts every write (a guest never sees a
/// closed stream, so `println!` past the budget does not panic it) and feeds
/// finished lines to the call's [`LogSink`].
#[derive(Clone)]
pub(crate) struct LogPipe {
    sink: SharedSink,
    stream: usize,
}

impl LogPipe {
    pub(crate) fn stdout(sink: SharedSink) -> Self {
        LogPipe { sink, stream: 0 }
    }

    pub(crate) fn stderr(sink: SharedSink) -> Self {
        LogPipe { sink, stream: 1 }
    }

    fn take(&self, bytes: &[u8]) {
        self.sink
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(self.stream, bytes);
    }
}

/// How much a guest may write at once: large, so writes are few; the bytes
/// past the log budget are dropped as they come.
const WRITE_PERMIT: usize = 1 << 20;

#[async_trait::async_trait]
impl OutputStream for LogPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.take(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_PERMIT)
    }
}

#[async_trait::async_trait]
impl Pollable for LogPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LogPipe {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.take(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(budget: usize) -> LogSink {
        LogSink::new(
            Arc::new(Caller {
                name: "p".into(),
                digest: "sha256:0123456789abcdef".into(),
            }),
            budget,
        )
    }

    #[test]
    fn every_line_costs_its_overhead_and_the_rest_is_dropped() {
        let mut s = sink(10 * LOG_LINE_COST);
        for _ in 0..100 {
            s.line(LogLevel::Info, "");
        }
        assert_eq!(s.finish().len(), 10, "empty lines are not free");
        let mut s = sink(4096);
        s.write(0, b"one\ntwo\n");
        s.write(1, b"par");
        s.write(1, b"tial");
        let lines = s.finish();
        let texts: Vec<&str> = lines.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(texts, ["one", "two", "partial"]);
        assert_eq!(lines[2].level, LogLevel::Warn);
    }

    #[test]
    fn an_overlong_line_is_cut_not_buffered() {
        let mut s = sink(1 << 20);
        s.write(0, &vec![b'x'; 10 * MAX_LOG_LINE]);
        s.write(0, b"\n");
        let lines = s.finish();
        assert_eq!(lines.len(), 1);
        assert!(lines[0].message.len() <= MAX_LOG_LINE);
    }
}
