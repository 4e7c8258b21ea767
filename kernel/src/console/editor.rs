//! The interactive console's line editor: backspace, Ctrl-U, Ctrl-C, a
//! history on the up and down keys, and every other escape sequence (arrow
//! and function keys) ignored rather than taken for line text. Pure: the
//! echo goes to a `fmt::Write`.

use alloc::vec::Vec;
use core::fmt::Write;

use super::parse::MAX_LINE;

/// Lines remembered for the up and down keys.
pub const HISTORY: usize = 32;

/// Ctrl-C: drops the line being typed (and stops a running command, see
/// `drivers::uart::take_received`).
pub const CTRL_C: u8 = 0x03;

/// Where the editor is in an escape sequence (`ESC [ params final` or
/// `ESC O final`; none of it is line text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Esc {
    None,
    /// After ESC.
    Start,
    /// After `ESC [`: parameter and intermediate bytes until a final byte.
    Csi,
    /// After `ESC O`: one final byte.
    Ss3,
}

/// What a key did.
#[derive(Debug, PartialEq, Eq)]
pub enum Key {
    Editing,
    /// Enter: the line is complete.
    Line,
    /// Ctrl-C: the line is dropped.
    Cancel,
}

/// The line being typed, and the history.
pub struct Editor {
    buf: Vec<u8>,
    /// More than [`MAX_LINE`] bytes were typed (the buffer keeps one more
    /// than that, so lexing refuses the line as too long).
    overflow: bool,
    esc: Esc,
    history: Vec<Vec<u8>>,
    /// The history line shown (`history.len()`: the new line).
    shown: usize,
}

fn printable(c: u8) -> bool {
    (0x20..0x7f).contains(&c)
}

impl Default for Editor {
    fn default() -> Self {
        Self::new()
    }
}

impl Editor {
    pub fn new() -> Self {
        Self { buf: Vec::new(), overflow: false, esc: Esc::None, history: Vec::new(), shown: 0 }
    }

    /// The line typed so far.
    pub fn line(&self) -> &[u8] {
        &self.buf
    }

    /// Starts a new, empty line.
    pub fn start_line(&mut self) {
        self.buf.clear();
        self.overflow = false;
        self.esc = Esc::None;
        self.shown = self.history.len();
    }

    /// Takes one received byte, echoing to `out`.
    pub fn key(&mut self, c: u8, out: &mut dyn Write) -> Key {
        match self.esc {
            Esc::Start => {
                self.esc = match c {
                    b'[' => Esc::Csi,
                    b'O' => Esc::Ss3,
                    _ => Esc::None,
                };
                return Key::Editing;
            }
            // Parameter and intermediate bytes.
            Esc::Csi if (0x20..0x40).contains(&c) => return Key::Editing,
            Esc::Csi | Esc::Ss3 => {
                self.esc = Esc::None;
                match c {
                    b'A' if self.shown > 0 => self.recall(self.shown - 1, out),
                    b'B' if self.shown < self.history.len() => self.recall(self.shown + 1, out),
                    _ => {}
                }
                return Key::Editing;
            }
            Esc::None => {}
        }
        match c {
            b'\r' | b'\n' => {
                let _ = out.write_str("\n");
                return Key::Line;
            }
            0x1b => self.esc = Esc::Start,
            0x7f | 0x08 => {
                if let Some(c) = self.buf.pop()
                    && printable(c)
                {
                    let _ = out.write_str("\x08 \x08");
                }
                self.overflow = self.buf.len() > MAX_LINE;
            }
            0x15 => {
                // Ctrl-U: kill the line.
                self.erase(out);
                self.buf.clear();
                self.overflow = false;
            }
            CTRL_C => {
                let _ = out.write_str("^C\n");
                return Key::Cancel;
            }
            _ if self.buf.len() <= MAX_LINE => {
                self.buf.push(c);
                if printable(c) {
                    let _ = out.write_char(c as char);
                }
            }
            _ => self.overflow = true,
        }
        Key::Editing
    }

    /// Erases the echo of the line.
    fn erase(&self, out: &mut dyn Write) {
        for _ in self.buf.iter().filter(|&&c| printable(c)) {
            let _ = out.write_str("\x08 \x08");
        }
    }

    /// Replaces the line with history line `i` (or the empty new line).
    fn recall(&mut self, i: usize, out: &mut dyn Write) {
        self.erase(out);
        self.shown = i;
        self.buf.clear();
        self.overflow = false;
        if let Some(h) = self.history.get(i) {
            self.buf.extend_from_slice(h);
        }
        for &c in self.buf.iter().filter(|&&c| printable(c)) {
            let _ = out.write_char(c as char);
        }
    }

    /// Remembers the completed line (not a blank one, one too long, or a
    /// repeat of the last).
    pub fn remember(&mut self) {
        if self.overflow || self.buf.iter().all(|c| c.is_ascii_whitespace()) || self.history.last() == Some(&self.buf) {
            return;
        }
        if self.history.len() == HISTORY {
            self.history.remove(0);
        }
        self.history.push(self.buf.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::string::String;

    /// Types `keys`; returns what the last key did and the echo.
    fn typed(ed: &mut Editor, keys: &[u8]) -> (Key, String) {
        let mut out = String::new();
        let mut last = Key::Editing;
        for &k in keys {
            last = ed.key(k, &mut out);
        }
        (last, out)
    }

    /// Types a whole line and remembers it, as the console does.
    fn enter(ed: &mut Editor, keys: &[u8]) -> std::vec::Vec<u8> {
        ed.start_line();
        assert_eq!(typed(ed, keys).0, Key::Line, "{keys:?}");
        ed.remember();
        ed.line().to_vec()
    }

    #[test]
    fn plain_line_backspace_and_kill() {
        let mut ed = Editor::new();
        assert_eq!(enter(&mut ed, b"meminfo\r"), b"meminfo");
        ed.start_line();
        let (k, echo) = typed(&mut ed, b"abc\x7f\x7fx");
        assert_eq!((k, ed.line()), (Key::Editing, &b"ax"[..]));
        assert_eq!(echo, "abc\x08 \x08\x08 \x08x");
        typed(&mut ed, b"\x15");
        assert_eq!(ed.line(), b"");
        assert_eq!(typed(&mut ed, b"zz\x03"), (Key::Cancel, String::from("zz^C\n")));
    }

    #[test]
    fn escape_sequences_are_not_text() {
        let mut ed = Editor::new();
        // Left, right, Ctrl-left (parameters), F1 (SS3), Delete (`ESC [ 3 ~`),
        // a lone ESC followed by a letter (Alt-x).
        let line = enter(&mut ed, b"\x1b[D\x1b[C\x1b[1;5D\x1bOP\x1b[3~\x1bxmeminfo\n");
        assert_eq!(line, b"meminfo");
        // Nothing in history yet to recall: up and down are ignored too.
        let mut ed = Editor::new();
        assert_eq!(enter(&mut ed, b"\x1b[A\x1b[Bhelp\n"), b"help");
    }

    #[test]
    fn history_up_and_down() {
        let mut ed = Editor::new();
        enter(&mut ed, b"spawn A\n");
        enter(&mut ed, b"A mmap r 64K\n");
        enter(&mut ed, b"   \n"); // blank: not remembered
        enter(&mut ed, b"A mmap r 64K\n"); // a repeat: not remembered twice
        assert_eq!(enter(&mut ed, b"\x1b[A\n"), b"A mmap r 64K");
        assert_eq!(enter(&mut ed, b"\x1b[A\x1bOA\n"), b"spawn A", "SS3 up (application cursor keys)");
        assert_eq!(enter(&mut ed, b"\x1b[A\x1b[A\x1b[A\x1b[A\n"), b"spawn A", "stops at the oldest");
        // A recalled line is remembered again: spawn A, A mmap r 64K, spawn A.
        assert_eq!(ed.history.len(), 3);
        assert_eq!(enter(&mut ed, b"\x1b[A\x1b[A\x1b[A\x1b[B\n"), b"A mmap r 64K");
        assert_eq!(enter(&mut ed, b"xyz\x1b[A\x1b[B\n"), b"", "down past the newest is the empty new line");
        // The recalled line replaces the echo of what was typed.
        ed.start_line();
        let (_, echo) = typed(&mut ed, b"ab\x1b[A");
        assert_eq!(echo, "ab\x08 \x08\x08 \x08A mmap r 64K");
    }

    #[test]
    fn history_is_bounded() {
        let mut ed = Editor::new();
        for i in 0..HISTORY + 10 {
            enter(&mut ed, std::format!("line {i}\n").as_bytes());
        }
        assert_eq!(ed.history.len(), HISTORY);
        let mut keys = std::vec::Vec::new();
        for _ in 0..HISTORY + 5 {
            keys.extend_from_slice(b"\x1b[A");
        }
        keys.push(b'\n');
        assert_eq!(enter(&mut ed, &keys), b"line 10");
    }

    #[test]
    fn overlong_lines_keep_one_byte_more_and_are_not_remembered() {
        let mut ed = Editor::new();
        let mut keys = std::vec![b'a'; MAX_LINE + 50];
        keys.push(b'\n');
        ed.start_line();
        assert_eq!(typed(&mut ed, &keys).0, Key::Line);
        assert_eq!(ed.line().len(), MAX_LINE + 1);
        ed.remember();
        assert!(ed.history.is_empty());
        // Binary bytes stay in the line (lexing refuses them), unechoed.
        ed.start_line();
        let (_, echo) = typed(&mut ed, b"a\x01b");
        assert_eq!((ed.line(), echo.as_str()), (&b"a\x01b"[..], "ab"));
    }
}
