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

/// serde's messages, said for a person editing a TOML file: what is
/// expected in words (`a whole number`, not `i64`), keys rather than
/// fields, and for a misspelt key the one it probably is instead of every
/// key of the section.
pub(crate) fn in_words(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let (name, known) = split_known(rest);
        return match closest(&name, &known) {
            Some(best) => format!("unknown key `{name}`: did you mean `{best}`?"),
            None if known.is_empty() => format!("unknown key `{name}`: this section has no keys"),
            None => format!(
                "unknown key `{name}` (the keys here: {})",
                known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let (name, known) = split_known(rest);
        let list = known
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        return match closest(&name, &known) {
            Some(best) => format!("unknown value `{name}`: did you mean `{best}`? (expected one of {list})"),
            None => format!("unknown value `{name}`: expected one of {list}"),
        };
    }
    if let Some(field) = message.strip_prefix("missing field ") {
        return format!("missing key {field}");
    }
    for (prefix, is_type) in [("invalid type: ", true), ("invalid value: ", false)] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((found, expected)) = rest.rsplit_once(", expected ")
        {
            let found = found_in_words(found);
            let expected = expected_in_words(expected);
            return if is_type {
                format!("expected {expected}, found {found}")
            } else {
                format!("{found} is not allowed here: expected {expected}")
            };
        }
    }
    message.to_string()
}

/// `` `name`, expected one of `a`, `b` `` (or `` expected `a` or `b` ``,
/// or `there are no fields`) → the name and the known ones.
fn split_known(rest: &str) -> (String, Vec<String>) {
    let ticked = |s: &str| -> Vec<String> {
        s.split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, t)| t.to_string())
            .collect()
    };
    match rest.split_once(", ") {
        Some((name, known)) => (ticked(name).into_iter().next().unwrap_or_default(), ticked(known)),
        None => (ticked(rest).into_iter().next().unwrap_or_default(), Vec::new()),
    }
}

/// The known name closest to `name`, if one is close enough to be a typo
/// of it (a quarter of its letters wrong at most).
fn closest(name: &str, known: &[String]) -> Option<String> {
    let limit = (name.chars().count() / 4).max(1);
    known
        .iter()
        .map(|k| (edit_distance(&name.to_lowercase(), &k.to_lowercase()), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.clone())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

fn expected_in_words(expected: &str) -> String {
    match expected {
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number".into(),
        "u8" => "a whole number from 0 to 255".into(),
        "u16" => "a whole number from 0 to 65535".into(),
        "u32" => "a whole number from 0 to 4294967295".into(),
        "u64" | "u128" | "usize" => "a whole number, 0 or more".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" => "true or false".into(),
        "a sequence" => "an array (`[…]`)".into(),
        "a map" => "a table".into(),
        e if e.starts_with("struct ") => "a table".into(),
        e => e.to_string(),
    }
}

fn found_in_words(found: &str) -> String {
    let value = |prefix: &str| {
        found
            .strip_prefix(prefix)
            .map(|v| v.trim_matches('`').to_string())
    };
    if let Some(s) = found.strip_prefix("string ") {
        return format!("the string {s}");
    }
    if let Some(v) = value("integer ").or_else(|| value("floating point ")) {
        return v;
    }
    if let Some(v) = value("boolean ") {
        return v;
    }
    match found {
        "sequence" => "an array".into(),
        "map" => "a table".into(),
        other => other.to_string(),
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
    fn serde_messages_are_said_in_words() {
        assert_eq!(
            in_words("invalid type: string \"high\", expected i64"),
            "expected a whole number, found the string \"high\""
        );
        assert_eq!(
            in_words("invalid value: integer `-1`, expected u32"),
            "-1 is not allowed here: expected a whole number from 0 to 4294967295"
        );
        assert_eq!(
            in_words("invalid type: sequence, expected a boolean"),
            "expected true or false, found an array"
        );
        assert_eq!(
            in_words("unknown field `schedul`, expected one of `name`, `paths`, `schedule`, `watch`"),
            "unknown key `schedul`: did you mean `schedule`?"
        );
        assert_eq!(
            in_words("unknown field `xyzzy`, expected `name` or `paths`"),
            "unknown key `xyzzy` (the keys here: `name`, `paths`)"
        );
        assert_eq!(
            in_words("unknown variant `kmss`, expected `local` or `kms`"),
            "unknown value `kmss`: did you mean `kms`? (expected one of `local`, `kms`)"
        );
        assert_eq!(in_words("missing field `paths`"), "missing key `paths`");
        assert_eq!(edit_distance("versionin", "versioning"), 1);
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
