//! Percent-encoding of query values (RFC 3986 unreserved characters kept), for the
//! vendors that put credentials or signatures in the query string (ERNIE, Spark).

/// Encodes `s` for a query value: everything but `A-Z a-z 0-9 - _ . ~` as `%XX`.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes a form-encoded query value (`+` is a space, `%XX` a byte). Invalid escapes
/// are kept as they are.
pub fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'+' {
            out.push(b' ');
        } else if b == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(v) => {
                    out.push(v);
                    i += 3;
                    continue;
                }
                None => out.push(b),
            }
        } else {
            out.push(b);
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of `key` in a query string, decoded.
pub fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k) == key).then(|| decode(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let s = "Fri, 05 May 2023 10:43:39 GMT a+b/c=";
        assert_eq!(decode(&encode(s)), s);
        assert_eq!(decode("a+b%2Cc%zz%4"), "a b,c%zz%4");
        assert_eq!(
            query_param("x=1&date=a%20b", "date").as_deref(),
            Some("a b")
        );
    }
}
