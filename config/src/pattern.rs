//! The one pattern language of vaultline, documented in `docs/patterns.md`:
//! a job's `exclude` in the configuration, and `restore`'s `--include`,
//! `--exclude` and PATH arguments and `find`'s patterns on the command line
//! all mean the same thing by the same text.
//!
//! - A pattern **without `/`** matches a name anywhere: the last component
//!   of a path (`*.swp`, `node_modules`, `ssh_config`).
//! - A pattern **with a `/`** is anchored at the root and matches the whole
//!   path (`/etc/ssh/**`, `/home/*/.cache`). The leading `/` may be left out
//!   (`etc/ssh` is `/etc/ssh`: paths in a snapshot are the paths that were
//!   backed up); a trailing `/` is ignored.
//! - `*` and `?` stay within one component, `**` spans any number of them
//!   (`/var/**/*.log`); `[abc]`, `[!a-z]` and `{a,b}` as in a shell; `\`
//!   escapes the next character.
//! - What matches a directory also covers everything below it:
//!   [`Patterns::matches_within`] (an excluded directory is not entered; an
//!   included one is restored whole).
//!
//! Paths are bytes (Linux names need not be UTF-8), absolute (`/etc/hosts`)
//! or as stored in a snapshot (`etc/hosts`): the two are the same path.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};

/// A pattern that does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pattern {pattern:?}: {reason}")]
pub struct PatternError {
    /// The pattern as written.
    pub pattern: String,
    /// Why, in words.
    pub reason: String,
}

/// A compiled list of patterns.
#[derive(Debug, Clone)]
pub struct Patterns {
    written: Vec<String>,
    /// Unanchored patterns, matched against a path's last component.
    names: GlobSet,
    name_index: Vec<usize>,
    /// Anchored patterns, matched against the whole path (no leading `/`).
    paths: GlobSet,
    path_index: Vec<usize>,
}

impl Default for Patterns {
    fn default() -> Self {
        Patterns::new::<&str>(&[]).unwrap_or_else(|_| unreachable!("no pattern, no error"))
    }
}

/// How a pattern is read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Anchor {
    /// With a `/` anchored, without one a name anywhere.
    ByShape,
    /// Always anchored: a path from the root (restore's PATH arguments).
    Always,
}

impl Patterns {
    /// Compiles `patterns` (each as described in the module documentation).
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Patterns, PatternError> {
        Patterns::build(patterns, Anchor::ByShape)
    }

    /// Compiles `paths` as patterns anchored at the root whether or not they
    /// hold a `/` (`etc` is `/etc`, not any `etc`): restore's PATH arguments.
    pub fn anchored<S: AsRef<str>>(paths: &[S]) -> Result<Patterns, PatternError> {
        Patterns::build(paths, Anchor::Always)
    }

    fn build<S: AsRef<str>>(patterns: &[S], anchor: Anchor) -> Result<Patterns, PatternError> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        let (mut name_index, mut path_index) = (Vec::new(), Vec::new());
        let mut written = Vec::new();
        for (i, p) in patterns.iter().enumerate() {
            let text = p.as_ref();
            let error = |reason: String| PatternError {
                pattern: text.to_string(),
                reason,
            };
            let body = text.trim_end_matches('/');
            let anchored = anchor == Anchor::Always || body.contains('/');
            let body = body.trim_start_matches('/');
            if body.is_empty() {
                return Err(error(if text.is_empty() {
                    "it is empty".into()
                } else {
                    "it names the root, which holds everything".into()
                }));
            }
            let glob = GlobBuilder::new(body)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| error(e.kind().to_string()))?;
            if anchored {
                paths.add(glob);
                path_index.push(i);
            } else {
                names.add(glob);
                name_index.push(i);
            }
            written.push(text.to_string());
        }
        let compile = |b: GlobSetBuilder| {
            b.build().map_err(|e| PatternError {
                pattern: written.join(", "),
                reason: e.to_string(),
            })
        };
        Ok(Patterns {
            names: compile(names)?,
            paths: compile(paths)?,
            name_index,
            path_index,
            written: written.clone(),
        })
    }

    /// The patterns as written.
    pub fn written(&self) -> &[String] {
        &self.written
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
    }

    /// The first pattern (as written) that matches `path` itself.
    pub fn matching(&self, path: &[u8]) -> Option<&str> {
        if self.is_empty() {
            return None;
        }
        let relative = path.strip_prefix(b"/").unwrap_or(path);
        let name = relative.rsplit(|&b| b == b'/').next().unwrap_or(relative);
        let by_name = if name.is_empty() {
            Vec::new()
        } else {
            self.names.matches_candidate(&candidate(name))
        }
        .into_iter()
        .map(|k| self.name_index[k]);
        let by_path = self
            .paths
            .matches_candidate(&candidate(relative))
            .into_iter()
            .map(|k| self.path_index[k]);
        by_name.chain(by_path).min().map(|i| self.written[i].as_str())
    }

    /// True when a pattern matches `path` itself.
    pub fn matches(&self, path: &[u8]) -> bool {
        self.matching(path).is_some()
    }

    /// The first pattern that matches `path` or one of the directories it
    /// is in, with the path it matched.
    pub fn matching_within<'p>(&self, path: &'p [u8]) -> Option<(&str, &'p [u8])> {
        if self.is_empty() {
            return None;
        }
        let mut candidate = path.strip_suffix(b"/").unwrap_or(path);
        loop {
            if let Some(p) = self.matching(candidate) {
                return Some((p, candidate));
            }
            match candidate.iter().rposition(|&b| b == b'/') {
                Some(0) | None => return None,
                Some(i) => candidate = &candidate[..i],
            }
        }
    }

    /// True when a pattern matches `path` or one of the directories it is in.
    pub fn matches_within(&self, path: &[u8]) -> bool {
        self.matching_within(path).is_some()
    }
}

fn candidate(bytes: &[u8]) -> Candidate<'_> {
    Candidate::new(Path::new(OsStr::from_bytes(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(p: &[&str]) -> Patterns {
        Patterns::new(p).unwrap()
    }

    #[test]
    fn a_pattern_without_a_slash_is_a_name_anywhere() {
        let s = set(&["*.conf", "ssh_config"]);
        for yes in [
            "etc/a.conf",
            "/etc/a.conf",
            "a.conf",
            "etc/ssh/ssh_config",
            "/srv/x/y/z.conf",
        ] {
            assert!(s.matches(yes.as_bytes()), "{yes}");
        }
        for no in [
            "etc/a.conf.bak",
            "etc/ssh_config/../x",
            "etc/conf",
            "etc/ssh/ssh_config.d",
        ] {
            assert!(!s.matches(no.as_bytes()), "{no}");
        }
        assert_eq!(s.matching(b"/etc/ssh/ssh_config"), Some("ssh_config"));
    }

    #[test]
    fn a_pattern_with_a_slash_is_anchored_with_or_without_its_leading_slash() {
        let s = set(&["etc/ssh/**", "/home/*/.cache/", "/var/**/*.log"]);
        assert!(s.matches(b"etc/ssh/sshd_config"));
        assert!(s.matches(b"/etc/ssh/a/b"));
        assert!(!s.matches(b"srv/etc/ssh/x"), "anchored at the root");
        assert!(s.matches(b"home/alice/.cache"));
        assert!(!s.matches(b"home/alice/x/.cache"), "* stays within one component");
        assert!(s.matches(b"var/log/syslog.log"));
        assert!(s.matches(b"/var/a/b/c/d.log"));
        assert!(s.matches(b"var/d.log"), "** spans zero components too");
    }

    #[test]
    fn what_matches_a_directory_covers_everything_below_it() {
        let s = set(&["node_modules", "/etc/ssl"]);
        assert_eq!(
            s.matching_within(b"srv/app/node_modules/x/y.js"),
            Some(("node_modules", &b"srv/app/node_modules"[..]))
        );
        assert!(s.matches_within(b"/etc/ssl/private/key.pem"));
        assert!(!s.matches_within(b"/etc/ssl-old/x"));
        assert!(!s.matches(b"etc/ssl/private"), "itself only, without _within");
        let paths = Patterns::anchored(&["etc", "/etc/hosts"]).unwrap();
        assert!(paths.matches_within(b"etc/x"));
        assert!(!paths.matches_within(b"srv/etc/x"), "a PATH is always anchored");
    }

    #[test]
    fn names_need_not_be_utf8_and_bad_patterns_say_why() {
        let s = set(&["*.bin"]);
        assert!(s.matches(b"data/\xff\xfe.bin"));
        assert_eq!(
            Patterns::new(&["a[b"]).unwrap_err().to_string(),
            "invalid pattern \"a[b\": unclosed character class; missing ']'"
        );
        assert!(Patterns::new(&["/"]).is_err());
        assert!(Patterns::new(&[""]).is_err());
        assert!(set(&[]).matching(b"x").is_none());
    }
}
