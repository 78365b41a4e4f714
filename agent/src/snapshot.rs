//! Reading snapshots back: finding one, opening its manifest, and walking
//! its archive in step with the manifest.
//!
//! [`SnapshotReader::walk`] is shared by restore and verify. It decrypts and
//! decompresses on a second thread (feeding a [`pipe`](crate::pipe)) while
//! the caller's thread parses tar and handles entries. Every archive entry
//! must be the next manifest entry (same path, kind, size, link target), and
//! both must end together; the archive object is read to its very end, so its
//! final chunk is authenticated and nothing may follow it. Any difference is
//! an integrity error naming the snapshot and the object.

use std::io::{self, BufReader, Read};
use std::thread;

use anyhow::{Context, Result, anyhow};
use vaultline_crypto::{KeyWrap, SealedReader};

use crate::exit::{IntegrityError, UsageError};
use crate::manifest::{Entry, EntryKind, ManifestEnd, ManifestHeader, ManifestReader};
use crate::pipe::pipe;
use crate::repo::{Kind, Repo, SnapshotRef};

type SealedObject = SealedReader<BufReader<Box<dyn Read + Send>>>;

/// Finds the snapshot `spec` (an id or `latest`) of `host`, in `job` if given.
pub fn resolve(
    repo: &Repo,
    host: &str,
    job: Option<&str>,
    configured: &[String],
    spec: &str,
) -> Result<SnapshotRef> {
    let all = repo.list_snapshots(host, job)?;
    if spec == "latest" {
        let job = match job {
            Some(j) => j.to_string(),
            None => {
                let mut jobs: Vec<&str> = all.iter().map(|s| s.job.as_str()).collect();
                jobs.sort_unstable();
                jobs.dedup();
                match (jobs.as_slice(), configured) {
                    ([only], _) => only.to_string(),
                    ([], [only]) => only.clone(),
                    ([], _) => {
                        return Err(UsageError(format!(
                            "no snapshots of host {host} in {}",
                            repo.store().describe()
                        ))
                        .into());
                    }
                    (many, _) => {
                        return Err(UsageError(format!(
                            "host {host} has snapshots of several jobs ({}); choose one with --job",
                            many.join(", ")
                        ))
                        .into());
                    }
                }
            }
        };
        return all
            .into_iter()
            .rfind(|s| s.job == job)
            .ok_or_else(|| UsageError(format!("job {job} of host {host} has no snapshots yet")).into());
    }
    if !crate::repo::valid_snapshot_id(spec) {
        return Err(UsageError(format!(
            "{spec:?} is not a snapshot id (like 20261122T103000Z-1a2b3c4d) or `latest`"
        ))
        .into());
    }
    all.into_iter().find(|s| s.id == spec).ok_or_else(|| {
        let scope = job.map_or_else(|| format!("host {host}"), |j| format!("job {j} of host {host}"));
        UsageError(format!(
            "no snapshot {spec} of {scope} (see `vaultline snapshots`)"
        ))
        .into()
    })
}

/// An opened snapshot.
pub struct SnapshotReader<'a> {
    repo: &'a Repo,
    keys: &'a (dyn KeyWrap + Sync),
    snapshot: SnapshotRef,
    manifest: ManifestReader<SealedObject>,
    manifest_name: String,
}

/// Totals of a walk.
#[derive(Debug, Default, Clone)]
pub struct Walked {
    /// Entries seen.
    pub entries: u64,
    /// File bytes read.
    pub bytes: u64,
    /// The manifest's end record.
    pub end: ManifestEnd,
}

impl<'a> SnapshotReader<'a> {
    /// Opens the manifest of `snapshot`, checking it is the object it claims.
    pub fn open(repo: &'a Repo, keys: &'a (dyn KeyWrap + Sync), snapshot: SnapshotRef) -> Result<Self> {
        let name = repo.manifest_name(&snapshot.host, &snapshot.job, &snapshot.id);
        let ctx = repo.context(&snapshot.host, &snapshot.job, &snapshot.id, Kind::Manifest, &name)?;
        let sealed = repo
            .open_sealed(&name, keys, &ctx, None)
            .with_context(|| format!("snapshot {}", snapshot.id))?;
        let manifest =
            ManifestReader::new(sealed, &name).with_context(|| format!("snapshot {}", snapshot.id))?;
        let h = manifest.header();
        if h.snapshot != snapshot.id || h.job != snapshot.job || h.host != snapshot.host {
            return Err(IntegrityError(format!(
                "manifest {name} describes snapshot {} of {}/{}",
                h.snapshot, h.host, h.job
            ))
            .into());
        }
        Ok(SnapshotReader {
            repo,
            keys,
            snapshot,
            manifest,
            manifest_name: name,
        })
    }

    /// Reads the manifest to its end record, without touching archives.
    pub fn summary(mut self) -> Result<(ManifestHeader, ManifestEnd)> {
        let end = self.manifest.read_to_end()?;
        Ok((self.manifest.header().clone(), end))
    }

    /// Walks the archive and the manifest together, calling `visit` with each
    /// manifest entry and, for files, a reader of exactly its content.
    pub fn walk(
        mut self,
        mut visit: impl FnMut(&Entry, Option<&mut dyn Read>) -> Result<()>,
    ) -> Result<Walked> {
        let id = self.snapshot.id.clone();
        let header = self.manifest.header().clone();
        let [archive] = header.archives.as_slice() else {
            return Err(anyhow!(
                "snapshot {id} refers to {} archives; this vaultline reads one",
                header.archives.len()
            ));
        };
        let ctx = self.repo.context(
            &self.snapshot.host,
            &self.snapshot.job,
            &archive.snapshot,
            Kind::Archive,
            &archive.object,
        )?;
        let envelope = archive.envelope.to_envelope()?;
        let object = archive.object.clone();
        let sealed = self
            .repo
            .open_sealed(&object, self.keys, &ctx, Some(&envelope))
            .with_context(|| format!("snapshot {id}"))?;

        let (mut pipe_in, pipe_out) = pipe(4, 1 << 20);
        let mut walked = Walked::default();
        thread::scope(|scope| -> Result<()> {
            // Decrypt and decompress, to the very end of the object.
            let producer = scope.spawn(move || -> Result<()> {
                let mut decoder = zstd::stream::read::Decoder::new(sealed)?;
                io::copy(&mut decoder, &mut pipe_in)?;
                pipe_in.finish()?;
                Ok(())
            });
            let consumed = self.consume(pipe_out, &mut visit, &mut walked, &object);
            let produced = producer
                .join()
                .map_err(|_| anyhow!("the decryption thread panicked"))?;
            match (consumed, produced) {
                (Ok(()), Ok(())) => Ok(()),
                // The consumer stopped first (a mismatch, a write error): the
                // producer only saw the pipe close.
                (Err(c), Err(p)) if crate::pipe::is_broken_pipe(&p) => Err(c),
                // The producer's error (an authentication failure, say) is the
                // cause when the consumer only saw the data stop.
                (_, Err(p)) => Err(p.context(format!("reading archive {object}"))),
                (Err(c), Ok(())) => Err(c),
            }
        })
        .with_context(|| format!("snapshot {id}"))?;
        walked.end = self.manifest.end().cloned().unwrap_or_default();
        Ok(walked)
    }

    fn consume(
        &mut self,
        plaintext: impl Read,
        visit: &mut impl FnMut(&Entry, Option<&mut dyn Read>) -> Result<()>,
        walked: &mut Walked,
        object: &str,
    ) -> Result<()> {
        let mismatch = |what: String| -> anyhow::Error {
            IntegrityError(format!(
                "archive {object} does not match manifest {}: {what}",
                self.manifest_name
            ))
            .into()
        };
        let mut archive = tar::Archive::new(plaintext);
        let mut entries = archive.entries()?;
        loop {
            let expected = self.manifest.next_entry()?;
            let next = entries.next().transpose()?;
            let (expected, mut tar_entry) = match (expected, next) {
                (None, None) => break,
                (Some(e), None) => {
                    return Err(mismatch(format!("the archive ends before {}", e.path.display())));
                }
                (None, Some(t)) => {
                    return Err(mismatch(format!(
                        "extra archive entry {}",
                        String::from_utf8_lossy(&t.path_bytes())
                    )));
                }
                (Some(e), Some(t)) => (e, t),
            };
            let mut path = tar_entry.path_bytes().into_owned();
            if path.len() > 1 && path.ends_with(b"/") {
                path.pop();
            }
            let kind = match tar_entry.header().entry_type() {
                tar::EntryType::Regular => Some(EntryKind::File),
                tar::EntryType::Directory => Some(EntryKind::Dir),
                tar::EntryType::Symlink => Some(EntryKind::Symlink),
                tar::EntryType::Link => Some(EntryKind::Hardlink),
                _ => None,
            };
            let link = tar_entry.link_name_bytes().map(|l| l.into_owned());
            if path != expected.path.0
                || kind != Some(expected.kind)
                || (expected.kind == EntryKind::File && tar_entry.size() != expected.size)
                || link != expected.target.as_ref().map(|t| t.0.clone())
            {
                return Err(mismatch(format!(
                    "manifest has {} ({:?}, {} bytes), archive has {} ({:?}, {} bytes)",
                    expected.path.display(),
                    expected.kind,
                    expected.size,
                    String::from_utf8_lossy(&path),
                    tar_entry.header().entry_type(),
                    tar_entry.size()
                )));
            }
            walked.entries += 1;
            if expected.kind == EntryKind::File {
                walked.bytes += expected.size;
                visit(&expected, Some(&mut tar_entry))?;
            } else {
                visit(&expected, None)?;
            }
        }
        // Past the tar end marker: read the rest, so the sealed stream's end
        // is authenticated too.
        io::copy(&mut archive.into_inner(), &mut io::sink())?;
        Ok(())
    }
}
