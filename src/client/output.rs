//! The plugin's stdout and stderr, host side: the handshake line, the
//! lines after it, and stderr re-emitted through `log` with a copy for the
//! user and the last lines kept for errors.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::ExitStatus;
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread;
use std::time::Instant;

use super::log_entry::StderrLog;
use crate::locks::{lock, wait_for};

/// A stderr or stdout line longer than this is cut (go-plugin's
/// `PluginLogBufferSize`).
const MAX_LINE: usize = 64 * 1024;
/// Lines of the plugin's stderr kept for error messages.
const TAIL_LINES: usize = 20;

/// A sink for the plugin's output.
pub(super) type Sink = Box<dyn Write + Send>;

/// What the plugin's output and process tell the starting host.
pub(super) enum Event {
    Line(String),
    StdoutClosed,
    Exited(ExitStatus),
}

/// What the readers of the plugin's output share with the client.
#[derive(Default)]
pub(super) struct Output {
    /// The last lines of stderr.
    tail: Mutex<VecDeque<String>>,
    /// How many of stdout and stderr reached their end.
    closed: Mutex<u8>,
    changed: Condvar,
}

impl Output {
    pub(super) fn tail(&self) -> String {
        lock(&self.tail).iter().map(|l| format!("{l}\n")).collect()
    }

    fn close_one(&self) {
        *lock(&self.closed) += 1;
        self.changed.notify_all();
    }

    /// Waits until both pipes are at their end, or `deadline`.
    pub(super) fn wait_closed(&self, deadline: Instant) -> bool {
        wait_for(&self.closed, &self.changed, deadline, |closed| {
            (*closed >= 2).then_some(())
        })
        .is_some()
    }
}

/// Reads up to a newline, keeping at most [`MAX_LINE`] bytes of it (the
/// rest is read and dropped). `None` at the end.
fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> Option<()> {
    line.clear();
    loop {
        let buf = match reader.fill_buf() {
            Ok([]) if line.is_empty() => return None,
            Ok([]) => return Some(()),
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return if line.is_empty() { None } else { Some(()) },
        };
        let (chunk, found) = match buf.iter().position(|b| *b == b'\n') {
            Some(at) => (&buf[..at], Some(at + 1)),
            None => (buf, None),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = found.unwrap_or(buf.len());
        reader.consume(used);
        if found.is_some() {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Some(());
        }
    }
}

/// The stdout reader: the first line is the handshake, later ones go to
/// the log at debug (go-plugin drops them).
pub(super) fn read_stdout(
    stdout: impl Read + Send + 'static,
    events: mpsc::Sender<Event>,
    target: String,
    output: Arc<Output>,
) -> io::Result<()> {
    thread::Builder::new()
        .name("goplugin-stdout".into())
        .spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            let mut first = true;
            while read_line(&mut reader, &mut line).is_some() {
                let text = String::from_utf8_lossy(&line).into_owned();
                if first {
                    first = false;
                    let _ = events.send(Event::Line(text));
                } else {
                    log::debug!(target: &target, "stdout: {text}");
                }
            }
            let _ = events.send(Event::StdoutClosed);
            output.close_one();
        })
        .map(drop)
}

/// The stderr reader: a raw copy to `sink`, each line re-emitted through
/// `log` at its level, the last lines kept for errors.
pub(super) fn read_stderr(
    stderr: impl Read + Send + 'static,
    mut sink: Option<Sink>,
    target: String,
    output: Arc<Output>,
) -> io::Result<()> {
    thread::Builder::new()
        .name("goplugin-stderr".into())
        .spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut log = StderrLog::new(target);
            let mut line = Vec::new();
            while read_line(&mut reader, &mut line).is_some() {
                if let Some(out) = &mut sink {
                    line.push(b'\n');
                    if out.write_all(&line).is_err() {
                        sink = None;
                    }
                    line.pop();
                }
                let text = String::from_utf8_lossy(&line);
                log.line(&text);
                let mut tail = lock(&output.tail);
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(text.chars().take(512).collect());
            }
            if let Some(out) = &mut sink {
                let _ = out.flush();
            }
            output.close_one();
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<Vec<u8>> {
        let mut reader = BufReader::with_capacity(7, input);
        let mut line = Vec::new();
        let mut all = Vec::new();
        while read_line(&mut reader, &mut line).is_some() {
            all.push(line.clone());
        }
        all
    }

    #[test]
    fn lines_split_on_newlines_with_or_without_carriage_returns() {
        assert_eq!(
            lines(b"1|1|unix|/s|grpc\r\nlog line\nlast without newline"),
            [
                &b"1|1|unix|/s|grpc"[..],
                b"log line",
                b"last without newline"
            ]
        );
        assert_eq!(lines(b""), Vec::<Vec<u8>>::new());
        assert_eq!(lines(b"\n\n"), [&b""[..], b""]);
    }

    #[test]
    fn a_line_over_the_limit_is_cut_and_the_next_one_read_whole() {
        let mut input = vec![b'x'; MAX_LINE + 1000];
        input.extend_from_slice(b"\nnext\n");
        let read = lines(&input);
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].len(), MAX_LINE);
        assert_eq!(read[1], b"next");
    }
}
