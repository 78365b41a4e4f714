//! Configuration errors that point at the exact spot in the file.
//!
//! Every problem is reported as `FILE:LINE:COLUMN: TOML.PATH: what was wrong,
//! what was expected`, one per line, so an operator can jump straight to it.
//! All validation problems are collected, not just the first.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, or 0 when the problem concerns the whole file.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// TOML path of the offending key, e.g. `jobs[1].schedule`; empty for
    /// syntax errors.
    pub path: String,
    /// What was wrong and what was expected.
    pub message: String,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No configuration file was found in any of the searched places.
    #[error("no configuration file found; looked in: {}", .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotFound {
        /// The places searched, in order.
        searched: Vec<PathBuf>,
    },

    /// The file exists (or was named) but could not be read.
    #[error("cannot read configuration file {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// The file was read but is not a valid configuration.
    #[error("{}", Invalid { file, problems })]
    Invalid {
        /// The file.
        file: PathBuf,
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
}

struct Invalid<'a> {
    file: &'a Path,
    problems: &'a [Problem],
}

impl fmt::Display for Invalid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.file.display();
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            match (p.line, p.path.is_empty()) {
                (0, true) => write!(f, "{name}: {}", p.message)?,
                (0, false) => write!(f, "{name}: {}: {}", p.path, p.message)?,
                (_, true) => write!(f, "{name}:{}:{}: {}", p.line, p.column, p.message)?,
                (_, false) => write!(f, "{name}:{}:{}: {}: {}", p.line, p.column, p.path, p.message)?,
            }
        }
        Ok(())
    }
}

impl ConfigError {
    /// The problems, when the file was invalid.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

/// Turns byte offsets into 1-based line and column numbers.
pub(crate) struct LineIndex<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, line_starts }
    }

    /// Line and column (both 1-based, column in characters) of `offset`.
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self.line_starts[line - 1];
        let column = self.text.get(start..offset).map_or(1, |s| s.chars().count() + 1);
        (line, column)
    }

    pub(crate) fn problem(
        &self,
        span: Option<Range<usize>>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Problem {
        let (line, column) = span.map_or((0, 0), |s| self.position(s.start));
        Problem {
            line,
            column,
            path: path.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let idx = LineIndex::new("a = 1\nnäme = 'x'\n");
        assert_eq!(idx.position(0), (1, 1));
        assert_eq!(idx.position(4), (1, 5));
        assert_eq!(idx.position(6), (2, 1));
        // "näme" has a two-byte 'ä': byte 12 is character 6 of line 2.
        assert_eq!(idx.position(12), (2, 6));
    }

    #[test]
    fn display_is_file_line_column_path_message() {
        let e = ConfigError::Invalid {
            file: "config.toml".into(),
            problems: vec![
                Problem {
                    line: 14,
                    column: 12,
                    path: "jobs[1].schedule".into(),
                    message: "bad".into(),
                },
                Problem {
                    line: 0,
                    column: 0,
                    path: String::new(),
                    message: "whole file".into(),
                },
            ],
        };
        assert_eq!(
            e.to_string(),
            "config.toml:14:12: jobs[1].schedule: bad\nconfig.toml: whole file"
        );
    }
}
