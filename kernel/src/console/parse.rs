//! Lexing console lines and ranges (the scenario language's lexical rules). Pure.

use alloc::vec::Vec;
use core::fmt;

use crate::mm::addr::VirtAddr;
use crate::util::parse_number;

/// Longest accepted line, in bytes.
pub const MAX_LINE: usize = 1024;

/// Longest `TEXT` of a `!"TEXT"` prefix, in bytes.
const MAX_EXPECTED_TEXT: usize = 200;

/// What the line's author expects of its command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect<'a> {
    /// No `!`: the command must be carried out.
    Success,
    /// `!` (refused with any error) or `!"TEXT"` (refused with an error
    /// whose message contains TEXT).
    Refusal(Option<&'a str>),
}

impl Expect<'_> {
    /// Whether `err`, a refusal's message, is what this line expects.
    pub fn accepts(&self, err: &str) -> bool {
        match self {
            Expect::Success => false,
            Expect::Refusal(None) => true,
            Expect::Refusal(Some(t)) => err.contains(t),
        }
    }
}

impl fmt::Display for Expect<'_> {
    /// The prefix as written (`!`, `!"TEXT"`), for echoes and verdicts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Success => Ok(()),
            Expect::Refusal(None) => write!(f, "! "),
            Expect::Refusal(Some(t)) => write!(f, "!\"{t}\" "),
        }
    }
}

/// Why a line could not be lexed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LexError {
    /// Longer than [`MAX_LINE`] bytes (this many, or more when the
    /// interactive editor stopped keeping them).
    TooLong(usize),
    /// A byte that is neither printable ASCII nor a tab.
    NotPrintable(u8),
    /// A `!` with no command after it.
    EmptyRefusal,
    /// `!"TEXT` with no closing quote, or a TEXT that is empty, too long
    /// or not printable.
    BadExpectedText,
}

impl fmt::Display for LexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LexError::TooLong(_) => write!(f, "line too long (more than {MAX_LINE} bytes)"),
            LexError::NotPrintable(b) => write!(f, "line contains a non-printable byte {b:#04x}"),
            LexError::EmptyRefusal => write!(f, "`!` must be followed by a command"),
            LexError::BadExpectedText => {
                write!(f, "`!\"TEXT\"` needs a closing quote and 1 to {MAX_EXPECTED_TEXT} printable characters of TEXT")
            }
        }
    }
}

/// A non-empty line: what its author expects, and its command or why it
/// cannot be read (a line too long or binary is refused like a command, so
/// `!` covers it).
#[derive(Debug, PartialEq, Eq)]
pub struct Line<'a> {
    pub expect: Expect<'a>,
    pub body: Result<Command<'a>, LexError>,
}

/// A lexed command.
#[derive(Debug, PartialEq, Eq)]
pub struct Command<'a> {
    pub words: Vec<&'a str>,
    /// The command text (without comment or `!` prefix), for PASS/FAIL lines.
    pub text: &'a str,
}

fn printable(b: u8) -> bool {
    b == b'\t' || (0x20..0x7f).contains(&b)
}

/// Lexes one raw line. `Ok(None)` for blank and comment-only lines; `Err`
/// for a malformed `!` prefix (a broken expectation fails whatever follows).
pub fn lex(raw: &[u8]) -> Result<Option<Line<'_>>, LexError> {
    // The prefix first, so that `!` applies to a line that is too long or
    // binary as well.
    let start = raw.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(raw.len());
    let (expect, rest) = match raw[start..].split_first() {
        Some((b'!', after)) => match after.split_first() {
            Some((b'"', quoted)) => {
                let end = quoted.iter().position(|&b| b == b'"').ok_or(LexError::BadExpectedText)?;
                let t = &quoted[..end];
                if t.is_empty() || t.len() > MAX_EXPECTED_TEXT || !t.iter().all(|&b| printable(b)) {
                    return Err(LexError::BadExpectedText);
                }
                // Printable ASCII, so this cannot fail.
                let t = core::str::from_utf8(t).map_err(|_| LexError::BadExpectedText)?;
                (Expect::Refusal(Some(t)), &quoted[end + 1..])
            }
            _ => (Expect::Refusal(None), after),
        },
        _ => (Expect::Success, &raw[start..]),
    };
    let body = match command(raw.len(), rest) {
        Ok(Some(c)) => Ok(c),
        Ok(None) if expect == Expect::Success => return Ok(None),
        Ok(None) => return Err(LexError::EmptyRefusal),
        Err(e) => Err(e),
    };
    Ok(Some(Line { expect, body }))
}

/// The command in `rest` (the line after its prefix); `len` is the whole line's.
fn command(len: usize, rest: &[u8]) -> Result<Option<Command<'_>>, LexError> {
    if len > MAX_LINE {
        return Err(LexError::TooLong(len));
    }
    if let Some(&b) = rest.iter().find(|&&b| !printable(b)) {
        return Err(LexError::NotPrintable(b));
    }
    // Only printable ASCII is left, so this cannot fail.
    let s = core::str::from_utf8(rest).map_err(|_| LexError::NotPrintable(0))?;
    let s = match s.find('#') {
        Some(i) => &s[..i],
        None => s,
    }
    .trim();
    if s.is_empty() {
        return Ok(None);
    }
    Ok(Some(Command { words: s.split_ascii_whitespace().collect(), text: s }))
}

/// `[A-Za-z_][A-Za-z0-9_]*`
pub fn is_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// `s` cut to at most `n` bytes, for quoting user input in errors.
pub fn truncate(s: &str, n: usize) -> &str {
    &s[..s.len().min(n)]
}

/// A range as written: `REGION`, `REGION+OFF` or `REGION+OFF:LEN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeSpec<'a> {
    pub region: &'a str,
    /// None: the whole region.
    pub off: Option<u64>,
    /// None: the one page that contains the offset.
    pub len: Option<u64>,
}

/// Why a range is not valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeError {
    BadRegionName,
    BadOffset,
    BadLength,
    EmptyLength,
    /// The range does not fit in its region (`size` bytes).
    OutOfRange {
        off: u64,
        len: u64,
        size: u64,
    },
}

impl fmt::Display for RangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RangeError::BadRegionName => {
                write!(f, "a range starts with a region name (REGION, REGION+OFF, REGION+OFF:LEN)")
            }
            RangeError::BadOffset => write!(f, "the offset of a range is not a number"),
            RangeError::BadLength => write!(f, "the length of a range is not a number"),
            RangeError::EmptyLength => write!(f, "a range's length must not be 0"),
            RangeError::OutOfRange { off, len, size } => {
                write!(f, "range {off:#x}+{len:#x} out of range (the region has {size:#x} bytes)")
            }
        }
    }
}

impl<'a> RangeSpec<'a> {
    pub fn parse(s: &'a str) -> Result<Self, RangeError> {
        let (region, rest) = match s.split_once('+') {
            Some((r, rest)) => (r, Some(rest)),
            None => (s, None),
        };
        if !is_name(region) {
            return Err(RangeError::BadRegionName);
        }
        let Some(rest) = rest else { return Ok(Self { region, off: None, len: None }) };
        let (o, l) = match rest.split_once(':') {
            Some((o, l)) => (o, Some(l)),
            None => (rest, None),
        };
        let off = parse_number(o).ok_or(RangeError::BadOffset)?;
        let len = match l {
            Some(l) => Some(parse_number(l).ok_or(RangeError::BadLength)?),
            None => None,
        };
        Ok(Self { region, off: Some(off), len })
    }

    /// The range in a region of `size` bytes at `va`, with pages of `page`
    /// bytes.
    pub fn resolve(&self, va: VirtAddr, size: u64, page: u64) -> Result<Range, RangeError> {
        let (off, len) = match (self.off, self.len) {
            (None, _) => (0, size),
            (Some(o), None) => (o & !(page - 1), page),
            (Some(o), Some(l)) => (o, l),
        };
        if len == 0 {
            return Err(RangeError::EmptyLength);
        }
        if off.checked_add(len).is_none_or(|e| e > size) {
            return Err(RangeError::OutOfRange { off, len, size });
        }
        Ok(Range { va: va + off, len, page })
    }
}

/// A resolved range: the bytes `[va, va+len)`, in pages of `page` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub va: VirtAddr,
    pub len: u64,
    pub page: u64,
}

impl Range {
    /// Every page the bytes touch: a range that starts or ends inside a page
    /// covers that page (page-aligned start, length).
    pub fn pages(&self) -> (VirtAddr, u64) {
        let start = self.va.align_down(self.page);
        let end = (self.va + self.len).as_u64().next_multiple_of(self.page);
        (start, end - start.as_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;

    fn cmd<'a>(l: &'a Line<'a>) -> &'a Command<'a> {
        l.body.as_ref().unwrap()
    }

    #[test]
    fn blank_comment_and_commands() {
        assert_eq!(lex(b"").unwrap(), None);
        assert_eq!(lex(b"   # just a comment").unwrap(), None);
        let l = lex(b"  meminfo   # show memory").unwrap().unwrap();
        assert_eq!(cmd(&l).words, ["meminfo"]);
        assert_eq!(l.expect, Expect::Success);
        assert_eq!(cmd(&l).text, "meminfo");
        let l = lex(b"ptdump\tkernel").unwrap().unwrap();
        assert_eq!(cmd(&l).words, ["ptdump", "kernel"]);
    }

    #[test]
    fn expected_errors() {
        let l = lex(b"! nosuch thing").unwrap().unwrap();
        assert_eq!(l.expect, Expect::Refusal(None));
        assert_eq!(cmd(&l).words, ["nosuch", "thing"]);
        assert_eq!(lex(b"!"), Err(LexError::EmptyRefusal));
        assert_eq!(lex(b"!   # nothing"), Err(LexError::EmptyRefusal));
        let l = lex(b"!!! meminfo").unwrap().unwrap();
        assert_eq!(cmd(&l).words, ["!!", "meminfo"]);
    }

    #[test]
    fn expected_errors_with_text() {
        let l = lex(b"  !\"no such region\" A check r 0x00").unwrap().unwrap();
        assert_eq!(l.expect, Expect::Refusal(Some("no such region")));
        assert_eq!(cmd(&l).words, ["A", "check", "r", "0x00"]);
        assert!(l.expect.accepts("no such region `r` in `A`"));
        assert!(!l.expect.accepts("no such process `A`"));
        assert!(Expect::Refusal(None).accepts("anything"));
        assert!(!Expect::Success.accepts("anything"));
        // A `#` inside TEXT is TEXT, not a comment.
        let l = lex(b"!\"#1\" unpin 1 # comment").unwrap().unwrap();
        assert_eq!(l.expect, Expect::Refusal(Some("#1")));
        assert_eq!(cmd(&l).text, "unpin 1");
        for bad in [&b"!\"unterminated meminfo"[..], b"!\"\" meminfo", b"!\"a\x01b\" meminfo"] {
            assert_eq!(lex(bad), Err(LexError::BadExpectedText), "{bad:?}");
        }
        assert_eq!(lex(b"!\"text\""), Err(LexError::EmptyRefusal));
    }

    #[test]
    fn hostile_input_is_a_refusal_that_bang_covers() {
        let long = [b'a'; MAX_LINE + 1];
        assert_eq!(lex(&long).unwrap().unwrap().body, Err(LexError::TooLong(MAX_LINE + 1)));
        assert!(lex(&[b'a'; MAX_LINE]).unwrap().unwrap().body.is_ok());
        let l = lex(b"meminfo\x00").unwrap().unwrap();
        assert_eq!(l.body, Err(LexError::NotPrintable(0)));
        assert!(std::format!("{}", LexError::NotPrintable(0)).contains("0x00"));
        assert!(lex(&[0xff, 0xfe]).unwrap().unwrap().body.is_err());
        assert!(lex(b"\x1b[A").unwrap().unwrap().body.is_err());
        // Under `!`, the same lines are expected refusals.
        let mut bang_long = std::vec![b'!', b' '];
        bang_long.extend_from_slice(&long);
        let l = lex(&bang_long).unwrap().unwrap();
        assert_eq!((l.expect, l.body), (Expect::Refusal(None), Err(LexError::TooLong(MAX_LINE + 3))));
        let l = lex(b"!\"non-printable\" meminfo\x07").unwrap().unwrap();
        assert_eq!(l.expect, Expect::Refusal(Some("non-printable")));
        assert!(l.expect.accepts(&std::format!("{}", l.body.unwrap_err())));
        let l = lex(b"!\"too long\" ").unwrap_err();
        assert_eq!(l, LexError::EmptyRefusal);
    }

    #[test]
    fn names() {
        assert!(is_name("P1") && is_name("_x") && is_name("child_2"));
        assert!(!is_name("") && !is_name("1P") && !is_name("a-b") && !is_name("é"));
    }

    #[test]
    fn ranges_parse() {
        assert_eq!(RangeSpec::parse("r"), Ok(RangeSpec { region: "r", off: None, len: None }));
        assert_eq!(RangeSpec::parse("r+0x800"), Ok(RangeSpec { region: "r", off: Some(0x800), len: None }));
        assert_eq!(RangeSpec::parse("r+4K:1M"), Ok(RangeSpec { region: "r", off: Some(4096), len: Some(1 << 20) }));
        assert_eq!(RangeSpec::parse("1r"), Err(RangeError::BadRegionName));
        assert_eq!(RangeSpec::parse("+0x10"), Err(RangeError::BadRegionName));
        assert_eq!(RangeSpec::parse("r+"), Err(RangeError::BadOffset));
        assert_eq!(RangeSpec::parse("r+1:"), Err(RangeError::BadLength));
        assert_eq!(RangeSpec::parse("r+1:x"), Err(RangeError::BadLength));
    }

    #[test]
    fn ranges_cover_every_page_they_touch() {
        let page = 0x1000;
        let va = VirtAddr::new(0x40_0000);
        let r = RangeSpec::parse("r+0x800:0x1000").unwrap().resolve(va, 0x10000, page).unwrap();
        assert_eq!((r.va, r.len), (va + 0x800, 0x1000), "the bytes are exactly the range");
        assert_eq!(r.pages(), (va, 0x2000), "both pages it touches");
        let r = RangeSpec::parse("r+0x800").unwrap().resolve(va, 0x10000, page).unwrap();
        assert_eq!(r, Range { va, len: 0x1000, page }, "the one page that contains 0x800");
        assert_eq!(r.pages(), (va, 0x1000));
        let r = RangeSpec::parse("r+0xffff").unwrap().resolve(va, 0x10000, page).unwrap();
        assert_eq!(r, Range { va: va + 0xf000, len: 0x1000, page }, "the last page");
        let r = RangeSpec::parse("r+0x1fff:1").unwrap().resolve(va, 0x10000, page).unwrap();
        assert_eq!(r.pages(), (va + 0x1000, 0x1000));
        let r = RangeSpec::parse("r+0x1000:0x1000").unwrap().resolve(va, 0x10000, page).unwrap();
        assert_eq!(r.pages(), (va + 0x1000, 0x1000), "aligned ranges stay as they are");
        let r = RangeSpec::parse("r").unwrap().resolve(va, 0x10000, page).unwrap();
        assert_eq!(r.pages(), (va, 0x10000));
        let r = RangeSpec::parse("r+0x800:0x1000").unwrap().resolve(va, 0x10000, 0x10000).unwrap();
        assert_eq!(r.pages(), (va, 0x10000), "64K pages");
    }

    #[test]
    fn ranges_outside_their_region_are_refused() {
        let spec = |s| RangeSpec::parse(s).unwrap();
        let e = spec("r+0xf000:0x2000").resolve(VirtAddr::new(0), 0x10000, 0x1000).unwrap_err();
        assert!(std::format!("{e}").contains("out of range"));
        assert!(spec("r+0x10000").resolve(VirtAddr::new(0), 0x10000, 0x1000).is_err());
        assert!(spec("r+0xffffffffffffffff:2").resolve(VirtAddr::new(0), 0x10000, 0x1000).is_err());
        assert_eq!(spec("r+0:0").resolve(VirtAddr::new(0), 0x10000, 0x1000), Err(RangeError::EmptyLength));
        assert!(spec("r+0xffff:1").resolve(VirtAddr::new(0), 0x10000, 0x1000).is_ok());
    }
}
