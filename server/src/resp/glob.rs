//! Redis's glob patterns (`SCAN ... MATCH`, later `KEYS`): a port of `stringmatchlen` from
//! Redis's `src/util.c` (7.x), byte for byte, including its corner cases.
//!
//! - `*` any run of bytes, `?` one byte, `\x` the byte `x`;
//! - `[abc]`, `[a-z]` (ends in either order), `[^...]` negated, `\]` inside a class; an
//!   unterminated class (`[ab`) is a class of what follows the `[`;
//! - bytes are compared exactly (no case folding: SCAN never asks for it), and class ranges
//!   compare bytes as C's signed `char` does on x86 and ARM64 Linux builds of Redis, so
//!   `[a-\xff]` is the range `\xff`(-1)..`a` and matches `A` but not `b`;
//! - `*` matches a run of at least one byte when it is the whole remaining pattern and the key
//!   is empty: an empty key matches nothing but the empty pattern, as in Redis (SCAN treats the
//!   pattern `*` alone as "no pattern" before getting here; so does [`Pattern`]);
//! - work is bounded as in Redis: once the rest of a pattern after a `*` failed to match at
//!   every later position, earlier `*`s stop trying longer runs, and recursion stops at 1000
//!   nested `*`s (a deeper pattern does not match).
//!
//! No published crate matches these semantics (the `glob`/`globset`/`wildmatch` crates are
//! path or shell globs: other escapes, classes and `*` rules), hence the port.

/// Nesting depth past which a pattern does not match (Redis's protection against abusive
/// patterns).
const MAX_NESTING: u32 = 1000;

/// A `MATCH` pattern, with Redis's shortcut for `*`.
#[derive(Debug, Clone)]
pub struct Pattern {
    bytes: Vec<u8>,
    /// `*` alone matches every key (even the empty one); Redis skips matching then.
    any: bool,
}

impl Pattern {
    /// A pattern from its bytes.
    pub fn new(bytes: &[u8]) -> Self {
        Self {
            any: bytes == b"*",
            bytes: bytes.to_vec(),
        }
    }

    /// Whether `key` matches.
    pub fn matches(&self, key: &[u8]) -> bool {
        self.any || string_match(&self.bytes, key)
    }
}

/// Redis's `stringmatchlen(pattern, string, nocase = 0)`.
pub fn string_match(pattern: &[u8], string: &[u8]) -> bool {
    let mut skip_longer = false;
    match_impl(pattern, string, &mut skip_longer, 0)
}

/// The byte at `i`, or 0 past the end: Redis's patterns are NUL-terminated strings and its
/// matcher reads the terminator in a few places (`pattern[1]` after a final `*`, the end of an
/// unterminated class).
fn at(bytes: &[u8], i: usize) -> u8 {
    bytes.get(i).copied().unwrap_or(0)
}

/// A byte as C's (signed) `char` compares it.
fn signed(b: u8) -> i32 {
    i32::from(b as i8)
}

fn match_impl(pattern: &[u8], string: &[u8], skip_longer: &mut bool, nesting: u32) -> bool {
    if nesting > MAX_NESTING {
        return false;
    }
    // `p` and `s` are positions; `plen`/`slen` what is left, as in the C (where `plen` may be
    // moved back by one at an unterminated class).
    let (mut p, mut s) = (0usize, 0usize);
    let mut plen = pattern.len() as isize;
    let mut slen = string.len() as isize;
    while plen > 0 && slen > 0 {
        match pattern[p] {
            b'*' => {
                while plen > 0 && at(pattern, p + 1) == b'*' {
                    p += 1;
                    plen -= 1;
                }
                if plen == 1 {
                    return true;
                }
                while slen > 0 {
                    if match_impl(&pattern[p + 1..], &string[s..], skip_longer, nesting + 1) {
                        return true;
                    }
                    if *skip_longer {
                        return false;
                    }
                    s += 1;
                    slen -= 1;
                }
                // The rest of the pattern matches nowhere in the rest of the string: a longer
                // run for an earlier `*` cannot help either.
                *skip_longer = true;
                return false;
            }
            b'?' => {
                s += 1;
                slen -= 1;
            }
            b'[' => {
                p += 1;
                plen -= 1;
                let not = at(pattern, p) == b'^';
                if not {
                    p += 1;
                    plen -= 1;
                }
                let c = string[s];
                let mut matched = false;
                loop {
                    if at(pattern, p) == b'\\' && plen >= 2 {
                        p += 1;
                        plen -= 1;
                        if at(pattern, p) == c {
                            matched = true;
                        }
                    } else if at(pattern, p) == b']' {
                        break;
                    } else if plen == 0 {
                        // Unterminated class: step back onto its last byte, which the
                        // pattern advance below steps over again.
                        p -= 1;
                        plen += 1;
                        break;
                    } else if plen >= 3 && at(pattern, p + 1) == b'-' {
                        let (mut start, mut end) =
                            (signed(at(pattern, p)), signed(at(pattern, p + 2)));
                        if start > end {
                            std::mem::swap(&mut start, &mut end);
                        }
                        p += 2;
                        plen -= 2;
                        if (start..=end).contains(&signed(c)) {
                            matched = true;
                        }
                    } else if at(pattern, p) == c {
                        matched = true;
                    }
                    p += 1;
                    plen -= 1;
                }
                if not {
                    matched = !matched;
                }
                if !matched {
                    return false;
                }
                s += 1;
                slen -= 1;
            }
            first => {
                let mut literal = first;
                if first == b'\\' && plen >= 2 {
                    p += 1;
                    plen -= 1;
                    literal = pattern[p];
                }
                if literal != string[s] {
                    return false;
                }
                s += 1;
                slen -= 1;
            }
        }
        p += 1;
        plen -= 1;
        if slen == 0 {
            while at(pattern, p) == b'*' {
                p += 1;
                plen -= 1;
            }
            break;
        }
    }
    plen == 0 && slen == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(pattern: &str, key: &str) -> bool {
        string_match(pattern.as_bytes(), key.as_bytes())
    }

    #[test]
    fn stars_questions_and_literals() {
        assert!(m("foo*", "foo_a"));
        assert!(m("foo*", "foo"));
        assert!(!m("foo*", "fo"));
        assert!(m("*", "x"));
        assert!(
            !m("*", ""),
            "Redis: `*` alone does not match the empty string"
        );
        assert!(Pattern::new(b"*").matches(b""), "SCAN's shortcut for `*`");
        assert!(m("", ""));
        assert!(!m("", "a"));
        assert!(m("a*", "a"));
        assert!(m("a**", "a"));
        assert!(m("*b", "ab"));
        assert!(m("*1*", "key:10"));
        assert!(!m("*1*", "key:20"));
        assert!(m("h?llo", "hello") && m("h?llo", "hallo") && !m("h?llo", "hllo"));
        assert!(m("h*llo", "hllo") && m("h*llo", "heeeello"));
        assert!(m("a*b*c", "aXbYc") && !m("a*b*c", "aXbY"));
        assert!(m("user:*:name", "user:42:name"));
    }

    #[test]
    fn classes_as_redis_reads_them() {
        assert!(m("h[ae]llo", "hello") && m("h[ae]llo", "hallo") && !m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo") && !m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hallo") && m("h[a-b]llo", "hbllo") && !m("h[a-b]llo", "hcllo"));
        assert!(m("h[b-a]llo", "hallo"), "reversed range");
        assert!(m("[a-c-e]", "-"), "a `-` after a range is a literal");
        assert!(m("[a-c-e]", "b") && m("[a-c-e]", "e") && !m("[a-c-e]", "d"));
        assert!(m("[\\]]", "]"), "escaped ] inside a class");
        assert!(m("[\\-]", "-"));
        assert!(!m("[]", "]"), "`[]` is an empty class");
        // An unterminated class is a class of what follows `[`.
        assert!(m("[abc", "c") && m("[abc", "a") && !m("[abc", "d"));
        assert!(m("[^", "x"), "`[^` at the end matches any one byte");
        assert!(!m("[", "x"));
        // C compares signed chars: 0xff is -1, so [a-\xff] is -1..='a'.
        assert!(!string_match(b"[a-\xff]", b"b"));
        assert!(string_match(b"[a-\xff]", b"A"));
        assert!(string_match(b"[\x80-\xff]", b"\x90"));
        assert!(!string_match(b"[\x80-\xff]", b"a"));
    }

    #[test]
    fn escapes() {
        assert!(m("\\*", "*") && !m("\\*", "a"));
        assert!(m("\\?x", "?x") && !m("\\?x", "ax"));
        assert!(m("a\\[b", "a[b"));
        assert!(m("\\\\", "\\"));
        assert!(m("a\\", "a\\"), "a trailing backslash is itself");
        assert!(m("{a}*", "{a}x"), "braces are literals (hash tags)");
    }

    #[test]
    fn abusive_patterns_are_bounded() {
        // keyspace.tcl: "Regression for pattern matching long nested loops".
        assert!(!m(
            "a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b",
            &"a".repeat(40)
        ));
        // "... very long nested loops": the nesting guard gives up.
        let started = std::time::Instant::now();
        assert!(!m(&"*?".repeat(5000), &"a".repeat(5000)));
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    /// A plain backtracking reference for patterns without classes or escapes, where the
    /// semantics are unambiguous (`*` = any run, `?` = one byte), except for Redis's `*` on an
    /// empty string, handled by the caller.
    fn reference(pattern: &[u8], string: &[u8]) -> bool {
        match pattern.split_first() {
            None => string.is_empty(),
            Some((b'*', rest)) => (0..=string.len()).any(|i| reference(rest, &string[i..])),
            Some((b'?', rest)) => !string.is_empty() && reference(rest, &string[1..]),
            Some((&c, rest)) => string.first() == Some(&c) && reference(rest, &string[1..]),
        }
    }

    proptest! {
        #[test]
        fn stars_and_questions_agree_with_a_reference(
            pattern in "[ab*?]{0,8}",
            string in "[ab]{1,10}",
        ) {
            prop_assert_eq!(
                string_match(pattern.as_bytes(), string.as_bytes()),
                reference(pattern.as_bytes(), string.as_bytes()),
                "pattern {:?} string {:?}", pattern, string
            );
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            pattern in proptest::collection::vec(any::<u8>(), 0..32),
            string in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let _ = string_match(&pattern, &string);
        }

        #[test]
        fn a_key_matches_itself_escaped(key in proptest::collection::vec(any::<u8>(), 1..32)) {
            let mut escaped = Vec::new();
            for b in &key {
                escaped.push(b'\\');
                escaped.push(*b);
            }
            prop_assert!(string_match(&escaped, &key));
        }
    }
}
