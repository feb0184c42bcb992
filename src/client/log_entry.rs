//! A plugin's stderr, host side: each line re-emitted through the `log`
//! crate at the level the plugin logged it, as go-plugin's host does
//! (`client.go` `logStderr`, `log_entry.go`).
//!
//! - A line that is a JSON object with a string `@message` and a string
//!   `@level` of `trace`, `debug`, `info`, `warn` or `error` (hclog's JSON
//!   format, which goplugin's plugins and Go plugins write) becomes a record
//!   at that level with that message; every other key (`@module`,
//!   `@caller`, the plugin's own fields, and `@timestamp` as `timestamp`)
//!   becomes a key-value pair of the record. A `@timestamp` that is not
//!   hclog's layout makes the line plain text, as in go-plugin.
//! - Other lines: `[TRACE]` … `[ERROR]` prefixes give the level, anything
//!   else is debug; a line starting with `panic: ` or `fatal error: ` is an
//!   error, and so is every plain line after it (the rest of the trace).
//!
//! Where go-plugin's host panics (a `@message` or `@level` that is no
//! string), the line is logged as plain text at debug.

use log::{Level, Record};
use serde_json::{Map, Value};

use crate::error::printable;

/// Re-emits a plugin's stderr lines under one `log` target.
#[derive(Debug)]
pub(crate) struct StderrLog {
    target: String,
    panicking: bool,
}

impl StderrLog {
    /// Lines go to `log` under `target` (`plugin.<name>`).
    pub(crate) fn new(target: String) -> StderrLog {
        StderrLog {
            target,
            panicking: false,
        }
    }

    /// Logs one line (without its newline).
    pub(crate) fn line(&mut self, line: &str) {
        if let Some((level, message, fields)) = hclog_json(line) {
            self.emit(level, &message, &fields);
            return;
        }
        if line.starts_with("panic: ") || line.starts_with("fatal error: ") {
            self.panicking = true;
        }
        let level = if self.panicking {
            Level::Error
        } else {
            plain_level(line)
        };
        self.emit(level, line, &[]);
    }

    fn emit(&self, level: Level, message: &str, fields: &[(String, String)]) {
        if level > log::max_level() {
            return;
        }
        // What the plugin wrote reaches the host's log (and maybe a
        // terminal) without its control characters.
        let message = printable(message);
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(key, value)| (printable(key), printable(value)))
            .collect();
        log::logger().log(
            &Record::builder()
                .level(level)
                .target(&self.target)
                .args(format_args!("{message}"))
                .key_values(&fields)
                .build(),
        );
    }
}

/// The level a plain line's prefix names, as go-plugin reads it.
fn plain_level(line: &str) -> Level {
    for (prefix, level) in [
        ("[TRACE]", Level::Trace),
        ("[DEBUG]", Level::Debug),
        ("[INFO]", Level::Info),
        ("[WARN]", Level::Warn),
        ("[ERROR]", Level::Error),
    ] {
        if line.starts_with(prefix) {
            return level;
        }
    }
    Level::Debug
}

/// The keys of a line other than its message and level, as text.
type Fields = Vec<(String, String)>;

/// An hclog JSON line: its level, message and other keys.
fn hclog_json(line: &str) -> Option<(Level, String, Fields)> {
    if !line.trim_start().starts_with('{') {
        return None;
    }
    let Ok(Value::Object(object)) = serde_json::from_str::<Value>(line) else {
        return None;
    };
    let message = object.get("@message")?.as_str()?.to_string();
    let level = match object
        .get("@level")?
        .as_str()?
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "trace" => Level::Trace,
        "debug" => Level::Debug,
        "info" => Level::Info,
        "warn" => Level::Warn,
        "error" => Level::Error,
        // go-plugin logs the whole line at debug for any other level.
        _ => return None,
    };
    Some((level, message, fields(&object)?))
}

/// The keys of an hclog line other than its message and level; `None` when
/// `@timestamp` is not hclog's layout (go-plugin then logs the line as
/// text).
fn fields(object: &Map<String, Value>) -> Option<Fields> {
    let mut fields = Vec::with_capacity(object.len());
    for (key, value) in object {
        match key.as_str() {
            "@message" | "@level" => {}
            "@timestamp" => {
                let stamp = value.as_str().filter(|s| is_hclog_timestamp(s))?;
                fields.push(("timestamp".to_string(), stamp.to_string()));
            }
            _ => {
                let value = match value {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                fields.push((key.clone(), value));
            }
        }
    }
    Some(fields)
}

/// Go's layout `2006-01-02T15:04:05.000000Z07:00`: six fractional digits,
/// then `Z` or `±hh:mm`.
fn is_hclog_timestamp(stamp: &str) -> bool {
    let bytes = stamp.as_bytes();
    let shape = b"dddd-dd-ddTdd:dd:dd.dddddd";
    if bytes.len() < shape.len() + 1 {
        return false;
    }
    let fits = shape.iter().zip(bytes).all(|(want, got)| match want {
        b'd' => got.is_ascii_digit(),
        other => other == got,
    });
    let zone = &bytes[shape.len()..];
    fits && (zone == b"Z"
        || (zone.len() == 6
            && matches!(zone[0], b'+' | b'-')
            && zone[1..3].iter().all(u8::is_ascii_digit)
            && zone[3] == b':'
            && zone[4..].iter().all(u8::is_ascii_digit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hclog_json_lines_keep_their_level_and_fields() {
        let line = r#"{"@level":"warn","@message":"disk low","@module":"kv","@timestamp":"2026-12-02T07:00:00.123456Z","free_mb":12,"path":"/x"}"#;
        let (level, message, fields) = hclog_json(line).expect("an hclog line");
        assert_eq!(level, Level::Warn);
        assert_eq!(message, "disk low");
        for pair in [
            ("@module", "kv"),
            ("timestamp", "2026-12-02T07:00:00.123456Z"),
            ("free_mb", "12"),
            ("path", "/x"),
        ] {
            assert!(
                fields.contains(&(pair.0.to_string(), pair.1.to_string())),
                "{pair:?} in {fields:?}"
            );
        }
    }

    #[test]
    fn lines_go_plugin_would_not_parse_are_text() {
        for line in [
            "plain text",
            r#"{"@level":"warning","@message":"m"}"#,
            r#"{"@level":"info","@message":42}"#,
            r#"{"@level":7,"@message":"m"}"#,
            r#"{"@message":"m"}"#,
            r#"{"@level":"info","@message":"m","@timestamp":"2026-12-02T07:00:00.123Z"}"#,
            r#"["@level","info"]"#,
            "{not json",
        ] {
            assert!(hclog_json(line).is_none(), "{line}");
        }
        assert_eq!(plain_level("[WARN]  careful"), Level::Warn);
        assert_eq!(plain_level("[ERROR] broke"), Level::Error);
        assert_eq!(plain_level("just text"), Level::Debug);
    }

    #[test]
    fn timestamps_in_hclog_layout() {
        for (stamp, ok) in [
            ("2026-12-02T07:00:00.123456Z", true),
            ("2026-12-02T07:00:00.123456+01:00", true),
            ("2026-12-02T07:00:00.123456-09:30", true),
            ("2026-12-02T07:00:00.12345Z", false),
            ("2026-12-02T07:00:00Z", false),
            ("2026-12-02T07:00:00.123456", false),
            ("2026-12-02T07:00:00.123456+0100", false),
            ("", false),
        ] {
            assert_eq!(is_hclog_timestamp(stamp), ok, "{stamp}");
        }
    }

    #[test]
    fn a_panic_makes_the_rest_errors() {
        let mut log = StderrLog::new("plugin.test".into());
        log.line("[DEBUG] fine");
        assert!(!log.panicking);
        log.line("panic: runtime error: index out of range");
        assert!(log.panicking);
    }
}
