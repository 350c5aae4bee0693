//! What a check reports: a [`Finding`] (severity, problem, fix). Depends on nothing, so any
//! check can produce findings without importing the others.

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The executor will not work safely: `check` exits 1.
    Error,
    /// Works, but weaker than it should be.
    Warning,
    /// A fact about the host worth showing (what works), never a problem.
    Info,
}

/// One problem and how to fix it.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

/// A finding of `severity`: `problem`, and what to do about it.
pub(super) fn finding(
    severity: Severity,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> Finding {
    Finding {
        severity,
        problem: problem.into(),
        fix: fix.into(),
    }
}
