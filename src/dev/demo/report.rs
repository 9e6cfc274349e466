//! The outcome of the narration: one [`StepResult`] per step, collected in a [`Report`], and the
//! [`Step`] being run, which records and prints every check that did not hold.

use http::StatusCode;

use super::style::Out;

/// Outcome of one narrated step.
#[derive(Debug, Clone)]
pub struct StepResult {
    /// Step label (`a`, `b.1`, …).
    pub id: &'static str,
    /// What the step shows.
    pub title: &'static str,
    /// Every check that did not hold; empty when the step passed.
    pub failures: Vec<String>,
}

impl StepResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Outcome of the whole narration.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub steps: Vec<StepResult>,
}

impl Report {
    /// True when every step passed.
    pub fn passed(&self) -> bool {
        self.steps.iter().all(StepResult::passed)
    }

    /// The steps that failed.
    pub fn failed(&self) -> Vec<&StepResult> {
        self.steps.iter().filter(|s| !s.passed()).collect()
    }

    /// The result of one step by label.
    pub fn step(&self, id: &str) -> Option<&StepResult> {
        self.steps.iter().find(|s| s.id == id)
    }
}

/// Checks of the step being run.
pub(super) struct Step {
    id: &'static str,
    title: &'static str,
    failures: Vec<String>,
}

impl Step {
    pub(super) fn new(out: &mut Out<'_>, id: &'static str, title: &'static str) -> Step {
        out.title(id, title);
        Step {
            id,
            title,
            failures: Vec::new(),
        }
    }

    /// Records and prints a failed check; returns `ok`.
    pub(super) fn check(&mut self, out: &mut Out<'_>, ok: bool, what: impl Into<String>) -> bool {
        if !ok {
            let what = what.into();
            out.fail(&what);
            self.failures.push(what);
        }
        ok
    }

    pub(super) fn expect_status(&mut self, out: &mut Out<'_>, got: StatusCode, want: u16) -> bool {
        self.check(
            out,
            got.as_u16() == want,
            format!("expected status {want}, got {}", got.as_u16()),
        )
    }

    pub(super) fn finish(self, out: &mut Out<'_>, report: &mut Report, summary: &str) {
        if self.failures.is_empty() {
            out.pass(summary);
        }
        report.steps.push(StepResult {
            id: self.id,
            title: self.title,
            failures: self.failures,
        });
    }
}
