//! Splits a QMP byte stream into JSON values, as QEMU's
//! `qobject/json-streamer.c` does: tokens are collected while braces or
//! brackets are open; a message ends when both counts return to zero (or go
//! negative, which is an error), and a scalar at top level is a message by
//! itself. Syntax errors yield an error item and the stream goes on.
//!
//! Limits (QEMU's `MAX_NESTING` is kept; the size limit is much smaller
//! than QEMU's 64 MiB, since no bulkhead command takes large arguments):
//! a message deeper than [`MAX_NESTING`] or longer than [`MAX_MESSAGE`]
//! bytes is answered with one error and the rest of that message is
//! skipped (QEMU instead re-lexes the rest as new messages, answering each
//! fragment with an error).

use serde_json::{Map, Number, Value};

use super::json_lexer::{Lexer, Token, TokenKind};

/// Deepest nesting of objects and arrays accepted (QEMU's).
pub const MAX_NESTING: usize = 1024;
/// Largest message accepted, in bytes.
pub const MAX_MESSAGE: usize = 1 << 20;

/// One item the stream yields: a value or the text of a JSON error.
pub type Item = Result<Value, String>;

/// The incremental splitter and parser.
#[derive(Debug, Default)]
pub struct JsonStream {
    lexer: Lexer,
    tokens: Vec<Token>,
    braces: i64,
    brackets: i64,
    size: usize,
    /// Skipping the rest of an over-limit message.
    skipping: bool,
}

impl JsonStream {
    /// A stream at the start of input.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds `data`; appends every completed message to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Item>) {
        let mut lexer = std::mem::take(&mut self.lexer);
        for chunk in data.chunks(4096) {
            lexer.feed(chunk, &mut |lx, tok| self.token(lx, tok, out));
            if !self.skipping && self.size + lexer.pending_len() > MAX_MESSAGE {
                out.push(Err("JSON token size limit exceeded".into()));
                self.start_skipping(&mut lexer);
            }
        }
        self.lexer = lexer;
    }

    fn start_skipping(&mut self, lexer: &mut Lexer) {
        self.skipping = true;
        self.tokens.clear();
        self.size = 0;
        lexer.set_discard(true);
        if self.braces <= 0 && self.brackets <= 0 {
            // Only a scalar is pending; it ends the message by itself.
            self.braces = 0;
            self.brackets = 0;
        }
    }

    fn reset(&mut self, lexer: &mut Lexer) {
        self.tokens.clear();
        self.braces = 0;
        self.brackets = 0;
        self.size = 0;
        if self.skipping {
            self.skipping = false;
            lexer.set_discard(false);
        }
    }

    fn token(&mut self, lexer: &mut Lexer, tok: Token, out: &mut Vec<Item>) {
        match tok.kind {
            TokenKind::LCurly => self.braces += 1,
            TokenKind::RCurly => self.braces -= 1,
            TokenKind::LSquare => self.brackets += 1,
            TokenKind::RSquare => self.brackets -= 1,
            TokenKind::Error if !self.skipping => {
                out.push(Err(format!(
                    "JSON parse error, stray '{}'",
                    String::from_utf8_lossy(&tok.text)
                )));
                self.reset(lexer);
                return;
            }
            TokenKind::Error
            | TokenKind::Colon
            | TokenKind::Comma
            | TokenKind::Str
            | TokenKind::Int
            | TokenKind::Float
            | TokenKind::Keyword => {}
        }
        let open = self.braces > 0 || self.brackets > 0;
        let ended = !open || self.braces < 0 || self.brackets < 0;
        if self.skipping {
            if ended {
                self.reset(lexer);
            }
            return;
        }
        self.size += tok.text.len();
        if self.size > MAX_MESSAGE {
            out.push(Err("JSON token size limit exceeded".into()));
            self.start_skipping(lexer);
            if ended {
                self.reset(lexer);
            }
            return;
        }
        self.tokens.push(tok);
        if ended {
            out.push(parse_tokens(&self.tokens));
            self.reset(lexer);
        } else if (self.braces + self.brackets) as usize > MAX_NESTING {
            out.push(Err("JSON nesting depth limit exceeded".into()));
            self.start_skipping(lexer);
        }
    }
}

/// Parses one message's tokens (QEMU's `json-parser.c` messages).
fn parse_tokens(tokens: &[Token]) -> Item {
    let mut p = Parser { tokens, pos: 0 };
    p.value().map_err(|m| format!("JSON parse error, {m}"))
}

struct Parser<'a> {
    tokens: &'a [Token],
    pos: usize,
}

type PResult<T> = Result<T, String>;

impl Parser<'_> {
    fn next(&mut self) -> PResult<&Token> {
        let t = self
            .tokens
            .get(self.pos)
            .ok_or_else(|| "premature EOI".to_owned())?;
        self.pos += 1;
        Ok(t)
    }

    fn peek_kind(&self) -> PResult<TokenKind> {
        self.tokens
            .get(self.pos)
            .map(|t| t.kind)
            .ok_or_else(|| "premature EOI".to_owned())
    }

    fn value(&mut self) -> PResult<Value> {
        match self.peek_kind()? {
            TokenKind::LCurly => self.object(),
            TokenKind::LSquare => self.array(),
            TokenKind::Str => {
                let t = self.next()?;
                decode_string(&t.text).map(Value::String)
            }
            TokenKind::Int | TokenKind::Float => {
                let t = self.next()?;
                Ok(Value::Number(number(&t.text)))
            }
            TokenKind::Keyword => {
                let t = self.next()?;
                match t.text.as_slice() {
                    b"true" => Ok(Value::Bool(true)),
                    b"false" => Ok(Value::Bool(false)),
                    b"null" => Ok(Value::Null),
                    other => Err(format!(
                        "invalid keyword '{}'",
                        String::from_utf8_lossy(other)
                    )),
                }
            }
            TokenKind::RCurly
            | TokenKind::RSquare
            | TokenKind::Colon
            | TokenKind::Comma
            | TokenKind::Error => Err("expecting value".into()),
        }
    }

    fn object(&mut self) -> PResult<Value> {
        self.next()?;
        let mut map = Map::new();
        if self.peek_kind()? == TokenKind::RCurly {
            self.next()?;
            return Ok(Value::Object(map));
        }
        loop {
            let key = match self.value()? {
                Value::String(s) => s,
                _ => return Err("key is not a string in object".into()),
            };
            if self.next()?.kind != TokenKind::Colon {
                return Err("missing : in object pair".into());
            }
            let v = self.value()?;
            map.insert(key, v);
            match self.next()?.kind {
                TokenKind::RCurly => return Ok(Value::Object(map)),
                TokenKind::Comma => {}
                _ => return Err("expected separator in dict".into()),
            }
        }
    }

    fn array(&mut self) -> PResult<Value> {
        self.next()?;
        let mut list = Vec::new();
        if self.peek_kind()? == TokenKind::RSquare {
            self.next()?;
            return Ok(Value::Array(list));
        }
        loop {
            list.push(self.value()?);
            match self.next()?.kind {
                TokenKind::RSquare => return Ok(Value::Array(list)),
                TokenKind::Comma => {}
                _ => return Err("expected separator in list".into()),
            }
        }
    }
}

/// QEMU's number rule: int64 if it fits, else uint64, else a double.
fn number(text: &[u8]) -> Number {
    let s = std::str::from_utf8(text).unwrap_or("0");
    if let Ok(i) = s.parse::<i64>() {
        return Number::from(i);
    }
    if let Ok(u) = s.parse::<u64>() {
        return Number::from(u);
    }
    s.parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .unwrap_or_else(|| Number::from(0))
}

fn hex4(s: &[u8]) -> Option<u32> {
    let h = std::str::from_utf8(s.get(..4)?).ok()?;
    if !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(h, 16).ok()
}

/// Decodes a quoted string token (either quote style).
fn decode_string(text: &[u8]) -> PResult<String> {
    let body = text.get(1..text.len().saturating_sub(1)).unwrap_or(&[]);
    let mut out: Vec<u8> = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let e = body.get(i + 1).copied().unwrap_or(0);
        i += 2;
        let ch = match e {
            b'"' => '"',
            b'\'' => '\'',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let bad = || {
                    format!(
                        "\\u{} is not a valid Unicode character",
                        String::from_utf8_lossy(&body[i..])
                    )
                };
                let hi = hex4(&body[i..]).ok_or_else(bad)?;
                let mut cp = hi;
                let mut used = 4;
                if (0xd800..0xdc00).contains(&hi) {
                    let lo = match (body.get(i + 4..i + 6), body.get(i + 6..)) {
                        (Some(b"\\u"), Some(rest)) => hex4(rest),
                        _ => None,
                    };
                    match lo {
                        Some(lo) if (0xdc00..0xe000).contains(&lo) => {
                            cp = 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00);
                            used = 10;
                        }
                        _ => return Err(bad()),
                    }
                }
                let c = match char::from_u32(cp) {
                    Some(c) if cp != 0 => c,
                    _ => return Err(bad()),
                };
                i += used;
                c
            }
            _ => return Err("invalid escape sequence in string".into()),
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    }
    String::from_utf8(out).map_err(|_| "invalid UTF-8 sequence in string".into())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn feed(input: &[u8]) -> Vec<Item> {
        let mut s = JsonStream::new();
        let mut out = Vec::new();
        s.feed(input, &mut out);
        out
    }

    #[test]
    fn several_messages_in_one_chunk_come_out_in_order() {
        let out = feed(br#"{"a": 1}{"b": [2]} {'c': "x"}"#);
        assert_eq!(
            out,
            vec![
                Ok(json!({"a": 1})),
                Ok(json!({"b": [2]})),
                Ok(json!({"c": "x"}))
            ]
        );
    }

    #[test]
    fn message_split_across_feeds_is_reassembled() {
        let mut s = JsonStream::new();
        let mut out = Vec::new();
        s.feed(br#"{"exec"#, &mut out);
        assert!(out.is_empty());
        s.feed(br#"ute": "q", "id": {"x": "}{"}}"#, &mut out);
        assert_eq!(out, vec![Ok(json!({"execute": "q", "id": {"x": "}{"}}))]);
    }

    #[test]
    fn syntax_error_is_reported_and_next_message_parses() {
        let out = feed(br#"{"execute": "x" ,}{"execute": "y"}"#);
        assert_eq!(out[0], Err("JSON parse error, expecting value".into()));
        assert_eq!(out[1], Ok(json!({"execute": "y"})));
    }

    #[test]
    fn qemu_parse_error_messages() {
        assert_eq!(feed(b"@")[0], Err("JSON parse error, stray '@'".into()));
        assert_eq!(
            feed(b"{\"a\": tru}")[0],
            Err("JSON parse error, invalid keyword 'tru'".into())
        );
        assert_eq!(
            feed(b"{\"a\" 1}")[0],
            Err("JSON parse error, missing : in object pair".into())
        );
        assert_eq!(
            feed(b"{1:2}")[0],
            Err("JSON parse error, key is not a string in object".into())
        );
        assert_eq!(
            feed(b"{\"a\": \"\\q\"}")[0],
            Err("JSON parse error, invalid escape sequence in string".into())
        );
        assert_eq!(
            feed(b"{\"a\": 1]")[0],
            Err("JSON parse error, expected separator in dict".into())
        );
        assert_eq!(
            feed(b"[1}")[0],
            Err("JSON parse error, expected separator in list".into())
        );
        assert_eq!(
            feed(b"}")[0],
            Err("JSON parse error, expecting value".into())
        );
    }

    #[test]
    fn top_level_scalars_are_messages() {
        assert_eq!(
            feed(b"1 \"s\" null "),
            vec![Ok(json!(1)), Ok(json!("s")), Ok(Value::Null)]
        );
    }

    #[test]
    fn numbers_follow_qemu_integer_rules() {
        let out = feed(b"[-9223372036854775808, 18446744073709551615, 18446744073709551616, 1.5]");
        let v = out[0].clone().unwrap();
        assert_eq!(v[0].as_i64(), Some(i64::MIN));
        assert_eq!(v[1].as_u64(), Some(u64::MAX));
        assert!(v[2].is_f64());
        assert_eq!(v[3].as_f64(), Some(1.5));
    }

    #[test]
    fn unicode_escapes_decode_including_surrogate_pairs() {
        let out = feed(br#"["\u00e9\ud83d\ude00", "\u12"]"#);
        assert_eq!(out.len(), 1);
        assert!(out[0]
            .as_ref()
            .unwrap_err()
            .contains("is not a valid Unicode character"));
        let ok = feed(br#"["\u00e9\ud83d\ude00"]"#);
        assert_eq!(ok[0], Ok(json!(["é😀"])));
    }

    #[test]
    fn too_deep_nesting_gives_one_error_and_stream_recovers() {
        let deep = format!(
            "{}{}",
            "[".repeat(MAX_NESTING + 5),
            "]".repeat(MAX_NESTING + 5)
        );
        let out = feed(format!("{deep}{{\"ok\": 1}}").as_bytes());
        assert_eq!(
            out,
            vec![
                Err("JSON nesting depth limit exceeded".into()),
                Ok(json!({"ok": 1}))
            ]
        );
    }

    #[test]
    fn oversized_message_gives_one_error_and_stream_recovers() {
        let big = format!(
            "{{\"id\": \"{}\", \"x\": [1, 2]}}{{\"ok\": 1}}",
            "a".repeat(MAX_MESSAGE + 10)
        );
        let out = feed(big.as_bytes());
        let short: Vec<_> = out
            .iter()
            .map(|r| r.as_ref().map(|v| v.to_string().len()))
            .collect();
        assert_eq!(
            short,
            vec![Err(&"JSON token size limit exceeded".to_owned()), Ok(8)]
        );
    }

    #[test]
    fn oversized_message_split_in_many_feeds_is_refused_once() {
        let mut s = JsonStream::new();
        let mut out = Vec::new();
        s.feed(b"{\"id\": [", &mut out);
        for _ in 0..(MAX_MESSAGE / 900) {
            s.feed(
                &b"\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\", ".repeat(16),
                &mut out,
            );
        }
        s.feed(b"1]}{\"ok\": true}", &mut out);
        let short: Vec<_> = out
            .iter()
            .map(|r| r.as_ref().map(|v| v.to_string().len()))
            .collect();
        assert_eq!(
            short,
            vec![Err(&"JSON token size limit exceeded".to_owned()), Ok(11)]
        );
    }

    #[test]
    fn stray_error_resets_the_pending_message() {
        let out = feed(b"{\"a\": 01}{\"b\": 2}");
        assert_eq!(out[0], Err("JSON parse error, stray '01'".into()));
        assert_eq!(out[1], Err("JSON parse error, expecting value".into()));
        assert_eq!(out[2], Ok(json!({"b": 2})));
    }

    #[test]
    fn random_bytes_never_panic_and_a_control_character_resynchronises() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut s = JsonStream::new();
        let mut out = Vec::new();
        for _ in 0..2000 {
            let mut chunk = [0u8; 97];
            for b in chunk.iter_mut() {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                // Bias towards JSON's own characters so that deep and odd
                // structures are produced, not only stray bytes.
                let pick = (seed >> 33) as usize;
                let alphabet = b"{}[]\"',:0123456789-.eEtrufalsn \n\xff";
                *b = alphabet[pick % alphabet.len()];
            }
            s.feed(&chunk, &mut out);
            out.clear();
        }
        // Whatever state the garbage left: close any string with a
        // control character, then close every open structure.
        s.feed(b"\n", &mut out);
        s.feed(&b"]}".repeat(MAX_NESTING + 1), &mut out);
        out.clear();
        s.feed(br#"{"ok": 1}"#, &mut out);
        assert_eq!(out.last(), Some(&Ok(json!({"ok": 1}))));
    }
}
