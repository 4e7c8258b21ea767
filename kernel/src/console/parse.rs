//! Lexing console lines (the scenario language's lexical rules). Pure.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// Longest accepted line, in bytes.
pub const MAX_LINE: usize = 1024;

/// A lexed, non-empty line.
#[derive(Debug, PartialEq, Eq)]
pub struct Line<'a> {
    /// The line started with `!`: the command is expected to be refused.
    pub expect_error: bool,
    pub words: Vec<&'a str>,
    /// The command text (without comment or `!`), for PASS/FAIL lines.
    pub text: &'a str,
}

/// Lexes one raw line. `Ok(None)` for blank and comment-only lines.
pub fn lex(raw: &[u8]) -> Result<Option<Line<'_>>, String> {
    if raw.len() > MAX_LINE {
        return Err(format!("line too long ({} bytes, at most {MAX_LINE})", raw.len()));
    }
    if let Some(b) = raw.iter().find(|&&b| !(b == b'\t' || (0x20..0x7f).contains(&b))) {
        return Err(format!("line contains a non-printable byte {b:#04x}"));
    }
    // Only printable ASCII is left, so this cannot fail.
    let s = core::str::from_utf8(raw).map_err(|_| String::from("line is not text"))?;
    let s = match s.find('#') {
        Some(i) => &s[..i],
        None => s,
    }
    .trim();
    if s.is_empty() {
        return Ok(None);
    }
    let (expect_error, text) = match s.strip_prefix('!') {
        Some(rest) => (true, rest.trim()),
        None => (false, s),
    };
    if text.is_empty() {
        return Err(String::from("`!` must be followed by a command"));
    }
    Ok(Some(Line { expect_error, words: text.split_ascii_whitespace().collect(), text }))
}

/// `[A-Za-z_][A-Za-z0-9_]*`
pub fn is_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;

    #[test]
    fn blank_comment_and_commands() {
        assert_eq!(lex(b"").unwrap(), None);
        assert_eq!(lex(b"   # just a comment").unwrap(), None);
        let l = lex(b"  meminfo   # show memory").unwrap().unwrap();
        assert_eq!(l.words, ["meminfo"]);
        assert!(!l.expect_error);
        assert_eq!(l.text, "meminfo");
        let l = lex(b"ptdump\tkernel").unwrap().unwrap();
        assert_eq!(l.words, ["ptdump", "kernel"]);
    }

    #[test]
    fn expected_errors() {
        let l = lex(b"! nosuch thing").unwrap().unwrap();
        assert!(l.expect_error);
        assert_eq!(l.words, ["nosuch", "thing"]);
        assert!(lex(b"!").is_err());
        assert!(lex(b"!   # nothing").is_err());
    }

    #[test]
    fn hostile_input_is_an_error() {
        assert!(lex(&[b'a'; MAX_LINE + 1]).is_err());
        assert!(lex(&[b'a'; MAX_LINE]).is_ok());
        assert!(lex(b"meminfo\x00").unwrap_err().contains("0x00"));
        assert!(lex(&[0xff, 0xfe]).is_err());
        assert!(lex(b"\x1b[A").is_err());
    }

    #[test]
    fn names() {
        assert!(is_name("P1") && is_name("_x") && is_name("child_2"));
        assert!(!is_name("") && !is_name("1P") && !is_name("a-b") && !is_name("é"));
    }
}
