//! A `.proto` file's text as tokens with their positions: enough to find
//! imports and to say, in an error, what stands at a line and column.
//! The parser proper is protobuf-parse's.

/// One token: a word (identifier, keyword or number), a string literal
/// with its quotes, or one punctuation character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) text: String,
    /// 1-based, as editors and protobuf-parse count.
    pub(crate) line: usize,
    /// 1-based, in characters.
    pub(crate) column: usize,
}

/// The tokens of `text`, comments left out. Never fails: an unterminated
/// string or comment ends at the end of the text.
pub(crate) fn tokens(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let (mut i, mut line, mut column) = (0, 1, 1);
    let advance = |i: &mut usize, line: &mut usize, column: &mut usize| {
        if chars[*i] == '\n' {
            *line += 1;
            *column = 1;
        } else {
            *column += 1;
        }
        *i += 1;
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            advance(&mut i, &mut line, &mut column);
        } else if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                advance(&mut i, &mut line, &mut column);
            }
        } else if c == '/' && next == Some('*') {
            advance(&mut i, &mut line, &mut column);
            advance(&mut i, &mut line, &mut column);
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                advance(&mut i, &mut line, &mut column);
            }
            for _ in 0..2 {
                if i < chars.len() {
                    advance(&mut i, &mut line, &mut column);
                }
            }
        } else {
            let (start_line, start_column) = (line, column);
            let mut word = String::new();
            if c == '"' || c == '\'' {
                word.push(c);
                advance(&mut i, &mut line, &mut column);
                while i < chars.len() && chars[i] != c && chars[i] != '\n' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        word.push(chars[i]);
                        advance(&mut i, &mut line, &mut column);
                    }
                    word.push(chars[i]);
                    advance(&mut i, &mut line, &mut column);
                }
                if i < chars.len() && chars[i] == c {
                    word.push(c);
                    advance(&mut i, &mut line, &mut column);
                }
            } else if is_word(c) {
                while i < chars.len() && is_word(chars[i]) {
                    word.push(chars[i]);
                    advance(&mut i, &mut line, &mut column);
                }
            } else {
                word.push(c);
                advance(&mut i, &mut line, &mut column);
            }
            tokens.push(Token {
                text: word,
                line: start_line,
                column: start_column,
            });
        }
    }
    tokens
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '.'
}

/// A string literal's content (`"a/b.proto"` → `a/b.proto`), escapes
/// left as written; `None` for a token that is no string literal.
pub(crate) fn string_literal(token: &str) -> Option<&str> {
    let quote = token.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    token
        .strip_prefix(quote)?
        .strip_suffix(quote)
        .filter(|_| token.len() >= 2)
}

/// The statements `import "NAME";` (also `import public`, `import weak`)
/// at the top level of a file: each imported name with the import's line.
pub(crate) fn imports(tokens: &[Token]) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    let mut depth = 0usize;
    for (i, token) in tokens.iter().enumerate() {
        match token.text.as_str() {
            "{" => depth += 1,
            "}" => depth = depth.saturating_sub(1),
            "import" if depth == 0 => {
                let mut at = i + 1;
                if matches!(
                    tokens.get(at).map(|t| t.text.as_str()),
                    Some("public" | "weak")
                ) {
                    at += 1;
                }
                if let Some(name) = tokens.get(at).and_then(|t| string_literal(&t.text)) {
                    found.push((name.to_string(), token.line));
                }
            }
            _ => {}
        }
    }
    found
}

/// The kinds of block (`message`, `enum`, `service`, `oneof`, `extend`,
/// or `{` for any other) that enclose the token at `index`, outermost
/// first.
pub(crate) fn enclosing_blocks(tokens: &[Token], index: usize) -> Vec<&str> {
    let mut stack: Vec<&str> = Vec::new();
    let mut statement_start = 0;
    for (i, token) in tokens.iter().enumerate().take(index) {
        match token.text.as_str() {
            "{" => {
                let kind = tokens[statement_start..i]
                    .iter()
                    .map(|t| t.text.as_str())
                    .find(|word| {
                        matches!(*word, "message" | "enum" | "service" | "oneof" | "extend")
                    })
                    .unwrap_or("{");
                stack.push(kind);
                statement_start = i + 1;
            }
            "}" => {
                stack.pop();
                statement_start = i + 1;
            }
            ";" => statement_start = i + 1,
            _ => {}
        }
    }
    stack
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_positions_and_skip_comments() {
        let tokens = tokens("syntax = \"proto3\"; // c\n/* x\n y */ message A {}\n");
        let texts: Vec<&str> = tokens.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(
            texts,
            ["syntax", "=", "\"proto3\"", ";", "message", "A", "{", "}"]
        );
        assert_eq!((tokens[4].line, tokens[4].column), (3, 7));
    }

    #[test]
    fn imports_at_the_top_level() {
        let text = "import \"a.proto\";\nimport public 'b/c.proto';\nmessage M { option (x) = \"import\"; }\nimport weak \"d.proto\";";
        assert_eq!(
            imports(&tokens(text)),
            [
                ("a.proto".to_string(), 1),
                ("b/c.proto".to_string(), 2),
                ("d.proto".to_string(), 4)
            ]
        );
    }

    #[test]
    fn blocks_around_a_token() {
        let tokens =
            tokens("message A { oneof o { int32 x = 1; } }\nservice S { rpc X(A) returns (A); }");
        let x = tokens.iter().position(|t| t.text == "x").unwrap();
        assert_eq!(enclosing_blocks(&tokens, x), ["message", "oneof"]);
        let rpc = tokens.iter().position(|t| t.text == "rpc").unwrap();
        assert_eq!(enclosing_blocks(&tokens, rpc), ["service"]);
    }
}
