//! An incremental JSON lexer with QEMU's rules (`qobject/json-lexer.c`):
//! bytes arrive in arbitrary pieces and come out as [`Token`]s.
//!
//! Like QEMU's, it accepts single-quoted strings as well as double-quoted
//! ones, leaves escape and UTF-8 checks to the parser, and recovers from an
//! invalid byte by reporting it as an [`TokenKind::Error`] token, then
//! skipping up to the next structural character (`{}[]`) or control
//! character, where a client can resynchronise.

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// `{`
    LCurly,
    /// `}`
    RCurly,
    /// `[`
    LSquare,
    /// `]`
    RSquare,
    /// `:`
    Colon,
    /// `,`
    Comma,
    /// A string, quotes included, escapes not yet decoded.
    Str,
    /// An integer literal.
    Int,
    /// A number with a fraction or exponent.
    Float,
    /// A run of lowercase letters (`true`, `false`, `null` or garbage).
    Keyword,
    /// Bytes that cannot start or continue a token ("stray").
    Error,
}

/// One token and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The kind.
    pub kind: TokenKind,
    /// The raw bytes (empty while discarding, see [`Lexer::set_discard`]).
    pub text: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    /// Inside a string opened by `quote`; `escape` after a backslash.
    Str {
        quote: u8,
        escape: bool,
    },
    /// After `-`.
    Minus,
    /// After a leading `0` (or `-0`).
    Zero,
    /// In the integer digits.
    IntDigits,
    /// After `.`, before any digit.
    Dot,
    /// In the fraction digits.
    FracDigits,
    /// After `e`/`E`.
    Exp,
    /// After the exponent's sign.
    ExpSign,
    /// In the exponent digits.
    ExpDigits,
    /// In a keyword.
    Keyword,
    /// Skipping after an error.
    Recovery,
}

/// The incremental lexer.
#[derive(Debug)]
pub struct Lexer {
    state: State,
    text: Vec<u8>,
    /// Length of the current token, counted even while discarding.
    len: usize,
    discard: bool,
}

impl Default for Lexer {
    fn default() -> Self {
        Lexer {
            state: State::Start,
            text: Vec::new(),
            len: 0,
            discard: false,
        }
    }
}

fn is_structural(b: u8) -> bool {
    matches!(b, b'{' | b'}' | b'[' | b']')
}

impl Lexer {
    /// A lexer at the start of input.
    pub fn new() -> Self {
        Self::default()
    }

    /// Length in bytes of the token being lexed.
    pub fn pending_len(&self) -> usize {
        self.len
    }

    /// While set, token text is not kept (tokens still come out, empty),
    /// so an oversized message can be skipped without storing it.
    pub fn set_discard(&mut self, on: bool) {
        self.discard = on;
        if on {
            self.text = Vec::new();
        }
    }

    fn push(&mut self, b: u8) {
        self.len += 1;
        if !self.discard {
            self.text.push(b);
        }
    }

    fn take(&mut self, kind: TokenKind) -> Token {
        self.len = 0;
        Token {
            kind,
            text: std::mem::take(&mut self.text),
        }
    }

    fn single(&self, kind: TokenKind, b: u8) -> Token {
        let text = if self.discard { Vec::new() } else { vec![b] };
        Token { kind, text }
    }

    /// Feeds `data`; calls `emit` for every completed token.
    pub fn feed(&mut self, data: &[u8], emit: &mut impl FnMut(&mut Self, Token)) {
        for &b in data {
            self.feed_byte(b, emit);
        }
    }

    fn feed_byte(&mut self, b: u8, emit: &mut impl FnMut(&mut Self, Token)) {
        // A byte may end one token and then start another (lookahead):
        // loop until it has been consumed.
        loop {
            match self.state {
                State::Start => {
                    self.start(b, emit);
                    return;
                }
                State::Recovery => {
                    if is_structural(b) || (b < 0x20 && b != b'\t') || b >= 0xfe {
                        self.state = State::Start;
                        continue;
                    }
                    return;
                }
                State::Str { quote, escape } => {
                    if escape {
                        self.push(b);
                        self.state = State::Str {
                            quote,
                            escape: false,
                        };
                    } else if b == quote {
                        self.push(b);
                        self.state = State::Start;
                        let t = self.take(TokenKind::Str);
                        emit(self, t);
                    } else if b == b'\\' {
                        self.push(b);
                        self.state = State::Str {
                            quote,
                            escape: true,
                        };
                    } else if b < 0x20 {
                        self.error(b, emit);
                    } else {
                        self.push(b);
                    }
                    return;
                }
                State::Keyword => {
                    if b.is_ascii_lowercase() {
                        self.push(b);
                        return;
                    }
                    self.state = State::Start;
                    let t = self.take(TokenKind::Keyword);
                    emit(self, t);
                }
                State::Minus => {
                    match b {
                        b'0' => self.state = State::Zero,
                        b'1'..=b'9' => self.state = State::IntDigits,
                        _ => return self.error(b, emit),
                    }
                    self.push(b);
                    return;
                }
                State::Zero | State::IntDigits => {
                    match (self.state, b) {
                        (State::Zero, b'0'..=b'9') => return self.error(b, emit),
                        (State::IntDigits, b'0'..=b'9') => {}
                        (_, b'.') => self.state = State::Dot,
                        (_, b'e' | b'E') => self.state = State::Exp,
                        _ => {
                            self.state = State::Start;
                            let t = self.take(TokenKind::Int);
                            emit(self, t);
                            continue;
                        }
                    }
                    self.push(b);
                    return;
                }
                State::Dot => {
                    if !b.is_ascii_digit() {
                        return self.error(b, emit);
                    }
                    self.state = State::FracDigits;
                    self.push(b);
                    return;
                }
                State::FracDigits => {
                    match b {
                        b'0'..=b'9' => {}
                        b'e' | b'E' => self.state = State::Exp,
                        _ => {
                            self.state = State::Start;
                            let t = self.take(TokenKind::Float);
                            emit(self, t);
                            continue;
                        }
                    }
                    self.push(b);
                    return;
                }
                State::Exp | State::ExpSign => {
                    match (self.state, b) {
                        (State::Exp, b'+' | b'-') => self.state = State::ExpSign,
                        (_, b'0'..=b'9') => self.state = State::ExpDigits,
                        _ => return self.error(b, emit),
                    }
                    self.push(b);
                    return;
                }
                State::ExpDigits => {
                    if b.is_ascii_digit() {
                        self.push(b);
                        return;
                    }
                    self.state = State::Start;
                    let t = self.take(TokenKind::Float);
                    emit(self, t);
                }
            }
        }
    }

    fn start(&mut self, b: u8, emit: &mut impl FnMut(&mut Self, Token)) {
        let kind = match b {
            b'{' => TokenKind::LCurly,
            b'}' => TokenKind::RCurly,
            b'[' => TokenKind::LSquare,
            b']' => TokenKind::RSquare,
            b':' => TokenKind::Colon,
            b',' => TokenKind::Comma,
            b' ' | b'\t' | b'\n' | b'\r' => return,
            b'"' | b'\'' => {
                self.push(b);
                self.state = State::Str {
                    quote: b,
                    escape: false,
                };
                return;
            }
            b'-' => {
                self.push(b);
                self.state = State::Minus;
                return;
            }
            b'0' => {
                self.push(b);
                self.state = State::Zero;
                return;
            }
            b'1'..=b'9' => {
                self.push(b);
                self.state = State::IntDigits;
                return;
            }
            b'a'..=b'z' => {
                self.push(b);
                self.state = State::Keyword;
                return;
            }
            _ => return self.error(b, emit),
        };
        let t = self.single(kind, b);
        emit(self, t);
    }

    /// `b` cannot continue the current token: report the token so far with
    /// `b` as an error, then skip to a resynchronisation point.
    fn error(&mut self, b: u8, emit: &mut impl FnMut(&mut Self, Token)) {
        self.push(b);
        self.state = State::Recovery;
        let t = self.take(TokenKind::Error);
        emit(self, t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lex(input: &[u8]) -> Vec<(TokenKind, String)> {
        let mut out = Vec::new();
        let mut l = Lexer::new();
        l.feed(input, &mut |_, t| {
            out.push((t.kind, String::from_utf8_lossy(&t.text).into_owned()))
        });
        out
    }

    #[test]
    fn tokens_of_a_command_are_recognised() {
        use TokenKind::*;
        let toks = lex(br#"{"execute": 'x', "n": [-1, 2.5e3, true]} "#);
        let kinds: Vec<_> = toks.iter().map(|t| t.0).collect();
        assert_eq!(
            kinds,
            [
                LCurly, Str, Colon, Str, Comma, Str, Colon, LSquare, Int, Comma, Float, Comma,
                Keyword, RSquare, RCurly
            ]
        );
        assert_eq!(toks[3].1, "'x'");
        assert_eq!(toks[8].1, "-1");
        assert_eq!(toks[10].1, "2.5e3");
    }

    #[test]
    fn input_split_anywhere_gives_the_same_tokens() {
        let input = br#"{"a\"b": [12345, -0.5, null]}"#;
        let whole = lex(input);
        for cut in 0..input.len() {
            let mut out = Vec::new();
            let mut l = Lexer::new();
            let mut f = |_: &mut Lexer, t: Token| {
                out.push((t.kind, String::from_utf8_lossy(&t.text).into_owned()))
            };
            l.feed(&input[..cut], &mut f);
            l.feed(&input[cut..], &mut f);
            assert_eq!(out, whole, "cut at {cut}");
        }
    }

    #[test]
    fn leading_zero_and_lone_minus_are_stray() {
        let toks = lex(b"01} -}");
        assert_eq!(toks[0], (TokenKind::Error, "01".into()));
        assert_eq!(toks[1], (TokenKind::RCurly, "}".into()));
        assert_eq!(toks[2], (TokenKind::Error, "-}".into()));
    }

    #[test]
    fn recovery_skips_to_a_structural_character() {
        let toks = lex(b"@abc\"def\" {");
        assert_eq!(
            toks,
            vec![
                (TokenKind::Error, "@".into()),
                (TokenKind::LCurly, "{".into())
            ]
        );
    }

    #[test]
    fn control_character_in_string_is_an_error() {
        let toks = lex(b"\"x\n\"}");
        assert_eq!(toks[0], (TokenKind::Error, "\"x\n".into()));
    }
}
