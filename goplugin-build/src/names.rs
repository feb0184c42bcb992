//! Rust names for proto names: file modules, messages, services and
//! methods, with keywords escaped.
//!
//! Two sets of rules meet in one generated file. Messages come from
//! rust-protobuf, whose code names other files' modules and nested
//! messages by its own rules ([`file_module`], [`nested_module`]); the
//! service code names them the same way. Service and method names are
//! this crate's own: grpcio's generator's rules (`KV` → `Kv`,
//! `GetValue` → `get_value`), so code written against it keeps compiling,
//! with every keyword escaped by a trailing `_`.

/// The words rust-protobuf escapes with a trailing `_` in the names it
/// generates (its list): file modules, nested-message modules, messages.
const PROTOBUF_KEYWORDS: &[&str] = &[
    "_", "abstract", "alignof", "as", "async", "await", "become", "box", "break", "const",
    "continue", "crate", "do", "dyn", "else", "enum", "extern", "false", "final", "fn", "for",
    "if", "impl", "in", "let", "loop", "macro", "match", "mod", "move", "mut", "offsetof",
    "override", "priv", "proc", "pub", "pure", "ref", "return", "Self", "self", "sizeof", "static",
    "struct", "super", "trait", "true", "type", "typeof", "unsafe", "unsized", "use", "virtual",
    "where", "while", "yield",
];

/// Words that are no identifier in some edition (keywords, reserved
/// words) but missing from rust-protobuf's list.
const MORE_KEYWORDS: &[&str] = &["gen", "try"];

/// Whether `word` cannot be an identifier (in edition 2024 or earlier).
pub(crate) fn is_keyword(word: &str) -> bool {
    PROTOBUF_KEYWORDS.contains(&word) || MORE_KEYWORDS.contains(&word)
}

/// `name`, or `name_` when it cannot be an identifier: for the names this
/// crate generates (services, methods).
pub(crate) fn escape(name: &str) -> String {
    if is_keyword(name) {
        format!("{name}_")
    } else {
        name.to_string()
    }
}

/// `name` escaped as rust-protobuf escapes the names it generates, so
/// that paths into its code match it.
pub(crate) fn escape_as_protobuf(name: &str) -> String {
    if PROTOBUF_KEYWORDS.contains(&name) {
        format!("{name}_")
    } else {
        name.to_string()
    }
}

/// A proto file's name without directories and `.proto`, every character
/// that cannot be in an identifier replaced by `_` (rust-protobuf's rule):
/// `a/b/github.com.acme.thing.proto` → `github_com_acme_thing`.
pub(crate) fn file_stem(proto: &str) -> String {
    let name = proto.rsplit('/').next().unwrap_or(proto);
    let name = name.strip_suffix(".proto").unwrap_or(name);
    let stem: String = name
        .chars()
        .enumerate()
        .map(|(i, c)| {
            let valid = c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit());
            if valid { c } else { '_' }
        })
        .collect();
    if stem.is_empty() {
        "_".to_string()
    } else {
        stem
    }
}

/// The module rust-protobuf gives a proto file's messages, and the name
/// its code uses for an imported file (`super::MODULE`).
pub(crate) fn file_module(proto: &str) -> String {
    escape_as_protobuf(&file_stem(proto))
}

/// The module rust-protobuf puts a message's nested messages in.
pub(crate) fn nested_module(message: &str) -> String {
    escape_as_protobuf(&protobuf_parse::snake_case(message))
}

/// The words of a name, as grpcio's generator splits them: at `_`, before
/// an upper-case letter that follows a lower-case one, and before the last
/// capital of a run followed by a lower-case letter (`GRPCBroker` →
/// `GRPC`, `Broker`).
fn words(name: &str) -> Vec<&str> {
    let bytes = name.as_bytes();
    let mut words = Vec::new();
    let mut start = 0;
    while start < bytes.len() {
        if bytes[start] == b'_' {
            start += 1;
            continue;
        }
        let mut end = bytes.len();
        let mut capitals = 0;
        let mut lower = false;
        for (i, &c) in bytes.iter().enumerate().skip(start) {
            if c.is_ascii_uppercase() {
                if lower {
                    end = i;
                    break;
                }
                capitals += 1;
            } else if c == b'_' {
                end = i;
                break;
            } else {
                lower = true;
                if capitals > 1 {
                    end = i - 1;
                    break;
                }
            }
        }
        words.push(&name[start..end]);
        start = end;
    }
    words
}

/// `GetValue` → `get_value`, before escaping.
pub(crate) fn snake_case(name: &str) -> String {
    let snake = words(name)
        .iter()
        .map(|word| word.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join("_");
    if snake.is_empty() {
        "_".to_string()
    } else {
        snake
    }
}

/// `GRPC_controller` → `GrpcController`, before escaping.
pub(crate) fn camel_case(name: &str) -> String {
    let camel: String = words(name)
        .iter()
        .map(|word| {
            let mut chars = word.chars();
            let first = chars.next().map(|c| c.to_ascii_uppercase());
            first
                .into_iter()
                .chain(chars.map(|c| c.to_ascii_lowercase()))
                .collect::<String>()
        })
        .collect();
    if camel.is_empty() {
        "_".to_string()
    } else {
        camel
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_and_service_names_follow_grpcios_generator() {
        for (name, snake) in [
            ("AsyncRequest", "async_request"),
            ("asyncRequest", "async_request"),
            ("createID", "create_id"),
            ("CreateIDForReq", "create_id_for_req"),
            ("Create_ID_For__Req", "create_id_for_req"),
            ("ID", "id"),
            ("GRPCBroker", "grpc_broker"),
            ("Type", "type"),
        ] {
            assert_eq!(snake_case(name), snake, "{name}");
        }
        for (name, camel) in [
            ("KV", "Kv"),
            ("GRPCController", "GrpcController"),
            ("async_r_client", "AsyncRClient"),
            ("S", "S"),
            ("Self", "Self"),
        ] {
            assert_eq!(camel_case(name), camel, "{name}");
        }
    }

    #[test]
    fn keywords_get_a_trailing_underscore() {
        for (word, escaped) in [
            ("type", "type_"),
            ("match", "match_"),
            ("do", "do_"),
            ("self", "self_"),
            ("Self", "Self_"),
            ("async", "async_"),
            ("gen", "gen_"),
            ("try", "try_"),
            ("get", "get"),
        ] {
            assert_eq!(escape(word), escaped);
        }
        // rust-protobuf's own list, for paths into its code.
        assert_eq!(escape_as_protobuf("gen"), "gen");
        assert_eq!(escape_as_protobuf("type"), "type_");
    }

    #[test]
    fn file_modules_follow_rust_protobuf() {
        assert_eq!(file_module("greeter.proto"), "greeter");
        assert_eq!(file_module("a/b/my-api.v1.proto"), "my_api_v1");
        assert_eq!(
            file_module("github.com.hashicorp.go.kms.wrapping.v2.types.proto"),
            "github_com_hashicorp_go_kms_wrapping_v2_types"
        );
        assert_eq!(file_module("type.proto"), "type_");
        assert_eq!(file_module("1st.proto"), "_st");
        assert_eq!(nested_module("Match"), "match_");
        assert_eq!(nested_module("HelloWorld"), "hello_world");
    }
}
