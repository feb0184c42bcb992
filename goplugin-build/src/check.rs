//! Errors a user can act on: protobuf-parse's errors said again with the
//! file, line and column, what was found and what was expected there; and
//! the checks it leaves to the generator (duplicate field numbers, proto2
//! groups, which rust-protobuf would drop without a word).

use std::collections::BTreeMap;
use std::fs;

use protobuf::descriptor::field_descriptor_proto::Type;
use protobuf::descriptor::{DescriptorProto, FileDescriptorProto};

use crate::imports::ProtoFile;
use crate::source::{self, Token};

/// protobuf-parse's error as a sentence: `FILE:LINE:COLUMN: what; found
/// …, expected …` where it gives a position, or the first duplicate field
/// it complained of by name.
pub(crate) fn parse_error(error: &anyhow::Error, files: &[ProtoFile]) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    let text = text
        .strip_prefix("using pure parser: ")
        .unwrap_or(&text)
        .to_string();
    if text.contains("Non-unique field name")
        && let Some(duplicate) = files.iter().find_map(duplicate_field)
    {
        return duplicate;
    }
    let Some((file, detail)) = text
        .strip_prefix("error in `")
        .and_then(|rest| rest.split_once("`: "))
    else {
        return text;
    };
    let path = files
        .iter()
        .find(|f| f.name == file || f.path.to_string_lossy() == file)
        .map_or_else(|| file.to_string(), |f| f.path.display().to_string());
    let source = fs::read_to_string(&path).unwrap_or_default();
    let tokens = source::tokens(&source);
    if let Some((line, column, what)) = position(detail) {
        // The parser's own "expecting …" is more precise than a list.
        let says_expected = what.to_lowercase().contains("expecting");
        return format!(
            "{path}:{line}:{column}: {what}{}",
            found_and_expected(&tokens, line, column, !says_expected)
        );
    }
    let detail = unknown_type(detail).unwrap_or_else(|| detail.to_string());
    let detail = detail.as_str();
    // A type error names the type or field without a position: the first
    // line where that name stands.
    let name = detail
        .split('`')
        .nth(1)
        .and_then(|name| name.rsplit('.').next())
        .filter(|name| !name.is_empty());
    match name.and_then(|name| {
        tokens
            .iter()
            .find(|t| t.text.rsplit('.').next() == Some(name))
    }) {
        Some(token) => format!("{path}:{}:{}: {detail}", token.line, token.column),
        None => format!("{path}: {detail}"),
    }
}

/// `at LINE:COLUMN: what` → the three parts.
fn position(detail: &str) -> Option<(usize, usize, &str)> {
    let rest = detail.strip_prefix("at ")?;
    let (place, what) = rest.split_once(": ")?;
    let (line, column) = place.split_once(':')?;
    Some((line.parse().ok()?, column.parse().ok()?, what))
}

/// protobuf-parse's "object is not found by path `T` in scope `.M`" in
/// words a user knows.
fn unknown_type(detail: &str) -> Option<String> {
    let rest = detail.strip_prefix("object is not found by path `")?;
    let (name, rest) = rest.split_once('`')?;
    let scope = rest
        .strip_prefix(" in scope `")
        .and_then(|s| s.strip_suffix('`'))
        .map(|s| s.trim_start_matches('.'))
        .filter(|s| !s.is_empty())
        .map_or(String::new(), |s| format!(" (in `{s}`)"));
    Some(format!(
        "unknown type `{name}`{scope}: a misspelled scalar type (string, int32, bytes, …), or a \
         message or enum that is neither defined nor imported (`import \"FILE.proto\";`)"
    ))
}

/// `; found `WORD`, expected one of …` for the token at a parse error.
fn found_and_expected(tokens: &[Token], line: usize, column: usize, list: bool) -> String {
    let Some(index) = tokens
        .iter()
        .position(|t| (t.line, t.column) >= (line, column))
    else {
        return "; found the end of the file".to_string();
    };
    let found = &tokens[index].text;
    let expected: &[&str] = match source::enclosing_blocks(tokens, index).last() {
        None => &[
            "syntax", "edition", "package", "import", "option", "message", "enum", "service",
            "extend",
        ],
        Some(&"message") => &[
            "a field (TYPE NAME = NUMBER;)",
            "optional",
            "repeated",
            "required",
            "map",
            "oneof",
            "message",
            "enum",
            "reserved",
            "extensions",
            "extend",
            "option",
            "}",
        ],
        Some(&"service") => &["rpc", "option", "}"],
        Some(&"enum") => &["a value (NAME = NUMBER;)", "option", "reserved", "}"],
        Some(&"oneof") => &["a field (TYPE NAME = NUMBER;)", "option", "}"],
        Some(_) => &[],
    };
    let mut sentence = format!("; found `{found}`");
    if list && !expected.is_empty() {
        sentence.push_str(", expected ");
        sentence.push_str(&expected.join(", "));
        if let Some(near) = expected
            .iter()
            .filter(|word| word.chars().all(|c| c.is_ascii_lowercase()))
            .find(|word| found != *word && distance(found, word) <= 2)
        {
            sentence.push_str(&format!(" (`{near}` misspelled?)"));
        }
    }
    sentence
}

/// Levenshtein distance, for "misspelled?".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let replaced = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = replaced.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// The first field of `file` whose number (or name) another field of its
/// message already has.
fn duplicate_field(file: &ProtoFile) -> Option<String> {
    let text = fs::read_to_string(&file.path).ok()?;
    let tokens = source::tokens(&text);
    // One entry per open block: the message's fields by number and by
    // name, or None for another kind of block.
    type Fields<'t> = (BTreeMap<u64, &'t Token>, BTreeMap<&'t str, &'t Token>);
    let mut blocks: Vec<(&str, Option<Fields<'_>>)> = Vec::new();
    let mut start = 0;
    for (i, token) in tokens.iter().enumerate() {
        let end = match token.text.as_str() {
            ";" | "{" => true,
            "}" => {
                blocks.pop();
                start = i + 1;
                continue;
            }
            _ => false,
        };
        if !end {
            continue;
        }
        let statement = &tokens[start..i];
        start = i + 1;
        let first = statement.first().map_or("", |t| t.text.as_str());
        let in_message = blocks
            .last()
            .is_some_and(|(kind, _)| matches!(*kind, "message" | "oneof"));
        let is_field = in_message
            && !matches!(
                first,
                "option" | "reserved" | "extensions" | "message" | "enum" | "oneof" | "extend"
            );
        let eq = statement.iter().position(|t| t.text == "=");
        let owner = blocks
            .iter_mut()
            .rev()
            .find_map(|(_, fields)| fields.as_mut());
        if is_field
            && let Some(eq) = eq
            && let (Some(name), Some(number)) = (
                eq.checked_sub(1).and_then(|at| statement.get(at)),
                statement.get(eq + 1),
            )
            && let (Some((by_number, by_name)), Some(value)) = (owner, parse_number(&number.text))
        {
            if let Some(first) = by_number.insert(value, name) {
                return Some(format!(
                    "{}:{}:{}: field `{}` has the number {value}, which field `{}` \
                     (line {}) already has: give each field of a message its own number",
                    file.path.display(),
                    number.line,
                    number.column,
                    name.text,
                    first.text,
                    first.line
                ));
            }
            if let Some(first) = by_name.insert(name.text.as_str(), name) {
                return Some(format!(
                    "{}:{}:{}: a second field is named `{}` (the first is on line {}): \
                     give each field of a message its own name",
                    file.path.display(),
                    name.line,
                    name.column,
                    name.text,
                    first.line
                ));
            }
        }
        if token.text == "{" {
            let kind = statement
                .iter()
                .map(|t| t.text.as_str())
                .find(|w| {
                    matches!(
                        *w,
                        "message" | "enum" | "service" | "oneof" | "extend" | "group"
                    )
                })
                .unwrap_or("{");
            let fields = match kind {
                "message" | "group" => Some((BTreeMap::new(), BTreeMap::new())),
                _ => None,
            };
            let kind = if kind == "group" { "message" } else { kind };
            blocks.push((kind, fields));
        }
    }
    None
}

fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// A proto2 group in a file to generate: refused, with its place, since
/// rust-protobuf leaves group fields out of the messages it generates.
pub(crate) fn groups(
    descriptors: &[FileDescriptorProto],
    files: &[ProtoFile],
) -> Result<(), String> {
    fn find<'d>(messages: &'d [DescriptorProto], path: &str) -> Option<(String, &'d str)> {
        for message in messages {
            let name = format!("{path}{}", message.name());
            if let Some(field) = message.field.iter().find(|f| f.type_() == Type::TYPE_GROUP) {
                return Some((name, field.name()));
            }
            if let Some(found) = find(&message.nested_type, &format!("{name}.")) {
                return Some(found);
            }
        }
        None
    }
    for file in files {
        let Some(descriptor) = descriptors.iter().find(|d| d.name() == file.name) else {
            continue;
        };
        if let Some((message, field)) = find(&descriptor.message_type, "") {
            let text = fs::read_to_string(&file.path).unwrap_or_default();
            let tokens = source::tokens(&text);
            // The group's field is its type name in lower case.
            let place = tokens
                .windows(2)
                .find(|pair| pair[0].text == "group" && pair[1].text.to_lowercase() == field)
                .map_or(String::new(), |pair| {
                    format!(":{}:{}", pair[0].line, pair[0].column)
                });
            return Err(format!(
                "{}{place}: message `{message}` has the proto2 group `{field}`, which the \
                 message generator (rust-protobuf) does not generate and would leave out: \
                 replace the group by a nested message and a field of that type, on both \
                 sides of the wire (a group has a wire type of its own)",
                file.path.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspellings_are_near() {
        assert_eq!(distance("mesage", "message"), 1);
        assert_eq!(distance("servce", "service"), 1);
        assert!(distance("banana", "message") > 2);
    }

    #[test]
    fn a_duplicate_number_is_found_in_nested_messages_and_oneofs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.proto");
        fs::write(
            &path,
            "message A {\n  message B { int32 x = 1; int32 y = 2; }\n  oneof o {\n    int32 p = 1;\n    int32 q = 1;\n  }\n}\n",
        )
        .unwrap();
        let file = ProtoFile {
            name: "d.proto".into(),
            path: path.clone(),
            imports: vec![],
        };
        let found = duplicate_field(&file).expect("found");
        assert!(
            found.contains("d.proto:5:15: field `q` has the number 1"),
            "{found}"
        );
        assert!(found.contains("`p` (line 4)"), "{found}");
    }
}
