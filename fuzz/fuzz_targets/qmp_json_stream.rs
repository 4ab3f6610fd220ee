//! Fuzzes the broker's QMP input path: the incremental JSON lexer
//! (`broker::qmp::json_lexer`) and the message splitter/parser
//! (`broker::qmp::json_stream`) on arbitrary bytes.
//!
//! The first bytes of the input (up to 8) choose the sizes of the pieces
//! the rest is fed in, as a socket would deliver it. Invariants: no
//! panic, and feeding in pieces gives exactly the tokens and messages
//! that feeding everything at once gives.

#![no_main]

use broker::qmp::json_lexer::{Lexer, Token};
use broker::qmp::json_stream::JsonStream;
use libfuzzer_sys::fuzz_target;

/// Splits `body` into pieces whose sizes cycle through `ctl` (1..=256).
fn pieces<'a>(ctl: &'a [u8], body: &'a [u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let want = ctl
            .get(i % ctl.len().max(1))
            .map_or(1, |&b| usize::from(b) + 1);
        let n = want.min(rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
        i += 1;
    }
    out
}

fn lex(chunks: &[&[u8]]) -> Vec<Token> {
    let mut lexer = Lexer::new();
    let mut toks = Vec::new();
    for c in chunks {
        lexer.feed(c, &mut |_, t| toks.push(t));
    }
    toks
}

fn split(chunks: &[&[u8]]) -> Vec<broker::qmp::json_stream::Item> {
    let mut stream = JsonStream::new();
    let mut out = Vec::new();
    for c in chunks {
        stream.feed(c, &mut out);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let n = data.first().map_or(0, |&b| usize::from(b % 8));
    let (ctl, body) = data.split_at((n + 1).min(data.len()));
    let chunked = pieces(ctl, body);
    let whole: [&[u8]; 1] = [body];

    assert_eq!(lex(&chunked), lex(&whole), "lexer depends on chunking");
    assert_eq!(
        split(&chunked),
        split(&whole),
        "splitter depends on chunking"
    );
});
