//! What a configuration mistake is (TOML path, line and column, message) and how a list of them
//! prints for `check`, a refused reload and a refused start.

use std::fmt;

/// Where a mistake is in the file: 1-based line and column (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    /// The line and column of byte `offset` of `text` (an offset inside a character counts as
    /// that character, one past the end as the end).
    pub fn of(text: &str, offset: usize) -> Position {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Position {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

/// One configuration mistake and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// TOML path (`route[2].strip_prefix`); empty for the file as a whole.
    pub path: String,
    /// Where the value (or the table missing a key, or the unknown key) is, when the file has it.
    pub position: Option<Position>,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.into(),
            position: None,
            message: message.into(),
        }
    }

    /// The same mistake, placed at `position`.
    pub fn at(self, position: Position) -> ConfigError {
        ConfigError {
            position: Some(position),
            ..self
        }
    }

    /// A syntax error of a document that is not TOML (nothing else can be checked then).
    pub(super) fn syntax(text: &str, e: &toml::de::Error) -> ConfigError {
        let message = e.message().trim().replace('\n', "; ");
        let err = ConfigError::new("", format!("invalid TOML: {message}"));
        match e.span() {
            Some(span) => err.at(Position::of(text, span.start)),
            None => err,
        }
    }
}

/// `route[2].strip_prefix (line 41, column 16): expected a boolean …`; without a path
/// `line 3, column 11: invalid TOML: …`.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.path.is_empty(), self.position) {
            (true, None) => write!(f, "{}", self.message),
            (true, Some(p)) => write!(f, "line {}, column {}: {}", p.line, p.column, self.message),
            (false, None) => write!(f, "{}: {}", self.path, self.message),
            (false, Some(p)) => write!(
                f,
                "{} (line {}, column {}): {}",
                self.path, p.line, p.column, self.message
            ),
        }
    }
}

/// Every mistake found in one file, in file order (mistakes without a position last).
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn one(e: ConfigError) -> ConfigErrors {
        ConfigErrors(vec![e])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_lines_and_character_columns() {
        let text = "a = 1\nbé = \"x\"\r\n\nc";
        assert_eq!(Position::of(text, 0), Position { line: 1, column: 1 });
        assert_eq!(Position::of(text, 4), Position { line: 1, column: 5 });
        // `é` is two bytes and one column; the value starts at byte 12.
        assert_eq!(Position::of(text, 12), Position { line: 2, column: 6 });
        // Inside `é`: that character.
        assert_eq!(Position::of(text, 8), Position { line: 2, column: 2 });
        assert_eq!(Position::of(text, 17), Position { line: 3, column: 1 });
        assert_eq!(Position::of(text, 18), Position { line: 4, column: 1 });
        assert_eq!(Position::of(text, 999), Position { line: 4, column: 2 });
        assert_eq!(Position::of("", 0), Position { line: 1, column: 1 });
    }
}
