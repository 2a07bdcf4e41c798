//! [`Secret`]: a string that never prints. Upstream keys, signing secrets and the admin
//! key live in it, so a stray `{:?}` in a log line shows `*****`.

use std::fmt;

/// A secret string. `Debug` and `Display` print `*****`; read it with [`Secret::expose`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for signing or an auth header. Never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn never_prints() {
        let s = super::Secret::new("sk-very-secret");
        assert_eq!(format!("{s} {s:?}"), "***** *****");
        assert_eq!(s.expose(), "sk-very-secret");
    }
}
