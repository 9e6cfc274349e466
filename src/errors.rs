//! Error plumbing shared by every module: the boxed cause type and a `Display` of a whole
//! cause chain for log lines.

use std::error::Error;
use std::fmt;

/// Any error, as a cause kept by another error or as a body's error.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// Displays an error and its causes, `outer: inner: innermost`. A cause whose text the message
/// before it already contains is not repeated (errors that also print their source).
pub struct Chain<'a>(pub &'a (dyn Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = self.0.to_string();
        f.write_str(&last)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            let text = e.to_string();
            if !text.is_empty() && !last.contains(&text) {
                write!(f, ": {text}")?;
            }
            last = text;
            cur = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner: {0}")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn causes_are_joined_and_not_repeated() {
        let e = Outer(Inner(std::io::Error::other("disk full")));
        assert_eq!(Chain(&e).to_string(), "outer: inner: disk full");
    }
}
