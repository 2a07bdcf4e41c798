//! A validating JSON scanner that finds the values of top-level object members without
//! building anything: what [`crate::openai::verbatim_answer`] needs to relay an answer
//! unchanged. It checks the whole text against JSON's grammar (RFC 8259, as strictly as
//! serde_json: no trailing commas, no comments, no control characters in strings, valid
//! escapes and numbers, valid UTF-8, nesting at most [`MAX_DEPTH`]), so a body it accepts
//! is one any JSON client can read. serde_json, asked to skip what it does not need,
//! still spends ~20 instructions a byte on an answer; this spends a few.

use std::ops::Range;

/// serde_json's default recursion limit: at most `MAX_DEPTH - 1` objects and arrays
/// nested, the top-level object included.
pub const MAX_DEPTH: usize = 128;

/// Why a text was not scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanError {
    /// Not JSON, or not an object at the top.
    Invalid,
    /// A wanted key appears twice, or a top-level key uses escapes: valid JSON whose
    /// meaning the caller should get from a real parser.
    Ambiguous,
}

/// Scans `text`, a JSON object, and returns the byte range of the value of each of
/// `keys` found at its top level (`None` where absent).
pub fn top_level<const N: usize>(
    text: &[u8],
    keys: [&str; N],
) -> Result<[Option<Range<usize>>; N], ScanError> {
    if std::str::from_utf8(text).is_err() {
        return Err(ScanError::Invalid);
    }
    let mut s = Scanner { b: text, i: 0 };
    let mut found: [Option<Range<usize>>; N] = std::array::from_fn(|_| None);
    s.ws();
    s.eat(b'{')?;
    s.ws();
    if s.peek() == Some(b'}') {
        s.i += 1;
    } else {
        loop {
            let key_start = s.i + 1;
            let escaped = s.string()?;
            let key = &text[key_start..s.i - 1];
            s.ws();
            s.eat(b':')?;
            s.ws();
            let start = s.i;
            s.value(1)?;
            if let Some(k) = keys.iter().position(|k| k.as_bytes() == key) {
                if found[k].is_some() {
                    return Err(ScanError::Ambiguous);
                }
                found[k] = Some(start..s.i);
            } else if escaped {
                return Err(ScanError::Ambiguous);
            }
            s.ws();
            match s.next()? {
                b',' => s.ws(),
                b'}' => break,
                _ => return Err(ScanError::Invalid),
            }
        }
    }
    s.ws();
    if s.i != text.len() {
        return Err(ScanError::Invalid);
    }
    Ok(found)
}

/// [`top_level`] for an object inside a text [`top_level`] has already accepted (a
/// member's value it returned, or an object nested in one): the same spans and the same
/// [`ScanError::Ambiguous`] cases, found without checking the grammar again. The usage
/// object of an answer and its two details objects are read this way (reading the usage
/// went from ~5.6k to ~4.7k instructions). On a text that is not such an object it
/// returns wrong spans or an error, but never panics and never loops.
pub fn top_level_checked<const N: usize>(
    text: &[u8],
    keys: [&str; N],
) -> Result<[Option<Range<usize>>; N], ScanError> {
    let b = text;
    let mut found: [Option<Range<usize>>; N] = std::array::from_fn(|_| None);
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return Err(ScanError::Invalid);
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return Ok(found);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return Err(ScanError::Invalid);
        }
        let (end, escaped) = skip_string(b, i)?;
        let key = &b[i + 1..end - 1];
        i = skip_ws(b, end);
        if b.get(i) != Some(&b':') {
            return Err(ScanError::Invalid);
        }
        i = skip_ws(b, i + 1);
        let start = i;
        i = skip_value(b, i)?;
        if let Some(k) = keys.iter().position(|k| k.as_bytes() == key) {
            if found[k].is_some() {
                return Err(ScanError::Ambiguous);
            }
            found[k] = Some(start..i);
        } else if escaped {
            return Err(ScanError::Ambiguous);
        }
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return Ok(found),
            _ => return Err(ScanError::Invalid),
        }
    }
}

#[inline(always)]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// The string starting at `b[i]` (a quote), trusted: the index past its closing quote,
/// and whether it has escapes.
#[inline(always)]
fn skip_string(b: &[u8], i: usize) -> Result<(usize, bool), ScanError> {
    let mut j = i + 1;
    let mut escaped = false;
    loop {
        j = skip_plain::<false>(b, j);
        match b.get(j) {
            Some(b'"') => return Ok((j + 1, escaped)),
            // The escaped byte cannot end the string (`\u` digits are plain content).
            Some(b'\\') => {
                escaped = true;
                j += 2;
            }
            // A control character in a checked text cannot happen; step over it.
            Some(_) => j += 1,
            None => return Err(ScanError::Invalid),
        }
    }
}

/// The value starting at `b[i]`, trusted: the index just past it.
fn skip_value(b: &[u8], mut i: usize) -> Result<usize, ScanError> {
    match b.get(i) {
        None => Err(ScanError::Invalid),
        Some(b'"') => Ok(skip_string(b, i)?.0),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            loop {
                match b.get(i) {
                    None => return Err(ScanError::Invalid),
                    Some(b'"') => {
                        i = skip_string(b, i)?.0;
                        continue;
                    }
                    Some(b'{' | b'[') => depth += 1,
                    Some(b'}' | b']') => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(i + 1);
                        }
                    }
                    Some(_) => {}
                }
                i += 1;
            }
        }
        // A number or a literal: up to the next delimiter.
        Some(_) => {
            while let Some(c) = b.get(i) {
                if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                i += 1;
            }
            Ok(i)
        }
    }
}

/// Bytes that end a run of plain string content: `"`, `\` and the control characters.
static STRING_STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// `0x01` in every byte of a word.
const ONES: u64 = 0x0101_0101_0101_0101;
/// The high bit of every byte of a word.
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The bytes of `w` (little-endian) that end a run of plain string content, as their
/// high bits. Only the lowest flagged byte is exact (a borrow can flag bytes above a true
/// one), which is all [`skip_plain`] reads. A byte is below `0x20` when subtracting
/// `0x20` borrows from it and its high bit was clear; it is `c` when `w ^ c` is zero
/// there.
#[inline(always)]
fn stop_bits(w: u64) -> u64 {
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    let q = w ^ (ONES * u64::from(b'"'));
    let quote = q.wrapping_sub(ONES) & !q & HIGHS;
    let e = w ^ (ONES * u64::from(b'\\'));
    let escape = e.wrapping_sub(ONES) & !e & HIGHS;
    control | quote | escape
}

/// The index of the first byte at or after `i` that ends plain string content (a
/// quote, a backslash or a control character), or `b.len()`. Eight bytes at a time for
/// short runs (keys and most values); a run past 64 bytes (prompts, answers) is skipped
/// with `memchr` and checked for control characters in one pass the compiler
/// vectorizes, unless `CONTROL` is false: text a parser has already accepted (what
/// [`top_level_checked`] reads) has none, so an 8 KB prompt's run is not read twice.
#[inline(always)]
fn skip_plain<const CONTROL: bool>(b: &[u8], mut i: usize) -> usize {
    let start = i;
    while let Some(w) = b.get(i..i + 8).and_then(|s| <[u8; 8]>::try_from(s).ok()) {
        let stops = stop_bits(u64::from_le_bytes(w));
        if stops != 0 {
            return i + (stops.trailing_zeros() / 8) as usize;
        }
        i += 8;
        if i - start >= 64 {
            let run = &b[i..];
            let run = &run[..memchr::memchr2(b'"', b'\\', run).unwrap_or(run.len())];
            // Control characters are checked 64 bytes at a time without an early exit
            // inside a block, which the compiler vectorizes (`iter().any` it does not:
            // ~5 instructions a byte, most of an 8 KB prompt's cost).
            let has_control = CONTROL
                && run
                    .chunks(64)
                    .any(|block| block.iter().fold(false, |seen, c| seen | (*c < 0x20)));
            if has_control {
                return i + run.iter().position(|c| *c < 0x20).unwrap_or(0);
            }
            return i + run.len();
        }
    }
    while i < b.len() && !STRING_STOP[b[i] as usize] {
        i += 1;
    }
    i
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline(always)]
    fn next(&mut self) -> Result<u8, ScanError> {
        let c = self.peek().ok_or(ScanError::Invalid)?;
        self.i += 1;
        Ok(c)
    }

    #[inline(always)]
    fn eat(&mut self, want: u8) -> Result<(), ScanError> {
        if self.next()? == want {
            Ok(())
        } else {
            Err(ScanError::Invalid)
        }
    }

    #[inline(always)]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// A string, from its opening quote; returns whether it had escapes.
    #[inline(always)]
    fn string(&mut self) -> Result<bool, ScanError> {
        self.eat(b'"')?;
        let b = self.b;
        let mut i = self.i;
        let mut escaped = false;
        loop {
            i = skip_plain::<true>(b, i);
            match b.get(i) {
                Some(b'"') => {
                    self.i = i + 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    match b.get(i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                        Some(b'u')
                            if b.len() >= i + 6
                                && b[i + 2..i + 6].iter().all(u8::is_ascii_hexdigit) =>
                        {
                            i += 6
                        }
                        _ => return Err(ScanError::Invalid),
                    }
                }
                // A control character, or the end of the text.
                _ => return Err(ScanError::Invalid),
            }
        }
    }

    #[inline(always)]
    fn digits(&mut self) -> Result<(), ScanError> {
        if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
            return Err(ScanError::Invalid);
        }
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        Ok(())
    }

    #[inline(always)]
    fn number(&mut self) -> Result<(), ScanError> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits()?,
            _ => return Err(ScanError::Invalid),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.digits()?;
        }
        Ok(())
    }

    #[inline(always)]
    fn literal(&mut self, word: &[u8]) -> Result<(), ScanError> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(ScanError::Invalid)
        }
    }

    /// One value at nesting `depth` (the top-level object's members are at 1).
    fn value(&mut self, depth: usize) -> Result<(), ScanError> {
        match self.peek().ok_or(ScanError::Invalid)? {
            b'"' => self.string().map(drop),
            b'{' => {
                if depth + 1 >= MAX_DEPTH {
                    return Err(ScanError::Invalid);
                }
                self.i += 1;
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.string()?;
                    self.ws();
                    self.eat(b':')?;
                    self.ws();
                    self.value(depth + 1)?;
                    self.ws();
                    match self.next()? {
                        b',' => self.ws(),
                        b'}' => return Ok(()),
                        _ => return Err(ScanError::Invalid),
                    }
                }
            }
            b'[' => {
                if depth + 1 >= MAX_DEPTH {
                    return Err(ScanError::Invalid);
                }
                self.i += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.value(depth + 1)?;
                    self.ws();
                    match self.next()? {
                        b',' => self.ws(),
                        b']' => return Ok(()),
                        _ => return Err(ScanError::Invalid),
                    }
                }
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }
}

/// A validating walk over a JSON text whose shape the caller knows: the caller reads the
/// members it wants as it meets them (strings, nulls, nested objects and arrays) and lets
/// the walk check and skip the rest, all in one pass. What it accepts is what
/// [`top_level`] accepts (the same scanner); it never allocates. Chunks of a stream are
/// read this way ([`crate::openai::verbatim_chunk`]).
pub struct Walk<'a> {
    s: Scanner<'a>,
}

impl<'a> Walk<'a> {
    /// A walk over `text`, which must be UTF-8 (a `&str`'s bytes).
    pub fn new(text: &'a str) -> Self {
        let mut s = Scanner {
            b: text.as_bytes(),
            i: 0,
        };
        s.ws();
        Walk { s }
    }

    /// An object at nesting `depth` (the top-level object is at 0): `member` is called
    /// with the walk at each member's value, the span of the key's text (without the
    /// quotes) and whether the key has escapes, and must read exactly one value (with
    /// [`Walk::skip`] if nothing else).
    pub fn object(
        &mut self,
        depth: usize,
        mut member: impl FnMut(&mut Self, Range<usize>, bool) -> Result<(), ScanError>,
    ) -> Result<(), ScanError> {
        self.container(depth, b'{', b'}', |w| {
            let start = w.s.i + 1;
            let escaped = w.s.string()?;
            let key = start..w.s.i - 1;
            w.s.ws();
            w.s.eat(b':')?;
            w.s.ws();
            member(w, key, escaped)
        })
    }

    /// An array at nesting `depth`: `element` is called with the walk at each element
    /// and must read exactly one value.
    pub fn array(
        &mut self,
        depth: usize,
        element: impl FnMut(&mut Self) -> Result<(), ScanError>,
    ) -> Result<(), ScanError> {
        self.container(depth, b'[', b']', element)
    }

    /// An object or an array: `open`, then `item`s separated by commas, then `close`.
    #[inline(always)]
    fn container(
        &mut self,
        depth: usize,
        open: u8,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Result<(), ScanError>,
    ) -> Result<(), ScanError> {
        if depth + 1 >= MAX_DEPTH {
            return Err(ScanError::Invalid);
        }
        self.s.eat(open)?;
        self.s.ws();
        if self.s.peek() == Some(close) {
            self.s.i += 1;
            self.s.ws();
            return Ok(());
        }
        loop {
            item(self)?;
            match self.s.next()? {
                b',' => self.s.ws(),
                c if c == close => {
                    self.s.ws();
                    return Ok(());
                }
                _ => return Err(ScanError::Invalid),
            }
        }
    }

    /// Checks and skips any value nested at `depth` (the members of the top-level object
    /// are at 1); returns its span.
    #[inline]
    pub fn skip(&mut self, depth: usize) -> Result<Range<usize>, ScanError> {
        let start = self.s.i;
        self.s.value(depth)?;
        let end = self.s.i;
        self.s.ws();
        Ok(start..end)
    }

    /// A string value: the span of its content (without the quotes) and whether it has
    /// escapes. Anything else is [`ScanError::Invalid`].
    #[inline]
    pub fn string(&mut self) -> Result<(Range<usize>, bool), ScanError> {
        let start = self.s.i + 1;
        let escaped = self.s.string()?;
        let end = self.s.i - 1;
        self.s.ws();
        Ok((start..end, escaped))
    }

    /// Reads a `null` if one is next; `false` (and nothing read) otherwise.
    #[inline]
    pub fn null(&mut self) -> Result<bool, ScanError> {
        if self.s.peek() != Some(b'n') {
            return Ok(false);
        }
        self.s.literal(b"null")?;
        self.s.ws();
        Ok(true)
    }

    /// Succeeds when the whole text has been read.
    #[inline]
    pub fn end(&self) -> Result<(), ScanError> {
        if self.s.i == self.s.b.len() {
            Ok(())
        } else {
            Err(ScanError::Invalid)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde_ok(t: &[u8]) -> bool {
        serde_json::from_slice::<serde_json::Value>(t).is_ok()
    }

    fn valid(t: &[u8]) -> bool {
        !matches!(top_level(t, ["a"]), Err(ScanError::Invalid))
    }

    #[test]
    fn finds_top_level_members_only() {
        let t = br#" {"a": {"b": 1, "a": [2]}, "b" : "x\"y" , "c":-1.5e+3, "d":null} "#;
        let [a, b, c, d, e] = top_level(t, ["a", "b", "c", "d", "e"]).unwrap();
        let s = |r: Option<Range<usize>>| std::str::from_utf8(&t[r.unwrap()]).unwrap();
        assert_eq!(s(a), r#"{"b": 1, "a": [2]}"#);
        assert_eq!(s(b), r#""x\"y""#);
        assert_eq!(s(c), "-1.5e+3");
        assert_eq!(s(d), "null");
        assert_eq!(e, None);
        assert_eq!(top_level(b"{}", ["a"]).unwrap(), [None]);
    }

    #[test]
    fn ambiguous_texts_are_left_to_a_parser() {
        assert_eq!(
            top_level(br#"{"a":1,"a":2}"#, ["a"]),
            Err(ScanError::Ambiguous)
        );
        assert_eq!(
            top_level(br#"{"\u0061":1}"#, ["a"]),
            Err(ScanError::Ambiguous)
        );
        // Escapes below the top level, or in values, are fine.
        assert!(top_level(br#"{"a":{"\u0061":"\n"}}"#, ["a"]).is_ok());
        // A duplicate key nobody asked for is JSON's business, not ours.
        assert!(top_level(br#"{"b":1,"b":2}"#, ["a"]).is_ok());
    }

    #[test]
    fn agrees_with_serde_json_on_what_is_json() {
        let cases: &[&[u8]] = &[
            br#"{"a":[1,2,{"x":true,"y":false,"z":null}],"b":"\u00e9\ud83d\ude00 \/\b\f\n\r\t"}"#,
            br#"{"a":0,"b":-0,"c":0.5,"d":1E9,"e":1e-9,"f":12345678901234567890}"#,
            b"{\"a\":\"caf\xc3\xa9\"}",
            br#"{"a":[]}"#,
            br#"{"a":{}}"#,
            br#"{"a":1,}"#,
            br#"{"a":[1,]}"#,
            br#"{"a":01}"#,
            br#"{"a":1.}"#,
            br#"{"a":.5}"#,
            br#"{"a":+1}"#,
            br#"{"a":1e}"#,
            br#"{"a":-}"#,
            br#"{"a":tru}"#,
            br#"{"a":nul}"#,
            br#"{"a":"\x"}"#,
            br#"{"a":"\u12g4"}"#,
            b"{\"a\":\"tab\there\"}",
            b"{\"a\":\"\xff\"}",
            br#"{"a" 1}"#,
            br#"{a:1}"#,
            br#"{"a":1}}"#,
            br#"{"a":1} x"#,
            br#"{"a":1"#,
            br#"{"a":"#,
            br#"{"#,
            b"",
            b"   ",
            br#"{"a":1 "b":2}"#,
            br#"{"a":[1 2]}"#,
            br#"{"a":1} // comment"#,
            br#"{"a":NaN}"#,
            br#"{"a":Infinity}"#,
        ];
        for t in cases {
            assert_eq!(valid(t), serde_ok(t), "{}", String::from_utf8_lossy(t));
        }
        // Not an object at the top: valid JSON, but not ours to scan.
        for t in [&b"[1]"[..], b"1", b"\"a\"", b"null"] {
            assert_eq!(top_level(t, ["a"]), Err(ScanError::Invalid));
        }
    }

    #[test]
    fn nesting_is_limited_like_serde_json() {
        let deep = |n: usize| format!("{{\"a\":{}1{}}}", "[".repeat(n), "]".repeat(n));
        assert!(valid(deep(MAX_DEPTH - 2).as_bytes()));
        assert!(!valid(deep(MAX_DEPTH - 1).as_bytes()));
        assert!(!valid(deep(100_000).as_bytes()), "no stack overflow");
        for n in [MAX_DEPTH - 3, MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH] {
            let t = deep(n);
            assert_eq!(valid(t.as_bytes()), serde_ok(t.as_bytes()), "depth {n}");
        }
    }

    /// Strings of every length up to past the word-at-a-time window, starting at every
    /// offset in a word, with a quote, a backslash escape, a control character or a
    /// multi-byte character at every position: the scanner ends each string where
    /// serde_json does and rejects what it rejects.
    #[test]
    fn strings_agree_with_serde_json_at_every_length_and_alignment() {
        let fill = |n: usize| -> Vec<u8> { (0..n).map(|k| b'a' + (k % 26) as u8).collect() };
        for pad in 0..8 {
            for len in 0..100 {
                for at in 0..=len {
                    for ins in [
                        &b"\\\""[..],
                        b"\\n",
                        b"\\u00e9",
                        b"\x01",
                        b"\x1f",
                        b"\t",
                        b"\xc3\xa9",
                        b" ",
                        b"\x7f",
                        b"\"",
                        b"\\",
                    ] {
                        let mut v = fill(len);
                        v.splice(at..at, ins.iter().copied());
                        let mut t = b"{".to_vec();
                        t.extend(std::iter::repeat_n(b' ', pad));
                        t.extend_from_slice(b"\"k\":\"");
                        t.extend_from_slice(&v);
                        t.extend_from_slice(b"\",\"a\":1}");
                        let ours = top_level(&t, ["a", "k"]);
                        let theirs = serde_json::from_slice::<serde_json::Value>(&t);
                        assert_eq!(
                            ours.is_ok(),
                            theirs.is_ok(),
                            "{}",
                            String::from_utf8_lossy(&t)
                        );
                        if let (Ok([a, k]), Ok(v)) = (ours, theirs) {
                            assert_eq!(&t[a.unwrap()], b"1");
                            let k: String = serde_json::from_slice(&t[k.unwrap()]).unwrap();
                            assert_eq!(serde_json::Value::String(k), v["k"]);
                        }
                    }
                }
            }
        }
    }

    /// The trusting reader finds exactly what the validating one finds, on every object
    /// the validating one accepts (including the ambiguous ones), and survives anything.
    #[test]
    fn checked_reader_agrees_with_the_validating_one() {
        let cases: Vec<Vec<u8>> = vec![
            br#"{"a":[1,2,{"x":true,"y":false,"z":null}],"b":"\u00e9\ud83d\ude00 \/\b\f\n\r\t"}"#.to_vec(),
            br#"{"a":0,"b":-0,"c":0.5,"d":1E9,"e":1e-9,"f":12345678901234567890}"#.to_vec(),
            br#" { "b" : { "a" : [ "}" , "]" , "\"" , { } , [ ] ] } , "a" : "x\\" , "c":{} } "#.to_vec(),
            br#"{"a":1,"a":2}"#.to_vec(),
            br#"{"\u0061":1}"#.to_vec(),
            br#"{"b":1,"b":2,"a":"\"{["}"#.to_vec(),
            br#"{}"#.to_vec(),
            br#"{ }"#.to_vec(),
            br#"{"completion_tokens":27,"completion_tokens_details":{"accepted_prediction_tokens":0,"audio_tokens":0,"reasoning_tokens":0,"rejected_prediction_tokens":0},"prompt_tokens":20,"prompt_tokens_details":{"audio_tokens":0,"cached_tokens":0},"total_tokens":47}"#.to_vec(),
        ];
        let keys = [
            "a",
            "b",
            "c",
            "d",
            "completion_tokens_details",
            "total_tokens",
        ];
        for t in &cases {
            let want = top_level(t, keys);
            assert!(want.is_ok() || want == Err(ScanError::Ambiguous));
            assert_eq!(
                top_level_checked(t, keys),
                want,
                "{}",
                String::from_utf8_lossy(t)
            );
            // And the objects nested in its values, as usage_at reads them.
            if let Ok(spans) = want {
                for r in spans.into_iter().flatten() {
                    let v = &t[r];
                    if v.first() == Some(&b'{') {
                        assert_eq!(top_level_checked(v, keys), top_level(v, keys));
                    }
                }
            }
        }
        // Not a checked text: any answer, but no panic and no endless loop.
        let base = cases[2].clone();
        for n in 0..=base.len() {
            let _ = top_level_checked(&base[..n], keys);
        }
        let mut t = base.clone();
        for i in 0..base.len() {
            for c in [b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b' ', 0x01] {
                t[i] = c;
                if top_level(&t, keys).is_ok() {
                    assert_eq!(top_level_checked(&t, keys), top_level(&t, keys));
                } else {
                    let _ = top_level_checked(&t, keys);
                }
            }
            t[i] = base[i];
        }
        for junk in [
            &b""[..],
            b"{",
            b"{\"",
            b"{\"a",
            b"{\"a\":",
            b"{\"a\":[",
            b"{\"a\":\"\\",
            b"}}}]]]",
        ] {
            let _ = top_level_checked(junk, keys);
        }
    }

    /// Long strings (the `memchr` path, checked for control characters a block at a
    /// time): a control character in any block, at and around the block edges, is found.
    #[test]
    fn long_strings_reject_a_control_character_in_any_block() {
        for len in [65, 127, 128, 129, 200, 1000, 8200] {
            let fill: Vec<u8> = (0..len).map(|k| b'a' + (k % 26) as u8).collect();
            let mut positions: Vec<usize> = (0..len).step_by(61).collect();
            for edge in [63, 64, 65, 127, 128, 129, 191, 192, 193] {
                positions.extend([edge, edge + 8, edge + 64].into_iter().filter(|p| *p < len));
            }
            positions.push(len - 1);
            for at in positions {
                for bad in [0x00u8, 0x01, 0x1f, b'\t', b'\n'] {
                    let mut v = fill.clone();
                    v[at] = bad;
                    let mut t = b"{\"k\":\"".to_vec();
                    t.extend_from_slice(&v);
                    t.extend_from_slice(b"\"}");
                    assert_eq!(
                        top_level(&t, ["k"]),
                        Err(ScanError::Invalid),
                        "len {len} at {at}"
                    );
                    assert!(!serde_ok(&t));
                }
            }
            let mut t = b"{\"k\":\"".to_vec();
            t.extend_from_slice(&fill);
            t.extend_from_slice(b"\"}");
            let [k] = top_level(&t, ["k"]).unwrap();
            assert_eq!(k.unwrap().len(), len + 2);
        }
    }

    /// Every prefix and every one-byte change of a realistic answer: the scanner and
    /// serde_json agree on which are JSON objects.
    #[test]
    fn agrees_with_serde_json_on_mutations() {
        let answer = br#"{"id":"chatcmpl-1","object":"chat.completion","created":7,"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"a \"quoted\" caf\u00e9 [x]","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":0}},"service_tier":"default","system_fingerprint":"fp_1","x":[-1.5e-3,true,false],"long":"a run of plain text longer than the byte-by-byte window, then \"an escape\" and more plain text after it"}"#;
        let is_object =
            |t: &[u8]| serde_json::from_slice::<serde_json::Value>(t).is_ok_and(|v| v.is_object());
        for n in 0..=answer.len() {
            let t = &answer[..n];
            assert_eq!(valid(t), is_object(t), "prefix {n}");
        }
        let mut t = answer.to_vec();
        for i in 0..answer.len() {
            for c in [
                b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b' ', b'0', b'-', b'e', b'.',
                b'a', b'n', 0x01, 0x7f, 0xc3,
            ] {
                t[i] = c;
                let v = valid(&t);
                // A one-byte change can create a duplicate top-level key ("ambiguous"),
                // which serde_json's Value accepts (last wins): compare validity only.
                assert_eq!(
                    v,
                    is_object(&t),
                    "byte {i} -> {c:#x}: {}",
                    String::from_utf8_lossy(&t)
                );
            }
            t[i] = answer[i];
        }
    }
}

#[cfg(test)]
mod speed {
    /// `cargo test --release -p tollgate-providers jscan_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn jscan_speed() {
        let body = br#"{"choices":[{"finish_reason":"stop","index":0,"logprobs":null,"message":{"content":"Hello from the openai emulator (gpt-4o-mini). You said: Say hello to the benchmark in one short sentence.","refusal":null,"role":"assistant"}}],"created":1795938784,"id":"chatcmpl-emu8","model":"gpt-4o-mini","object":"chat.completion","system_fingerprint":"fp_emulator","usage":{"completion_tokens":15,"completion_tokens_details":{"accepted_prediction_tokens":0,"audio_tokens":0,"reasoning_tokens":0,"rejected_prediction_tokens":0},"prompt_tokens":8,"prompt_tokens_details":{"audio_tokens":0,"cached_tokens":0},"total_tokens":23}}"#;
        let n = 200_000;
        let t = std::time::Instant::now();
        let mut k = 0;
        for _ in 0..n {
            k += super::top_level(
                std::hint::black_box(body),
                ["id", "created", "model", "choices", "usage", "error"],
            )
            .is_ok() as usize;
        }
        let scan = t.elapsed().as_nanos() as f64 / n as f64;

        let t = std::time::Instant::now();
        for _ in 0..n {
            k += crate::openai::verbatim_answer(std::hint::black_box(body)).is_some() as usize;
        }
        let verb = t.elapsed().as_nanos() as f64 / n as f64;
        let t = std::time::Instant::now();
        for _ in 0..n {
            k += serde_json::from_slice::<tollgate_core::chat::ChatResponse>(std::hint::black_box(
                body,
            ))
            .is_ok() as usize;
        }
        let serde = t.elapsed().as_nanos() as f64 / n as f64;
        println!("{} bytes: scan {scan:.0} ns, verbatim {verb:.0} ns, serde ChatResponse {serde:.0} ns ({k})", body.len());
    }

    /// `cargo test --release -p tollgate-providers jscan_speed_big -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn jscan_speed_big() {
        let mut user = String::from("Say hello");
        while user.len() < 8000 {
            user.push_str(" the quick brown fox jumps over");
        }
        let body = serde_json::to_vec(&serde_json::json!({"model":"openai/gpt-4o-mini","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":user}],"max_tokens":1024,"stream":false})).unwrap();
        let n = 20_000;
        let t = std::time::Instant::now();
        let mut k = 0;
        for _ in 0..n {
            k += super::top_level(
                std::hint::black_box(&body[..]),
                ["model", "stream", "stream_options"],
            )
            .is_ok() as usize;
        }
        println!(
            "{} bytes: {:.0} ns ({k})",
            body.len(),
            t.elapsed().as_nanos() as f64 / n as f64
        );
    }
}
