//! Agreement errors: where (file:line:col), what, and how to fix it.

use std::fmt;

/// The kinds of agreement error, each with a stable name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The file is not valid TOML.
    Syntax,
    /// A key the format does not have.
    UnknownKey,
    /// A party the agreement does not list.
    UnknownParty,
    /// An event type the wire contract does not have.
    UnknownEvent,
    /// A section the event type does not have.
    UnknownSection,
    /// A public event (no sections) in a share rule.
    PublicEvent,
    /// A party with no keys in the directory.
    PartyWithoutKeys,
    /// A share rule grants what a `never` rule forbids.
    Contradiction,
    /// A retention period that does not parse.
    BadRetention,
    /// A clause referenced but not defined.
    UndefinedClause,
    /// A legal basis referenced but not defined.
    UndefinedBasis,
    /// A party, clause or basis defined twice.
    Duplicate,
    /// Effective dates that do not parse or are out of order.
    BadDates,
    /// A share rule from a party that may not produce the event.
    ProducerNotAllowed,
    /// A gRPC method the wire contract does not have.
    UnknownMethod,
    /// A missing or invalid value (version, id, role).
    BadValue,
    /// A section a producer may seal that no rule shares (it could never be sealed).
    Uncovered,
    /// A [[call]] rule that does not say whose node it may be called on.
    MissingCallee,
}

impl ErrorKind {
    /// Stable kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Syntax => "syntax",
            ErrorKind::UnknownKey => "unknown-key",
            ErrorKind::UnknownParty => "unknown-party",
            ErrorKind::UnknownEvent => "unknown-event",
            ErrorKind::UnknownSection => "unknown-section",
            ErrorKind::PublicEvent => "public-event",
            ErrorKind::PartyWithoutKeys => "party-without-keys",
            ErrorKind::Contradiction => "contradiction",
            ErrorKind::BadRetention => "bad-retention",
            ErrorKind::UndefinedClause => "undefined-clause",
            ErrorKind::UndefinedBasis => "undefined-basis",
            ErrorKind::Duplicate => "duplicate",
            ErrorKind::BadDates => "bad-dates",
            ErrorKind::ProducerNotAllowed => "producer-not-allowed",
            ErrorKind::UnknownMethod => "unknown-method",
            ErrorKind::BadValue => "bad-value",
            ErrorKind::Uncovered => "uncovered",
            ErrorKind::MissingCallee => "missing-callee",
        }
    }
}

/// One error in an agreement file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// File name.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Kind.
    pub kind: ErrorKind,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error[{}]: {}",
            self.file,
            self.line,
            self.column,
            self.kind.name(),
            self.message
        )?;
        if !self.hint.is_empty() {
            write!(f, "\n  hint: {}", self.hint)?;
        }
        Ok(())
    }
}

/// Every error found in one check, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
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

/// Maps byte offsets of one file to line and column.
pub(crate) struct Locator<'a> {
    pub(crate) file: &'a str,
    pub(crate) text: &'a str,
}

impl Locator<'_> {
    pub(crate) fn error(
        &self,
        offset: usize,
        kind: ErrorKind,
        message: String,
        hint: impl Into<String>,
    ) -> PolicyError {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        PolicyError {
            file: self.file.to_owned(),
            line,
            column,
            kind,
            message,
            hint: hint.into(),
        }
    }
}
