//! Diagnostics: what the frontend reports, and their rendering with
//! codespan-reporting (file:line:column, the source line, a caret, what was
//! expected, and a hint where a likely fix is known).

use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label, Severity as CsSeverity};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term;
use tdl_ir::Span;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One message about the source.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    /// The main place, with a short label ("expected `)`").
    pub primary: Option<(Span, String)>,
    /// Other places that explain the error ("`T` first bound here").
    pub secondary: Vec<(Span, String)>,
    /// Trailing notes; hints start with `hint:`.
    pub notes: Vec<String>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            primary: None,
            secondary: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn warning(message: impl Into<String>) -> Diagnostic {
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error(message) }
    }

    pub fn at(mut self, span: Span, label: impl Into<String>) -> Diagnostic {
        self.primary = Some((span, label.into()));
        self
    }

    pub fn with(mut self, span: Span, label: impl Into<String>) -> Diagnostic {
        self.secondary.push((span, label.into()));
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Diagnostic {
        self.notes.push(format!("hint: {}", hint.into()));
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    fn to_codespan(&self, src_len: usize) -> CsDiagnostic<()> {
        let sev = match self.severity {
            Severity::Error => CsSeverity::Error,
            Severity::Warning => CsSeverity::Warning,
        };
        let clamp = |s: Span| {
            let start = s.start.min(src_len);
            start..s.end.clamp(start, src_len)
        };
        let mut labels = Vec::new();
        if let Some((s, l)) = &self.primary {
            labels.push(Label::primary((), clamp(*s)).with_message(l));
        }
        for (s, l) in &self.secondary {
            labels.push(Label::secondary((), clamp(*s)).with_message(l));
        }
        CsDiagnostic::new(sev).with_message(&self.message).with_labels(labels).with_notes(self.notes.clone())
    }
}

/// The `file:line:column` of a byte offset (1-based line and column, the
/// column counted in characters).
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = source[line_start..offset].chars().count() + 1;
    (line, col)
}

/// The source as shown in diagnostics: control characters other than tab
/// and line breaks (NUL above all) become spaces, one byte for one byte, so
/// spans still line up and the caret under them is visible.
fn shown(source: &str) -> String {
    source
        .chars()
        .map(|c| if c.is_control() && !matches!(c, '\t' | '\n' | '\r') && c.len_utf8() == 1 { ' ' } else { c })
        .collect()
}

/// Renders diagnostics as text, without colour (what snapshots hold).
pub fn render(diags: &[Diagnostic], file_name: &str, source: &str) -> String {
    let source = &shown(source);
    let file = SimpleFile::new(file_name, source.as_str());
    let config = term::Config::default();
    let mut out = String::new();
    for d in diags {
        match term::emit_into_string(&config, &file, &d.to_codespan(source.len())) {
            Ok(s) => out.push_str(&s),
            // Only reachable if a span is out of range, which to_codespan
            // prevents; fall back to a plain line rather than losing it.
            Err(_) => out.push_str(&format!("{file_name}: {}\n", d.message)),
        }
    }
    out
}

/// Renders diagnostics to stderr, in colour when stderr is a terminal.
pub fn emit_stderr(diags: &[Diagnostic], file_name: &str, source: &str) {
    use codespan_reporting::term::termcolor::{ColorChoice, StandardStream};
    use std::io::IsTerminal;
    let choice = if std::io::stderr().is_terminal() { ColorChoice::Auto } else { ColorChoice::Never };
    let mut stream = StandardStream::stderr(choice);
    let source = &shown(source);
    let file = SimpleFile::new(file_name, source.as_str());
    let config = term::Config::default();
    for d in diags {
        if term::emit_to_write_style(&mut stream, &config, &file, &d.to_codespan(source.len())).is_err() {
            eprintln!("{file_name}: {}", d.message);
        }
    }
}
