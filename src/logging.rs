//! Logs for the host: hclog JSON lines on stderr.
//!
//! A go-plugin host reads its plugin's stderr line by line. A line that is a
//! JSON object with `@level`, `@message` and `@timestamp` is re-logged by the
//! host at that level (`[INFO]  plugin.sh: message`); anything else lands
//! at DEBUG. [`init`] installs a [`log`] backend that writes exactly such
//! lines, and routes gRPC core's own messages through it. It is opt-in: a
//! library never installs a global logger by itself.
//!
//! ```no_run
//! # use goplugin::log;
//! # fn main() -> Result<(), goplugin::Error> {
//! goplugin::logging::init(log::LevelFilter::Info)?;
//! log::warn!(key = "k"; "disk almost full");
//! // the host logs: [WARN]  plugin.sh: disk almost full: @module=my_plugin key=k timestamp=…
//! # Ok(())
//! # }
//! ```
//!
//! Lines go to the real stderr even while the stdio capture forwards
//! fd 2 to the host, and never panic. Logging never waits for stderr: a
//! thread of the logger's own writes the lines (waiting at most about a
//! second per line for a host that stopped reading), and a line that finds
//! 1024 others waiting is dropped and counted, the count written once the
//! writer gets on. gRPC core's own lines are limited to 20 a second, the
//! rest counted (a flood of failed TLS handshakes logs one each), so no
//! gRPC thread ever waits on a log line.
//!
//! Mirrors go-hclog's JSON format (`intlogger.go`) and go-plugin's parser
//! (`log_entry.go`): `@level` and `@message` are always strings, and
//! `@timestamp` has exactly six fractional digits, or the host would drop
//! the line's fields (or, for non-strings, panic).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::error::{Error, Result};
use crate::locks::{lock, wait, wait_for};
use crate::sys;

/// Installs the hclog-JSON logger for the `log` crate at `level`.
///
/// ```no_run
/// goplugin::logging::init(log::LevelFilter::Info)?;
/// log::info!("ready");
/// # Ok::<(), goplugin::Error>(())
/// ```
///
/// # Errors
/// [`Error::LoggerAlreadySet`] when another logger was installed first.
pub fn init(level: LevelFilter) -> Result<()> {
    let logger = LOGGER.get_or_init(|| HclogLogger::new(level));
    if logger.level != level {
        return Err(Error::LoggerAlreadySet);
    }
    log::set_boxed_logger(Box::new(Installed(logger))).map_err(|_| Error::LoggerAlreadySet)?;
    log::set_max_level(level);
    redirect_grpc_log();
    Ok(())
}

/// Sends gRPC core's own log lines through the `log` crate, at Info at
/// most whatever the plugin's level: gRPC takes its verbosity from the max
/// level at this call, and its debug lines are gRPC's internals, not the
/// plugin's (go-plugin's Go plugins keep grpc-go's log apart too).
pub(crate) fn redirect_grpc_log() {
    let level = log::max_level();
    log::set_max_level(level.min(LevelFilter::Info));
    grpcio::redirect_log();
    log::set_max_level(level);
}

/// Where log lines go: fd 2, or the real stderr saved while the stdio
/// capture owns fd 2 (the host must see log lines as log lines, not as
/// forwarded stderr data).
static STDERR_FD: AtomicI32 = AtomicI32::new(2);

pub(crate) fn set_stderr_fd(fd: RawFd) {
    STDERR_FD.store(fd, Ordering::Release);
}

/// How long a write waits for a full pipe before the data is dropped.
const WRITE_PATIENCE_MS: libc::c_int = 1000;

/// Writes `data` to `fd` without ever panicking, and without waiting more
/// than about a second on a reader that stopped reading: then the rest is
/// dropped. A reader that is gone (EPIPE) drops it at once.
pub(crate) fn write_fd(fd: RawFd, mut data: &[u8]) {
    while !data.is_empty() {
        let mut poll = [libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        }];
        match sys::poll(&mut poll, WRITE_PATIENCE_MS) {
            Ok(0) => return,
            // A signal (SIGINT is caught while serving): ask again, rather
            // than write to a pipe that may be full.
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(_) if poll[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 => {
                return;
            }
            _ => {}
        }
        match sys::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                ) => {}
            Err(_) => return,
        }
    }
}

/// Lines waiting for the writer thread; a line beyond them is dropped and
/// counted rather than wait, whoever logs it (gRPC's threads among them).
const QUEUE_LINES: usize = 1024;

/// gRPC core's lines written per second at most (a flood of failed TLS
/// handshakes logs one each); the rest are counted and summarised.
const GRPC_LINES_PER_SECOND: u32 = 20;

/// How long [`Log::flush`] waits for queued lines to be written.
const FLUSH_PATIENCE: Duration = Duration::from_secs(2);

struct HclogLogger {
    level: LevelFilter,
    queue: Mutex<Queue>,
    /// Signalled when a line is queued.
    queued: Condvar,
    /// Signalled when the queue is empty and nothing is being written.
    drained: Condvar,
    grpc_lines: Mutex<RateWindow>,
}

#[derive(Default)]
struct Queue {
    lines: VecDeque<String>,
    /// Lines dropped since the writer last said so.
    dropped: u64,
    /// The writer is writing a line it took.
    writing: bool,
    writer: WriterThread,
}

#[derive(Default, PartialEq, Eq)]
enum WriterThread {
    #[default]
    NotStarted,
    Running,
    /// The OS refused the thread: lines are written by whoever logs them.
    Refused,
}

/// gRPC core's lines of the current second.
struct RateWindow {
    started: Instant,
    written: u32,
    suppressed: u64,
}

impl RateWindow {
    fn starting_now() -> RateWindow {
        RateWindow {
            started: Instant::now(),
            written: 0,
            suppressed: 0,
        }
    }
}

impl HclogLogger {
    fn new(level: LevelFilter) -> HclogLogger {
        HclogLogger {
            level,
            queue: Mutex::default(),
            queued: Condvar::new(),
            drained: Condvar::new(),
            grpc_lines: Mutex::new(RateWindow::starting_now()),
        }
    }

    /// Whether a line of gRPC core's may be written now; once a second, the
    /// count of those that were not is written instead.
    fn grpc_line_allowed(&'static self) -> bool {
        let mut window = lock(&self.grpc_lines);
        if window.started.elapsed() >= Duration::from_secs(1) {
            let suppressed = std::mem::replace(&mut *window, RateWindow::starting_now()).suppressed;
            drop(window);
            if suppressed > 0 {
                self.write(notice(&format!(
                    "{suppressed} log lines of gRPC's core left out in a second: more than \
                     {GRPC_LINES_PER_SECOND} a second (failed TLS handshakes, for one)"
                )));
            }
            window = lock(&self.grpc_lines);
        }
        if window.written < GRPC_LINES_PER_SECOND {
            window.written += 1;
            true
        } else {
            window.suppressed += 1;
            false
        }
    }

    /// Queues `line` for the writer thread, starting it the first time;
    /// never waits for stderr. Without a writer thread (the OS refused it),
    /// writes the line itself, as patiently as [`write_fd`] is.
    fn write(&'static self, line: String) {
        let mut queue = lock(&self.queue);
        if queue.writer == WriterThread::NotStarted {
            let started = thread::Builder::new()
                .name("goplugin-log".into())
                .spawn(move || self.run_writer());
            queue.writer = match started {
                Ok(_) => WriterThread::Running,
                Err(_) => WriterThread::Refused,
            };
        }
        if queue.writer == WriterThread::Refused {
            drop(queue);
            write_fd(STDERR_FD.load(Ordering::Acquire), line.as_bytes());
        } else if queue.lines.len() < QUEUE_LINES {
            queue.lines.push_back(line);
            self.queued.notify_one();
        } else {
            queue.dropped += 1;
        }
    }

    /// The writer thread: one line at a time, one write per line, so lines
    /// of concurrent threads do not mix; a stalled stderr holds up only
    /// this thread.
    fn run_writer(&self) {
        let mut queue = lock(&self.queue);
        loop {
            let Some(line) = queue.lines.pop_front() else {
                self.drained.notify_all();
                queue = wait(&self.queued, queue);
                continue;
            };
            queue.writing = true;
            let dropped = std::mem::take(&mut queue.dropped);
            drop(queue);
            let fd = STDERR_FD.load(Ordering::Acquire);
            if dropped > 0 {
                let said = notice(&format!(
                    "{dropped} log lines dropped: the plugin's stderr was not read fast \
                     enough (more than {QUEUE_LINES} lines waiting)"
                ));
                write_fd(fd, said.as_bytes());
            }
            write_fd(fd, line.as_bytes());
            queue = lock(&self.queue);
            queue.writing = false;
        }
    }
}

/// A warning of the logger's own, as an hclog line.
fn notice(message: &str) -> String {
    format_line(
        &Record::builder()
            .level(Level::Warn)
            .target("goplugin::logging")
            .args(format_args!("{message}"))
            .build(),
        SystemTime::now(),
    )
}

/// The logger `init` installs, for the life of the process.
static LOGGER: OnceLock<HclogLogger> = OnceLock::new();

struct Installed(&'static HclogLogger);

impl Log for Installed {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.0.level
    }

    fn log(&self, record: &Record<'_>) {
        if level_and_module(record).0 > self.0.level {
            return;
        }
        if record.module_path() == Some(GRPC_CORE_MODULE) && !self.0.grpc_line_allowed() {
            return;
        }
        self.0.write(format_line(record, SystemTime::now()));
    }

    /// Waits (up to 2 s) until the queued lines are written.
    fn flush(&self) {
        let deadline = Instant::now() + FLUSH_PATIENCE;
        let _ = wait_for(&self.0.queue, &self.0.drained, deadline, |queue| {
            (queue.lines.is_empty() && !queue.writing || queue.writer != WriterThread::Running)
                .then_some(())
        });
    }
}

/// `module_path` of the records grpcio makes from gRPC core's messages.
const GRPC_CORE_MODULE: &str = "grpcio::log_util";

/// The level and module a record is written with. gRPC core's own messages
/// come without a target; they are put under module `grpc`, one level lower
/// (core's INFO is start-up detail such as "grpc epoll fd: 3").
fn level_and_module<'a>(record: &Record<'a>) -> (Level, &'a str) {
    if record.module_path() == Some(GRPC_CORE_MODULE) {
        let level = match record.level() {
            Level::Info => Level::Debug,
            Level::Debug => Level::Trace,
            level => level,
        };
        (level, "grpc")
    } else {
        (record.level(), record.target())
    }
}

/// One hclog JSON object and its newline.
fn format_line(record: &Record<'_>, now: SystemTime) -> String {
    let (level, module) = level_and_module(record);
    let level = match level {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    };
    let mut line = String::with_capacity(128);
    line.push_str("{\"@level\":\"");
    line.push_str(level);
    line.push_str("\",\"@message\":");
    push_json_string(&mut line, &record.args().to_string());
    line.push_str(",\"@module\":");
    // A plugin's line re-emitted by a host carries the plugin's own
    // `@module`: one key, named as hclog names a sub-logger.
    match record.key_values().get(log::kv::Key::from("@module")) {
        Some(sub) => push_json_string(&mut line, &format!("{module}.{sub}")),
        None => push_json_string(&mut line, module),
    }
    line.push_str(",\"@timestamp\":\"");
    push_timestamp(&mut line, now);
    line.push('"');
    // Structured fields (`log::info!(key = value; "message")`) become
    // key/value pairs of the host's log line; values are written as strings.
    let _ = record.key_values().visit(&mut Fields(&mut line));
    line.push_str("}\n");
    line
}

struct Fields<'a>(&'a mut String);

impl<'kvs> log::kv::VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> std::result::Result<(), log::kv::Error> {
        // Written once, above.
        if matches!(
            key.as_str(),
            "@module" | "@level" | "@message" | "@timestamp"
        ) {
            return Ok(());
        }
        self.0.push(',');
        push_json_string(self.0, key.as_str());
        self.0.push(':');
        push_json_string(self.0, &value.to_string());
        Ok(())
    }
}

fn push_json_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `2006-01-02T15:04:05.000000Z` in UTC: the layout go-plugin parses.
fn push_timestamp(out: &mut String, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_micros()
    );
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day), after
/// Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn line(level: Level, message: &str, at: SystemTime) -> String {
        format_line(
            &Record::builder()
                .level(level)
                .target("kv")
                .args(format_args!("{message}"))
                .build(),
            at,
        )
    }

    #[test]
    fn a_stalled_reader_costs_about_a_second_not_a_hang() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let (_reader, mut writer) = std::os::unix::net::UnixStream::pair().unwrap();
        // Fill the socket without blocking, then write as the logger does.
        writer.set_nonblocking(true).unwrap();
        while writer.write(&[b'x'; 4096]).is_ok() {}
        writer.set_nonblocking(false).unwrap();
        let start = std::time::Instant::now();
        write_fd(writer.as_raw_fd(), b"a log line\n");
        let waited = start.elapsed();
        assert!(
            waited < Duration::from_secs(5),
            "write_fd waited {waited:?}"
        );
    }

    #[test]
    fn a_reader_that_is_gone_is_not_a_panic() {
        use std::os::fd::AsRawFd;
        let (read, write) = std::io::pipe().unwrap();
        drop(read);
        write_fd(write.as_raw_fd(), b"nobody reads this\n");
    }

    #[test]
    fn timestamps_have_six_fractional_digits_in_utc() {
        let cases: &[(u64, u32, &str)] = &[
            (0, 0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400, 5, "2000-02-29T00:00:00.000005Z"),
            (1_795_645_754, 123_456, "2026-11-25T22:29:14.123456Z"),
            (4_102_444_799, 999_999, "2099-12-31T23:59:59.999999Z"),
        ];
        for (secs, micros, want) in cases {
            let at =
                UNIX_EPOCH + Duration::from_secs(*secs) + Duration::from_micros(u64::from(*micros));
            let mut got = String::new();
            push_timestamp(&mut got, at);
            assert_eq!(got, *want);
        }
    }

    /// A plugin's line re-emitted by a host: one `@module`, the plugin's
    /// named under the host's target.
    #[test]
    fn a_records_own_module_is_named_under_its_target() {
        let at = UNIX_EPOCH + Duration::from_secs(1);
        let fields = [("@module", "echo"), ("key", "k")];
        let record = Record::builder()
            .level(Level::Info)
            .target("plugin.sh")
            .key_values(&fields)
            .args(format_args!("m"))
            .build();
        let line = format_line(&record, at);
        assert_eq!(line.matches("@module").count(), 1, "{line}");
        assert!(line.contains("\"@module\":\"plugin.sh.echo\""), "{line}");
        assert!(line.contains("\"key\":\"k\""), "{line}");
    }

    #[test]
    fn lines_are_hclog_json_objects() {
        let at = UNIX_EPOCH + Duration::from_secs(1);
        assert_eq!(
            line(Level::Warn, "disk \"full\"\n\tretry \\ \u{1}", at),
            "{\"@level\":\"warn\",\"@message\":\"disk \\\"full\\\"\\n\\tretry \\\\ \\u0001\",\
             \"@module\":\"kv\",\"@timestamp\":\"1970-01-01T00:00:01.000000Z\"}\n"
        );
        let fields = [("user", "bob \"b\""), ("attempt", "2")];
        let with_fields = Record::builder()
            .level(Level::Info)
            .target("kv")
            .key_values(&fields)
            .args(format_args!("m"))
            .build();
        assert!(
            format_line(&with_fields, at)
                .ends_with("\"@timestamp\":\"1970-01-01T00:00:01.000000Z\",\"user\":\"bob \\\"b\\\"\",\"attempt\":\"2\"}\n"),
            "{}",
            format_line(&with_fields, at)
        );
        let grpc = Record::builder()
            .level(Level::Info)
            .module_path_static(Some(GRPC_CORE_MODULE))
            .args(format_args!("grpc epoll fd: 3"))
            .build();
        assert!(format_line(&grpc, at).starts_with(
            "{\"@level\":\"debug\",\"@message\":\"grpc epoll fd: 3\",\"@module\":\"grpc\""
        ));
        for (level, word) in [
            (Level::Error, "error"),
            (Level::Info, "info"),
            (Level::Debug, "debug"),
            (Level::Trace, "trace"),
        ] {
            assert!(line(level, "m", at).starts_with(&format!("{{\"@level\":\"{word}\"")));
        }
    }
}
