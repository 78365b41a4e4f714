//! The agent's own audit trail: who did what, when and how, one JSON line
//! per action, hash-chained so an edited, removed, inserted or reordered
//! line is detectable.
//!
//! Lines go to `STATE/audit.jsonl` (appended under an exclusive `flock`, so
//! concurrent runs interleave whole lines and keep the chain). Each line:
//!
//! ```json
//! {"seq":7,"trail":"3f9c0a1b2c3d4e5f","time":"2026-11-22T10:30:00Z","who":"arn:aws:iam::1:role/backup",
//!  "what":"snapshot-committed","details":{…},
//!  "how":{"command":"backup now","host":"web1","version":"0.1.0","config_sha256":"…"},
//!  "prev":"<SHA-256 hex of the previous line's bytes>"}
//! ```
//!
//! `seq` counts from 1 and `prev` of line 1 is 64 zeros; `trail` is a random
//! id the trail gets with its first line, so the trails of several state
//! directories on one host never mix. `verify` walks the file and names the
//! first line that breaks the chain. Before every command that recorded
//! lines exits, the lines not shipped yet go to the repository as one
//! segment, `PREFIX/HOST/audit/TRAIL/FIRST-LAST.jsonl`
//! (STANDARD, untagged, written with If-None-Match so never overwritten,
//! under the jobs' Object Lock retention when they have one).
//!
//! What the chain proves, and what it does not: the chain alone shows that
//! a file is internally consistent, nothing more; anyone who can write the
//! file can rewrite it and recompute every hash. What makes it evidence is
//! the shipped copy: [`ShippedTrail`] reads every segment of a host, and
//! [`verify_against`] names the first local line that differs from what was
//! shipped, and lines that were shipped but are gone locally. Lines written
//! since the last shipment (at most those of the command that is running,
//! or of commands whose shipment failed) are only as trustworthy as the
//! host. A host that is compromised can still write lines that lie; it
//! cannot take back lines already shipped.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::IntegrityError;
use crate::repo::Repo;
use crate::repo::store::{ObjectClass, Retention};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How the agent was invoked, recorded on every line.
#[derive(Debug, Clone, Serialize)]
pub struct How {
    /// The subcommand, e.g. `backup now`.
    pub command: String,
    /// The configured host name.
    pub host: String,
    /// vaultline's version.
    pub version: &'static str,
    /// SHA-256 of the configuration file's bytes.
    pub config_sha256: String,
}

/// An open audit trail for this process.
pub struct AuditLog {
    path: PathBuf,
    who: String,
    how: How,
}

#[derive(Serialize)]
struct Record<'a> {
    seq: u64,
    trail: &'a str,
    time: String,
    who: &'a str,
    what: &'a str,
    details: &'a Value,
    how: &'a How,
    prev: &'a str,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The `trail` field of a line.
fn trail_of(line: &str) -> Option<String> {
    serde_json::from_str::<Value>(line)
        .ok()?
        .get("trail")?
        .as_str()
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
}

/// The trail id of the first line of `file`, if it has one.
fn first_trail(file: &mut File) -> Result<Option<String>> {
    file.seek(SeekFrom::Start(0))?;
    let mut first = String::new();
    BufReader::new(Read::by_ref(file).take(1 << 20)).read_line(&mut first)?;
    Ok(trail_of(first.trim_end()))
}

/// The last line of `file` (without its newline), if any.
fn last_line(file: &mut File) -> Result<Option<String>> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(None);
    }
    // Lines are small; read a generous tail and take the last full line.
    let mut window = 64 * 1024u64;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail)?;
        let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
        match body.iter().rposition(|&b| b == b'\n') {
            Some(i) => return Ok(Some(String::from_utf8_lossy(&body[i + 1..]).into_owned())),
            None if start == 0 => return Ok(Some(String::from_utf8_lossy(body).into_owned())),
            None => window *= 4,
        }
    }
}

impl AuditLog {
    /// The trail in `state_dir`, for actions by `who`, invoked as `how`.
    pub fn new(state_dir: &Path, who: String, how: How) -> Self {
        AuditLog {
            path: state_dir.join("audit.jsonl"),
            who,
            how,
        }
    }

    /// The local file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one action. A failure to record is an error: an action that
    /// cannot be audited is not done silently.
    pub fn record(&self, what: &str, details: Value) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            crate::state::private_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let mut file = crate::state::open_append(&self.path, crate::state::PRIVATE)
            .with_context(|| format!("cannot open audit trail {}", self.path.display()))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .with_context(|| format!("cannot lock audit trail {}", self.path.display()))?;
        let last = last_line(&mut file)?;
        // The trail's id: from its last line, else its first (a damaged
        // last line), else a new one (a new trail).
        let trail = match last.as_deref().and_then(trail_of) {
            Some(t) => t,
            None => match first_trail(&mut file)? {
                Some(t) => t,
                None => {
                    let mut id = [0u8; 8];
                    getrandom::fill(&mut id).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
                    hex::encode(id)
                }
            },
        };
        let (seq, prev) = match last {
            Some(line) => {
                let seq = serde_json::from_str::<Value>(&line)
                    .ok()
                    .and_then(|v| v["seq"].as_u64());
                let seq = match seq {
                    Some(seq) => seq + 1,
                    None => {
                        // A torn or damaged last line (a crash, a full disk):
                        // keep recording, chained to it, so backups go on;
                        // `audit-log verify` still names it.
                        tracing::warn!(
                            "the last line of audit trail {} is damaged; run `vaultline audit-log verify`",
                            self.path.display()
                        );
                        file.seek(SeekFrom::Start(0))?;
                        BufReader::new(&file).lines().count() as u64 + 1
                    }
                };
                (seq, sha256_hex(line.as_bytes()))
            }
            None => (1, GENESIS.to_string()),
        };
        let record = Record {
            seq,
            trail: &trail,
            time: jiff::Timestamp::now().round(jiff::Unit::Second)?.to_string(),
            who: &self.who,
            what,
            details: &details,
            how: &self.how,
            prev: &prev,
        };
        let mut line = serde_json::to_string(&record)?;
        line.push('\n');
        file.write_all(line.as_bytes())
            .and_then(|()| file.sync_data())
            .with_context(|| format!("cannot append to audit trail {}", self.path.display()))?;
        Ok(())
    }

    /// Uploads every line not shipped yet (including those of runs that
    /// were refused, or could not ship) as one segment under
    /// `PREFIX/HOST/audit/`, and remembers how far it got in
    /// `STATE/audit.shipped`. Returns the segment's name, if there was
    /// anything to ship.
    pub fn ship(&self, repo: &Repo, host: &str, retention: Option<&Retention>) -> Result<Option<String>> {
        // Under the trail's lock, so two processes do not ship the same lines.
        let lock = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", self.path.display())),
        };
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .with_context(|| format!("cannot lock audit trail {}", self.path.display()))?;
        let marker = self.path.with_file_name("audit.shipped");
        let shipped: u64 = std::fs::read_to_string(&marker)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", self.path.display())),
        };
        let mut body = String::new();
        let (mut first, mut last, mut trail) = (None, 0, None);
        for line in BufReader::new(file).lines() {
            let line = line?;
            let v = serde_json::from_str::<Value>(&line).ok();
            let seq = v.as_ref().and_then(|v| v["seq"].as_u64()).unwrap_or(0);
            if trail.is_none() {
                trail = v.as_ref().and_then(|v| v["trail"].as_str().map(str::to_string));
            }
            if seq > shipped {
                first.get_or_insert(seq);
                last = seq;
                body.push_str(&line);
                body.push('\n');
            }
        }
        let Some(first) = first else {
            return Ok(None);
        };
        let trail = trail.unwrap_or_else(|| "unnamed".into());
        let name = repo.audit_segment_name(host, &trail, first, last);
        (|| -> std::io::Result<()> {
            let mut object = repo.store().create(&name, ObjectClass::Control, retention)?;
            object.write_all(body.as_bytes())?;
            object.commit()?;
            Ok(())
        })()
        .with_context(|| format!("shipping audit segment {name}"))?;
        crate::state::write_atomic(&marker, format!("{last}\n").as_bytes(), crate::state::PRIVATE)
            .with_context(|| format!("cannot update {}", marker.display()))?;
        Ok(Some(name))
    }
}

/// What `verify` found.
#[derive(Debug, Serialize)]
pub struct Verified {
    /// The file checked.
    pub file: String,
    /// Lines in it.
    pub lines: u64,
    /// Hash of the last line (compare with a shipped copy).
    pub head: String,
    /// Lines found shipped to the repository and compared (`None`: not
    /// compared, the chain alone was checked).
    pub shipped: Option<u64>,
}

/// Checks the chain of `path`; the first broken line is an integrity error.
/// A trail shorter than what was already shipped (`audit.shipped` beside
/// it) lost lines at its end.
pub fn verify(path: &Path) -> Result<Verified> {
    let verified = verify_chain(path)?;
    let marker = path.with_file_name("audit.shipped");
    if let Some(shipped) = std::fs::read_to_string(&marker)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        && shipped > verified.lines
    {
        return Err(IntegrityError(format!(
            "audit trail {}: it ends at line {} but lines up to {shipped} were already shipped (see {}): \
             lines were removed from its end",
            path.display(),
            verified.lines,
            marker.display()
        ))
        .into());
    }
    Ok(verified)
}

fn verify_chain(path: &Path) -> Result<Verified> {
    let file = File::open(path).with_context(|| format!("cannot open audit trail {}", path.display()))?;
    let mut prev_hash = GENESIS.to_string();
    let mut n = 0u64;
    let bad = |n: u64, why: String| -> anyhow::Error {
        IntegrityError(format!("audit trail {}: line {n}: {why}", path.display())).into()
    };
    for line in BufReader::new(file).lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        n += 1;
        let v: Value = serde_json::from_str(&line).map_err(|e| bad(n, format!("not a JSON record ({e})")))?;
        let seq = v["seq"].as_u64().ok_or_else(|| bad(n, "no seq".into()))?;
        if seq != n {
            return Err(bad(
                n,
                format!(
                    "sequence number {seq} where {n} belongs: {}",
                    if seq > n {
                        "a line before it was removed, or lines were reordered"
                    } else {
                        "a line was inserted or duplicated, or lines were reordered"
                    }
                ),
            ));
        }
        let prev = v["prev"].as_str().ok_or_else(|| bad(n, "no prev hash".into()))?;
        if prev != prev_hash {
            return Err(bad(
                n,
                if n == 1 {
                    "the first line does not start the chain".into()
                } else {
                    format!(
                        "its prev hash does not match line {}: line {} was altered",
                        n - 1,
                        n - 1
                    )
                },
            ));
        }
        prev_hash = sha256_hex(line.as_bytes());
    }
    Ok(Verified {
        file: path.display().to_string(),
        lines: n,
        head: prev_hash,
        shipped: None,
    })
}

/// Largest audit segment read back: segments hold the lines of one
/// command (or of the commands since a failed shipment), kilobytes; a
/// bigger object under `audit/` is not one vaultline wrote.
const MAX_SEGMENT: u64 = 64 << 20;

/// What a host shipped: the hash of every line by sequence number, and
/// which segment it came from.
#[derive(Debug, Default)]
pub struct ShippedTrail {
    lines: std::collections::BTreeMap<u64, ShippedLine>,
    /// Segments read.
    pub segments: u64,
}

/// One shipped line, as far as the chain is concerned.
#[derive(Debug)]
struct ShippedLine {
    /// SHA-256 of its bytes.
    hash: String,
    /// The segment it was first read from.
    segment: String,
    /// Its `prev` field.
    prev: Option<String>,
    /// Its `trail` field.
    trail: Option<String>,
}

/// What the shipped segments of one trail show on their own.
#[derive(Debug, Clone, Serialize)]
pub struct ShippedChain {
    /// Lines shipped (1 to this, without a gap).
    pub lines: u64,
    /// Segments they came in.
    pub segments: u64,
    /// Hash of the last shipped line.
    pub head: String,
}

impl ShippedTrail {
    /// Reads every segment `host` shipped to `repo`. Two segments that
    /// disagree about a line are an integrity error: segments are never
    /// overwritten, so one of them was added to cover a rewrite.
    pub fn fetch(repo: &Repo, host: &str, trail: &str) -> Result<ShippedTrail> {
        let prefix = repo.audit_segment_name(host, trail, 0, 0);
        let prefix = &prefix[..prefix.len() - "000000000000-000000000000.jsonl".len()];
        let mut shipped = ShippedTrail::default();
        for o in repo
            .store()
            .list(prefix)
            .with_context(|| format!("cannot list the shipped audit trail under {prefix}"))?
        {
            if !o.name.ends_with(".jsonl") {
                continue;
            }
            if o.size > MAX_SEGMENT {
                return Err(IntegrityError(format!(
                    "audit segment {} is {} bytes: not a segment vaultline wrote (at most {MAX_SEGMENT})",
                    o.name, o.size
                ))
                .into());
            }
            let mut body = Vec::new();
            repo.store()
                .open(&o.name)
                .and_then(|r| r.take(MAX_SEGMENT + 1).read_to_end(&mut body))
                .with_context(|| format!("cannot read audit segment {}", o.name))?;
            shipped.segments += 1;
            for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let value = serde_json::from_slice::<Value>(line).ok();
                let field = |name: &str| value.as_ref().and_then(|v| v[name].as_str()).map(str::to_string);
                let seq = value.as_ref().and_then(|v| v["seq"].as_u64()).ok_or_else(|| {
                    IntegrityError(format!(
                        "audit segment {}: a line without a sequence number",
                        o.name
                    ))
                })?;
                let hash = sha256_hex(line);
                match shipped.lines.get(&seq) {
                    Some(other) if other.hash != hash => {
                        return Err(IntegrityError(format!(
                            "audit segments {} and {} disagree about line {seq}: a line was rewritten \
                             and shipped again",
                            other.segment, o.name
                        ))
                        .into());
                    }
                    Some(_) => {}
                    None => {
                        shipped.lines.insert(
                            seq,
                            ShippedLine {
                                hash,
                                segment: o.name.clone(),
                                prev: field("prev"),
                                trail: field("trail"),
                            },
                        );
                    }
                }
            }
        }
        Ok(shipped)
    }

    /// The highest line number shipped.
    pub fn last(&self) -> u64 {
        self.lines.keys().next_back().copied().unwrap_or(0)
    }

    /// Checks the shipped lines of trail `trail` as a chain on their own,
    /// with no local copy (an auditor's view of every host): they run from
    /// line 1 without a gap, line 1 starts the chain, each later line's
    /// `prev` is the hash of the line before it as shipped, and every line
    /// names the trail it was filed under. A gap is a segment that went
    /// missing (segments are never deleted by vaultline); a broken link is
    /// a line shipped after the line before it was rewritten locally. What
    /// this cannot see without the host's trail is a last segment that was
    /// removed (Object Lock on the jobs' objects prevents that).
    pub fn verify_chain(&self, trail: &str) -> Result<ShippedChain> {
        let mut expected_prev = GENESIS.to_string();
        let mut next = 1u64;
        for (&seq, line) in &self.lines {
            if seq != next {
                let missing = if seq - next == 1 {
                    format!("line {next} is")
                } else {
                    format!("lines {next}-{} are", seq - 1)
                };
                return Err(IntegrityError(format!(
                    "audit trail {trail}: {missing} missing from the shipped segments (the next line shipped \
                     is {seq}, in {}): a segment was removed",
                    line.segment
                ))
                .into());
            }
            if line.trail.as_deref() != Some(trail) {
                return Err(IntegrityError(format!(
                    "audit trail {trail}: line {seq} in {} belongs to trail {}: a segment was filed under \
                     another trail",
                    line.segment,
                    line.trail.as_deref().unwrap_or("(none)")
                ))
                .into());
            }
            if line.prev.as_deref() != Some(expected_prev.as_str()) {
                return Err(IntegrityError(if seq == 1 {
                    format!(
                        "audit trail {trail}: line 1 in {} does not start the chain",
                        line.segment
                    )
                } else {
                    format!(
                        "audit trail {trail}: line {seq} in {} does not follow line {} as shipped: line {} \
                         was altered before line {seq} was written",
                        line.segment,
                        seq - 1,
                        seq - 1
                    )
                })
                .into());
            }
            expected_prev.clone_from(&line.hash);
            next = seq + 1;
        }
        Ok(ShippedChain {
            lines: self.last(),
            segments: self.segments,
            head: expected_prev,
        })
    }
}

/// The trails `host` shipped segments of to `repo`: trail id → segments.
pub fn shipped_trails(repo: &Repo, host: &str) -> Result<std::collections::BTreeMap<String, u64>> {
    let any = repo.audit_segment_name(host, "x", 0, 0);
    let prefix = &any[..any.len() - "x/000000000000-000000000000.jsonl".len()];
    let mut trails = std::collections::BTreeMap::new();
    for o in repo
        .store()
        .list(prefix)
        .with_context(|| format!("cannot list the shipped audit trails under {prefix}"))?
    {
        if let Some((trail, _)) = o.name[prefix.len()..].split_once('/')
            && o.name.ends_with(".jsonl")
        {
            *trails.entry(trail.to_string()).or_insert(0) += 1;
        }
    }
    Ok(trails)
}

/// The host (its `how`) and the trail id named by the first line of the
/// trail at `path`.
pub fn trail_identity(path: &Path) -> Result<(Option<String>, Option<String>)> {
    let file = File::open(path).with_context(|| format!("cannot open audit trail {}", path.display()))?;
    let Some(first) = BufReader::new(file.take(1 << 20)).lines().next() else {
        return Ok((None, None));
    };
    let first = first.with_context(|| format!("reading {}", path.display()))?;
    let host = serde_json::from_str::<Value>(&first)
        .ok()
        .and_then(|v| v["how"]["host"].as_str().map(str::to_string));
    Ok((host, trail_of(&first)))
}

/// Checks the chain of `path`, then every line against what was shipped:
/// a line that differs from its shipped copy, or lines that were shipped
/// but are missing from the file, are integrity errors naming them.
pub fn verify_against(path: &Path, shipped: &ShippedTrail) -> Result<Verified> {
    let verified = verify_chain(path)?;
    let file = File::open(path).with_context(|| format!("cannot open audit trail {}", path.display()))?;
    let mut n = 0u64;
    for line in BufReader::new(file).lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        n += 1;
        if let Some(shipped_line) = shipped.lines.get(&n)
            && shipped_line.hash != sha256_hex(line.as_bytes())
        {
            return Err(IntegrityError(format!(
                "audit trail {}: line {n} differs from the copy shipped in {}: it was altered after it was \
                 shipped",
                path.display(),
                shipped_line.segment
            ))
            .into());
        }
    }
    if shipped.last() > n {
        return Err(IntegrityError(format!(
            "audit trail {}: it ends at line {n} but lines up to {} were shipped (last in {}): lines were \
             removed",
            path.display(),
            shipped.last(),
            shipped
                .lines
                .values()
                .next_back()
                .map_or("?", |l| l.segment.as_str())
        ))
        .into());
    }
    Ok(Verified {
        shipped: Some(shipped.last()),
        ..verified
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn how() -> How {
        How {
            command: "test".into(),
            host: "h".into(),
            version: "0",
            config_sha256: "c".into(),
        }
    }

    fn trail(n: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path(), "tester".into(), how());
        for i in 0..n {
            log.record("event", serde_json::json!({ "i": i })).unwrap();
        }
        let path = log.path().to_path_buf();
        (dir, path)
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn write(path: &Path, lines: &[String]) {
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    #[test]
    fn an_intact_chain_verifies() {
        let (_d, path) = trail(5);
        let v = verify(&path).unwrap();
        assert_eq!(v.lines, 5);
        let first: Value = serde_json::from_str(&lines(&path)[0]).unwrap();
        assert_eq!(first["prev"], GENESIS);
        assert_eq!(first["who"], "tester");
    }

    #[test]
    fn edits_removals_insertions_and_reorders_are_named() {
        let (_d, path) = trail(5);
        let original = lines(&path);

        let mut edited = original.clone();
        edited[2] = edited[2].replace("\"i\":2", "\"i\":9");
        write(&path, &edited);
        let e = verify(&path).unwrap_err().to_string();
        assert!(
            e.ends_with("line 4: its prev hash does not match line 3: line 3 was altered"),
            "{e}"
        );

        let mut removed = original.clone();
        removed.remove(1);
        write(&path, &removed);
        let e = verify(&path).unwrap_err().to_string();
        assert!(
            e.contains("line 2: sequence number 3 where 2 belongs: a line before it was removed"),
            "{e}"
        );

        let mut reordered = original.clone();
        reordered.swap(2, 3);
        write(&path, &reordered);
        let e = verify(&path).unwrap_err().to_string();
        assert!(e.contains("line 3: sequence number 4 where 3 belongs"), "{e}");

        let mut inserted = original.clone();
        inserted.insert(2, original[1].clone());
        write(&path, &inserted);
        let e = verify(&path).unwrap_err().to_string();
        assert!(
            e.contains("line 3: sequence number 2 where 3 belongs: a line was inserted"),
            "{e}"
        );

        write(&path, &original);
        assert_eq!(verify(&path).unwrap().lines, 5);
    }

    #[test]
    fn shipped_segments_anchor_the_trail_and_may_not_disagree() {
        use crate::repo::store::memory::MemoryStore;
        let store = MemoryStore::new();
        let repo = Repo::new(std::sync::Arc::new(store.clone()), "p");
        let (_d, path) = trail(3);
        let log = AuditLog::new(path.parent().unwrap(), "tester".into(), how());
        let shipped_name = log.ship(&repo, "h", None).unwrap().unwrap();
        let (_, trail) = trail_identity(&path).unwrap();
        let trail = trail.unwrap();
        assert_eq!(
            shipped_name,
            format!("p/h/audit/{trail}/000000000001-000000000003.jsonl")
        );
        assert_eq!(log.ship(&repo, "h", None).unwrap(), None, "nothing new to ship");
        let shipped = ShippedTrail::fetch(&repo, "h", &trail).unwrap();
        assert_eq!((shipped.last(), shipped.segments), (3, 1));
        assert_eq!(verify_against(&path, &shipped).unwrap().shipped, Some(3));

        // A second segment rewriting line 2 (the host cannot replace the first).
        let mut rewritten = lines(&path);
        rewritten[1] = rewritten[1].replace("\"i\":1", "\"i\":7");
        store.insert(
            &format!("p/h/audit/{trail}/000000000002-000000000002.jsonl"),
            (rewritten[1].clone() + "\n").into_bytes(),
        );
        let e = ShippedTrail::fetch(&repo, "h", &trail).unwrap_err().to_string();
        assert!(
            e.contains("disagree about line 2: a line was rewritten and shipped again"),
            "{e}"
        );
    }

    #[test]
    fn shipped_segments_alone_show_gaps_and_broken_links() {
        use crate::repo::store::ObjectStore;
        use crate::repo::store::memory::MemoryStore;
        let store = MemoryStore::new();
        let repo = Repo::new(std::sync::Arc::new(store.clone()), "p");
        let (dir, path) = trail(2);
        let log = AuditLog::new(dir.path(), "tester".into(), how());
        log.ship(&repo, "h", None).unwrap();
        for i in 2..5 {
            log.record("event", serde_json::json!({ "i": i })).unwrap();
            log.ship(&repo, "h", None).unwrap();
        }
        let trail = trail_identity(&path).unwrap().1.unwrap();
        let seg = |a: u64, b: u64| format!("p/h/audit/{trail}/{a:012}-{b:012}.jsonl");
        let chain = ShippedTrail::fetch(&repo, "h", &trail)
            .unwrap()
            .verify_chain(&trail)
            .unwrap();
        assert_eq!((chain.lines, chain.segments), (5, 4));
        assert_eq!(
            chain.head,
            verify(&path).unwrap().head,
            "the shipped head is the trail's"
        );

        // A segment removed from the middle.
        let middle = store.get(&seg(4, 4)).unwrap();
        store.delete(&seg(4, 4)).unwrap();
        let e = ShippedTrail::fetch(&repo, "h", &trail)
            .unwrap()
            .verify_chain(&trail)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "audit trail {trail}: line 4 is missing from the shipped segments (the next line shipped is 5, \
                 in {}): a segment was removed",
                seg(5, 5)
            )
        );
        store.insert(&seg(4, 4), middle);

        // Line 3 rewritten locally before line 4 was written, then shipped
        // as if it were the original: line 4 no longer follows it.
        let original = store.get(&seg(3, 3)).unwrap();
        let text = String::from_utf8(original).unwrap().replace("\"i\":2", "\"i\":9");
        store.delete(&seg(3, 3)).unwrap();
        store.insert(&seg(3, 3), text.into_bytes());
        let e = ShippedTrail::fetch(&repo, "h", &trail)
            .unwrap()
            .verify_chain(&trail)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "audit trail {trail}: line 4 in {} does not follow line 3 as shipped: line 3 was altered \
                 before line 4 was written",
                seg(4, 4)
            )
        );

        // Segments filed under another trail's name.
        let other = "0123456789abcdef";
        let first = seg(1, 2);
        store.insert(&first.replace(&trail, other), store.get(&first).unwrap());
        let e = ShippedTrail::fetch(&repo, "h", other)
            .unwrap()
            .verify_chain(other)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("belongs to trail {trail}")), "{e}");
    }
}
