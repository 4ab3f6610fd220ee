//! The line editor of the human monitor, byte for byte as QEMU's
//! (util/readline.c): each input byte edits the line, then the terminal is
//! brought up to date the way QEMU does it (cursor back over the old
//! line, the new line, `ESC[K`, cursor to its place), so a terminal — or a
//! script comparing the bytes — sees what it sees with QEMU. Editing keys:
//! printable bytes, Backspace/DEL, Ctrl-a/Home, Ctrl-e/End, Ctrl-d/Delete,
//! Ctrl-k, Left/Right, Up/Down (history of 64 lines), Enter. Written by
//! hand: no crate edits a line over a raw byte stream and reproduces
//! QEMU's redraw sequence.

/// The longest line (QEMU's READLINE_CMD_BUF_SIZE - 1).
const MAX_LINE: usize = 4095;
/// Lines kept in the history (QEMU's READLINE_MAX_CMDS).
const MAX_HISTORY: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// Where an escape sequence is.
enum Keys {
    Normal,
    Esc,
    Csi,
    Ss3,
}

/// One line being edited, and the history.
#[derive(Debug)]
pub struct LineEditor {
    buf: Vec<u8>,
    cursor: usize,
    shown: Vec<u8>,
    shown_cursor: usize,
    esc: Keys,
    esc_param: u32,
    history: Vec<Vec<u8>>,
    hist_entry: Option<usize>,
}

impl Default for LineEditor {
    fn default() -> Self {
        Self::new()
    }
}

impl LineEditor {
    /// An empty line.
    pub fn new() -> Self {
        LineEditor {
            buf: Vec::new(),
            cursor: 0,
            shown: Vec::new(),
            shown_cursor: 0,
            esc: Keys::Normal,
            esc_param: 0,
            history: Vec::new(),
            hist_entry: None,
        }
    }

    /// After the prompt was printed: the terminal shows an empty line
    /// (the next keystroke redraws what is being edited).
    pub fn prompt_shown(&mut self) {
        self.shown.clear();
        self.shown_cursor = 0;
        self.esc = Keys::Normal;
    }

    /// Handles one input byte, appending what the terminal must show to
    /// `out`; returns a line when Enter completes one.
    pub fn feed(&mut self, byte: u8, out: &mut Vec<u8>) -> Option<String> {
        match self.esc {
            Keys::Normal => match byte {
                1 => self.cursor = 0,
                4 => self.delete(),
                5 => self.cursor = self.buf.len(),
                8 | 127 => self.backspace(),
                11 => self.buf.truncate(self.cursor),
                10 | 13 => return Some(self.enter(out)),
                27 => self.esc = Keys::Esc,
                b if b >= 32 => self.insert(b),
                _ => {}
            },
            Keys::Esc => {
                self.esc = match byte {
                    b'[' => {
                        self.esc_param = 0;
                        Keys::Csi
                    }
                    b'O' => Keys::Ss3,
                    _ => Keys::Normal,
                }
            }
            Keys::Csi => {
                self.esc = Keys::Normal;
                match byte {
                    b'A' | b'F' => self.up(),
                    b'B' | b'E' => self.down(),
                    b'C' => self.cursor = (self.cursor + 1).min(self.buf.len()),
                    b'D' => self.cursor = self.cursor.saturating_sub(1),
                    b'0'..=b'9' => {
                        self.esc_param = self
                            .esc_param
                            .saturating_mul(10)
                            .saturating_add(u32::from(byte - b'0'));
                        self.esc = Keys::Csi;
                    }
                    b'~' => match self.esc_param {
                        1 => self.cursor = 0,
                        3 => self.delete(),
                        4 => self.cursor = self.buf.len(),
                        _ => {}
                    },
                    _ => {}
                }
            }
            Keys::Ss3 => {
                self.esc = Keys::Normal;
                match byte {
                    b'F' => self.cursor = self.buf.len(),
                    b'H' => self.cursor = 0,
                    _ => {}
                }
            }
        }
        self.update(out);
        None
    }

    fn insert(&mut self, b: u8) {
        if self.buf.len() < MAX_LINE {
            self.buf.insert(self.cursor, b);
            self.cursor += 1;
        }
    }

    fn delete(&mut self) {
        if self.cursor < self.buf.len() {
            self.buf.remove(self.cursor);
        }
    }

    fn backspace(&mut self) {
        if self.cursor > 0 {
            self.cursor -= 1;
            self.buf.remove(self.cursor);
        }
    }

    fn up(&mut self) {
        let at = self.hist_entry.unwrap_or(self.history.len());
        if at == 0 {
            return;
        }
        self.hist_entry = Some(at - 1);
        self.buf = self.history[at - 1].clone();
        self.cursor = self.buf.len();
    }

    fn down(&mut self) {
        let Some(at) = self.hist_entry else {
            return;
        };
        if at + 1 < self.history.len() {
            self.hist_entry = Some(at + 1);
            self.buf = self.history[at + 1].clone();
        } else {
            self.hist_entry = Some(self.history.len());
            self.buf.clear();
        }
        self.cursor = self.buf.len();
    }

    fn enter(&mut self, out: &mut Vec<u8>) -> String {
        let line = std::mem::take(&mut self.buf);
        if !line.is_empty() {
            // As QEMU: a line already in the history moves to its end.
            self.history.retain(|h| *h != line);
            if self.history.len() == MAX_HISTORY {
                self.history.remove(0);
            }
            self.history.push(line.clone());
        }
        self.hist_entry = None;
        self.cursor = 0;
        self.shown.clear();
        self.shown_cursor = 0;
        out.extend_from_slice(b"\r\n");
        String::from_utf8_lossy(&line).into_owned()
    }

    /// QEMU's readline_update: redraw the line if it changed, then move
    /// the cursor.
    fn update(&mut self, out: &mut Vec<u8>) {
        if self.buf != self.shown {
            for _ in 0..self.shown_cursor {
                out.extend_from_slice(b"\x1b[D");
            }
            out.extend_from_slice(&self.buf);
            out.extend_from_slice(b"\x1b[K");
            self.shown = self.buf.clone();
            self.shown_cursor = self.buf.len();
        }
        let (from, to) = (self.shown_cursor, self.cursor);
        let step: &[u8] = if to > from { b"\x1b[C" } else { b"\x1b[D" };
        for _ in 0..from.abs_diff(to) {
            out.extend_from_slice(step);
        }
        self.shown_cursor = to;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn type_in(e: &mut LineEditor, bytes: &[u8]) -> (Vec<u8>, Vec<String>) {
        let (mut out, mut lines) = (Vec::new(), Vec::new());
        for b in bytes {
            lines.extend(e.feed(*b, &mut out));
        }
        (out, lines)
    }

    #[test]
    fn typing_redraws_the_line_as_qemu_does() {
        let mut e = LineEditor::new();
        let (out, lines) = type_in(&mut e, b"stop\r");
        // Bytes QEMU 10 sends for the same keys (after `(qemu) `).
        assert_eq!(
            out,
            b"s\x1b[K\x1b[Dst\x1b[K\x1b[D\x1b[Dsto\x1b[K\x1b[D\x1b[D\x1b[Dstop\x1b[K\r\n"
        );
        assert_eq!(lines, ["stop"]);
    }

    #[test]
    fn backspace_and_history_edit_like_qemu() {
        let mut e = LineEditor::new();
        let (out, lines) = type_in(&mut e, b"cabc\x7f\x7fz\r");
        assert_eq!(lines, ["caz"]);
        assert!(out.ends_with(
            b"\x1b[D\x1b[D\x1b[Dcab\x1b[K\x1b[D\x1b[D\x1b[Dca\x1b[K\x1b[D\x1b[Dcaz\x1b[K\r\n"
        ));
        e.prompt_shown();
        let (out, lines) = type_in(&mut e, b"\x1b[A\r");
        assert_eq!(out, b"caz\x1b[K\r\n");
        assert_eq!(lines, ["caz"]);
    }

    #[test]
    fn cursor_keys_move_and_insert_in_the_middle() {
        let mut e = LineEditor::new();
        let (_, lines) = type_in(
            &mut e,
            b"info tatus\x01\x1b[C\x1b[C\x1b[C\x1b[C\x1b[Cs\x05\r",
        );
        assert_eq!(lines, ["info status"]);
        let (_, lines) = type_in(&mut e, b"abc\x1b[D\x1b[3~\x0b\x1b[1~x\r");
        assert_eq!(lines, ["xab"]);
    }
}
