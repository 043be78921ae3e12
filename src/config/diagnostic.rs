//! Config errors as the user sees them: every problem, with file, line and key.

use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Why a config was refused: every problem found, each with its position.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file was read and found wrong.
    #[error("{}", render(path, diagnostics))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem, in file order.
        diagnostics: Vec<Diagnostic>,
    },
}

fn render(path: &Path, diagnostics: &[Diagnostic]) -> String {
    let lines: Vec<String> = diagnostics
        .iter()
        .map(|d| format!("{}:{d}", d.file.as_deref().unwrap_or(path).display()))
        .collect();
    lines.join("\n")
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The included file it is in; `None` for the config file itself.
    pub file: Option<PathBuf>,
    /// 1-based line of the offending value.
    pub line: usize,
    /// What the value belongs to, e.g. `device "meter1", metric "voltage/L1"`; may be empty.
    pub context: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.context.is_empty() {
            write!(f, "{}: {}", self.line, self.message)
        } else {
            write!(f, "{}: {}: {}", self.line, self.context, self.message)
        }
    }
}
