//! Terminal styling of the demo: colours (only on a terminal, never with `NO_COLOR`), the
//! narration's line layout (titles, requests, answers, labelled values, explanations) and word
//! wrapping.

use std::io::{IsTerminal, Write};

use http::StatusCode;

/// Colours on or off (ANSI escapes only when stdout is a terminal).
#[derive(Debug, Clone, Copy, Default)]
pub struct Style {
    pub color: bool,
}

impl Style {
    /// Colour when stdout is a terminal and `NO_COLOR` is not set.
    pub fn detect() -> Style {
        Style {
            color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    pub(super) fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }
    pub(super) fn dim(&self, s: &str) -> String {
        self.paint("2", s)
    }
    pub(super) fn red(&self, s: &str) -> String {
        self.paint("1;31", s)
    }
    pub(super) fn green(&self, s: &str) -> String {
        self.paint("32", s)
    }
    fn yellow(&self, s: &str) -> String {
        self.paint("33", s)
    }
    fn cyan(&self, s: &str) -> String {
        self.paint("36", s)
    }
    fn magenta(&self, s: &str) -> String {
        self.paint("35", s)
    }
}

/// Width of the label column.
const LABEL: usize = 19;

/// Writes the narration: titled steps, requests, answers, labelled values, explanations.
pub(super) struct Out<'w> {
    pub(super) w: &'w mut dyn Write,
    pub(super) s: Style,
}

impl Out<'_> {
    pub(super) fn line(&mut self, text: &str) {
        // Output errors (a closed pipe) must not stop the checks.
        let _ = writeln!(self.w, "{text}");
    }

    pub(super) fn blank(&mut self) {
        self.line("");
    }

    pub(super) fn title(&mut self, id: &str, text: &str) {
        let head = if id.is_empty() {
            format!("── {text} ")
        } else {
            format!("── {id}. {text} ")
        };
        let fill = "─".repeat(78usize.saturating_sub(head.chars().count()));
        let t = self.s.bold(&format!("{head}{fill}"));
        self.blank();
        self.line(&t);
    }

    pub(super) fn request(&mut self, method: &str, url: &str, note: &str) {
        let arrow = self.s.cyan("→");
        let m = self.s.bold(method);
        let note = if note.is_empty() {
            String::new()
        } else {
            format!("  {}", self.s.dim(note))
        };
        self.line(&format!("  {arrow} {m} {url}{note}"));
    }

    pub(super) fn status(&mut self, status: StatusCode) {
        let text = format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        let painted = match status.as_u16() {
            200..=299 => self.s.green(&text),
            401 | 403 => self.s.yellow(&text),
            _ => self.s.red(&text),
        };
        let arrow = self.s.cyan("←");
        self.line(&format!("  {arrow} {painted}"));
    }

    /// `label  value`, aligned; continuation lines of `value` are indented under it.
    pub(super) fn kv(&mut self, label: &str, value: &str) {
        let pad = " ".repeat(LABEL.saturating_sub(label.chars().count()));
        let label = self.s.dim(label);
        let mut lines = value.lines();
        let first = lines.next().unwrap_or("");
        self.line(&format!("      {label}{pad} {first}"));
        let indent = " ".repeat(6 + LABEL + 1);
        for l in lines {
            self.line(&format!("{indent}{l}"));
        }
    }

    pub(super) fn explain(&mut self, text: &str) {
        for l in wrap(text, 84) {
            let l = self.s.dim(&l);
            self.line(&format!("    {l}"));
        }
    }

    pub(super) fn pass(&mut self, text: &str) {
        let mark = self.s.green("✓");
        self.line(&format!("  {mark} {text}"));
    }

    pub(super) fn fail(&mut self, text: &str) {
        let mark = self.s.red("✗");
        let text = self.s.red(text);
        self.line(&format!("  {mark} {text}"));
    }

    pub(super) fn warn(&mut self, text: &str) {
        let mark = self.s.magenta("!");
        for (i, l) in wrap(text, 84).iter().enumerate() {
            let l = self.s.magenta(l);
            if i == 0 {
                self.line(&format!("  {mark} {l}"));
            } else {
                self.line(&format!("    {l}"));
            }
        }
    }
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for word in text.split_whitespace() {
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > width {
            out.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

pub(super) fn abbreviate(token: &str) -> String {
    if token.len() <= 40 {
        return token.to_string();
    }
    let head: String = token.chars().take(24).collect();
    let tail: String = {
        let mut t: Vec<char> = token.chars().rev().take(8).collect();
        t.reverse();
        t.into_iter().collect()
    };
    format!("{head}…{tail}  ({} chars)", token.len())
}

/// Copy-paste commands, each after its (dimmed) comment lines.
pub(super) fn print_commands(out: &mut Out<'_>, commands: &[(String, String)]) {
    for (comment, cmd) in commands {
        out.blank();
        for l in comment.lines() {
            let c = out.s.dim(l);
            out.line(&format!("  {c}"));
        }
        for l in cmd.lines() {
            let l = out.s.cyan(l);
            out.line(&format!("  {l}"));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn plain_style_has_no_escapes() {
        let s = Style { color: false };
        assert_eq!(s.red("x"), "x");
        assert_eq!(Style { color: true }.red("x"), "\x1b[1;31mx\x1b[0m");
    }
}
