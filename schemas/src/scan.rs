//! Byte scans of the JSON fast paths, eight bytes at a time in plain integer arithmetic. Most strings of an event
//! are shorter than a vector register, and a byte loop costs about seven instructions a byte.

const ONES: u64 = u64::from_le_bytes([1; 8]);
const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);

/// A high bit set for the first byte of `w` below `n` (`n` at most 0x80), and perhaps for bytes above it (a borrow
/// runs upwards), so that only two things are exact: whether there is one, and which is the first (the lowest set
/// bit). The classic test.
const fn below(w: u64, n: u8) -> u64 {
    w.wrapping_sub(ONES * n as u64) & !w & HIGHS
}

/// Marks (as [`below`]) the bytes of `w` equal to `c`.
const fn equal(w: u64, c: u8) -> u64 {
    below(w ^ (ONES * c as u64), 1)
}

fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(b);
    u64::from_le_bytes(w)
}

/// Whether `s` has nothing JSON must escape: no quote, no backslash, no control character (serde_json escapes
/// exactly these). The last few bytes are checked padded with a clean byte.
pub fn clean(s: &[u8]) -> bool {
    let to_escape = |w: u64| below(w, 0x20) | equal(w, b'"') | equal(w, b'\\');
    let mut chunks = s.chunks_exact(8);
    let mut dirty = 0;
    for c in &mut chunks {
        dirty |= to_escape(word(c));
    }
    let rest = chunks.remainder();
    let mut last = [b'a'; 8];
    last[..rest.len()].copy_from_slice(rest);
    dirty | to_escape(u64::from_le_bytes(last)) == 0
}

/// The position of the first `"` or `\` in `b`. A word at a time: an event's strings end within a few words,
/// where a general search spends more on starting than on searching.
pub fn quote_or_backslash(b: &[u8]) -> Option<usize> {
    let mut at = 0;
    while let Some(c) = b.get(at..at + 8) {
        let w = word(c);
        let m = equal(w, b'"') | equal(w, b'\\');
        if m != 0 {
            return Some(at + m.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    b[at..].iter().position(|&c| c == b'"' || c == b'\\').map(|p| at + p)
}

/// The position of the first `"`, `\` or control character (below 0x20) in `b`: where a JSON string's plain run
/// ends. A word at a time, as [`quote_or_backslash`].
pub fn quote_backslash_or_control(b: &[u8]) -> Option<usize> {
    let special = |w: u64| below(w, 0x20) | equal(w, b'"') | equal(w, b'\\');
    let mut at = 0;
    while let Some(c) = b.get(at..at + 8) {
        let m = special(word(c));
        if m != 0 {
            return Some(at + m.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    b[at..].iter().position(|&c| c < 0x20 || c == b'"' || c == b'\\').map(|p| at + p)
}

#[cfg(test)]
mod tests {
    use super::{clean, quote_backslash_or_control, quote_or_backslash};
    use proptest::prelude::*;

    fn bytewise_clean(s: &[u8]) -> bool {
        s.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\')
    }

    fn bytewise_find(s: &[u8]) -> Option<usize> {
        s.iter().position(|&b| b == b'"' || b == b'\\')
    }

    fn bytewise_special(s: &[u8]) -> Option<usize> {
        s.iter().position(|&b| b < 0x20 || b == b'"' || b == b'\\')
    }

    /// Every byte value at every position of strings up to three words long, among fillers from both halves of
    /// the byte range, and a second byte after it (a borrow from the first must not hide or fake the second).
    #[test]
    fn the_same_answers_as_byte_by_byte() {
        for len in 0..=24 {
            for at in 0..len {
                for b in 0..=255u8 {
                    for filler in [b'a', 0xC3, 0x7F, 0xFF, b' ', 0x00, b'"'] {
                        let mut s = vec![filler; len];
                        s[at] = b;
                        assert_eq!(clean(&s), bytewise_clean(&s), "clean: {b:#x} at {at} of {len}, in {filler:#x}");
                        assert_eq!(quote_or_backslash(&s), bytewise_find(&s), "find: {b:#x} at {at} of {len}");
                        assert_eq!(quote_backslash_or_control(&s), bytewise_special(&s), "special: {b:#x} at {at}");
                        if at + 1 < len {
                            s[at + 1] = b'\\';
                            assert_eq!(quote_or_backslash(&s), bytewise_find(&s), "find: {b:#x}, \\ at {at}");
                            assert_eq!(quote_backslash_or_control(&s), bytewise_special(&s), "special: {b:#x}, \\");
                        }
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(1024))]

        #[test]
        fn random_bytes(s in prop::collection::vec(prop_oneof![any::<u8>(), Just(b'"'), Just(b'\\'), Just(1u8)], 0..80)) {
            prop_assert_eq!(clean(&s), bytewise_clean(&s));
            prop_assert_eq!(quote_or_backslash(&s), bytewise_find(&s));
            prop_assert_eq!(quote_backslash_or_control(&s), bytewise_special(&s));
        }
    }
}
