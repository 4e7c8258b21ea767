//! The console's receive buffer: what the UART received and the console has
//! not read yet (oldest first). Pure, so it builds and is tested on the host.

/// Bytes the buffer holds.
pub const RX_RING: usize = 512;

pub struct RxRing {
    ring: [u8; RX_RING],
    head: usize,
    len: usize,
}

impl Default for RxRing {
    fn default() -> Self {
        Self::new()
    }
}

impl RxRing {
    pub const fn new() -> Self {
        Self { ring: [0; RX_RING], head: 0, len: 0 }
    }

    fn at(&self, i: usize) -> u8 {
        self.ring[(self.head + i) % RX_RING]
    }

    /// The oldest byte.
    pub fn pop(&mut self) -> Option<u8> {
        (self.len > 0).then(|| {
            let b = self.ring[self.head];
            self.head = (self.head + 1) % RX_RING;
            self.len -= 1;
            b
        })
    }

    /// Appends `b`; false when the buffer is full (the byte is dropped).
    pub fn push(&mut self, b: u8) -> bool {
        if self.len == RX_RING {
            return false;
        }
        self.ring[(self.head + self.len) % RX_RING] = b;
        self.len += 1;
        true
    }

    fn remove(&mut self, i: usize) {
        for j in i..self.len - 1 {
            self.ring[(self.head + j) % RX_RING] = self.at(j + 1);
        }
        self.len -= 1;
    }

    /// Removes the oldest `wanted` byte typed before the next line end
    /// (Enter), keeping every other byte in order; whether there was one.
    /// One typed after a line end belongs to that later line, not to the
    /// command running now.
    pub fn take_before_line_end(&mut self, wanted: u8) -> bool {
        let Some(i) =
            (0..self.len).map(|i| self.at(i)).take_while(|&b| b != b'\r' && b != b'\n').position(|b| b == wanted)
        else {
            return false;
        };
        self.remove(i);
        true
    }

    /// Removes every `wanted` byte (a Ctrl-C typed while a command ran is
    /// for that command: once it has ended, it must not stop the next one).
    pub fn discard(&mut self, wanted: u8) {
        let mut i = 0;
        while i < self.len {
            if self.at(i) == wanted { self.remove(i) } else { i += 1 }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec::Vec;

    fn ring(bytes: &[u8]) -> RxRing {
        let mut r = RxRing::new();
        for &b in bytes {
            assert!(r.push(b));
        }
        r
    }

    fn rest(mut r: RxRing) -> Vec<u8> {
        core::iter::from_fn(|| r.pop()).collect()
    }

    #[test]
    fn ctrl_c_before_the_next_line_end_only() {
        let mut r = ring(b"\x03next\n");
        assert!(r.take_before_line_end(3));
        assert_eq!(rest(r), b"next\n");
        let mut r = ring(b"ab\x03cd\n");
        assert!(r.take_before_line_end(3));
        assert_eq!(rest(r), b"abcd\n");
        // Typed after a later line: not for the command running now.
        let mut r = ring(b"next\n\x03");
        assert!(!r.take_before_line_end(3));
        assert_eq!(rest(r), b"next\n\x03");
        let mut r = ring(b"x\r\x03");
        assert!(!r.take_before_line_end(3));
        assert!(!ring(b"").take_before_line_end(3));
    }

    #[test]
    fn discard_drops_every_ctrl_c_and_keeps_the_rest() {
        let mut r = ring(b"\x03a\x03\x03b\n\x03");
        r.discard(3);
        assert_eq!(rest(r), b"ab\n");
    }

    #[test]
    fn wraps_around_and_drops_when_full() {
        let mut r = RxRing::new();
        for i in 0..RX_RING {
            assert!(r.push(i as u8 | 0x80));
        }
        assert!(!r.push(0));
        for _ in 0..RX_RING - 2 {
            r.pop();
        }
        assert!(r.push(3) && r.push(b'z'));
        assert!(r.take_before_line_end(3));
        assert_eq!(rest(r), [0xfe, 0xff, b'z']);
    }
}
