//! Secret references (`env:NAME`, `file:PATH` or a literal), resolved at load and unprintable by type.

use std::fmt;
use std::path::Path;

/// A resolved secret. `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Resolves `env:NAME`, `file:PATH` (relative to `base`, trailing newline trimmed) or a literal.
    pub fn resolve(reference: &str, base: &Path) -> Result<Secret, String> {
        if let Some(name) = reference.strip_prefix("env:") {
            return std::env::var(name)
                .map(Secret)
                .map_err(|_| format!("environment variable {name} is not set"));
        }
        if let Some(path) = reference.strip_prefix("file:") {
            let path = base.join(path);
            return std::fs::read_to_string(&path)
                .map(|s| Secret(s.trim_end_matches(['\r', '\n']).to_string()))
                .map_err(|e| format!("cannot read secret file {}: {e}", path.display()));
        }
        Ok(Secret(reference.to_string()))
    }

    /// Wraps a value produced at run time (dev tools, tests).
    pub fn from_value(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison with a presented value.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        let mut diff = expected.len() ^ presented.len();
        for (i, b) in expected.iter().enumerate() {
            diff |= usize::from(b ^ presented.get(i).copied().unwrap_or(0));
        }
        diff == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_and_hides() {
        let s = Secret::from_value("Bearer abc");
        assert!(s.matches(b"Bearer abc"));
        assert!(!s.matches(b"Bearer abd"));
        assert!(!s.matches(b"Bearer abc "));
        assert!(!s.matches(b""));
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn env_reference_missing_is_an_error() {
        let err = Secret::resolve("env:CAE_PROXY_TEST_SURELY_UNSET", Path::new(".")).unwrap_err();
        assert_eq!(
            err,
            "environment variable CAE_PROXY_TEST_SURELY_UNSET is not set"
        );
    }
}
