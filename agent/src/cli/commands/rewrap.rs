//! `vaultline rewrap --to-key KEY`: move every data key of the repository
//! from the configured KMS key to another one, without reading (or thawing)
//! a single archive (see docs/key-rotation.md and docs/FORMAT.md §8).
//!
//! Readers unwrap an archive's data key from the envelope copy in the
//! manifest that refers to it, never from the archive's own header (the
//! envelope is outside the header MAC, so it can be replaced). Rewrapping is
//! therefore rewriting manifests only:
//!
//! 1. the repository marker is switched to the new key first, so hosts still
//!    configured with the old key stop with the usual "sealed with … but the
//!    configured key is …" error instead of writing more old-key objects;
//! 2. every committed manifest of every host and job is opened (its own data
//!    key unwrapped under whatever key its envelope names), every archive
//!    envelope in its archive table is moved to the new key with KMS
//!    `ReEncrypt` (the plaintext data key never leaves KMS), and the manifest
//!    is written again, line for line, sealed under a fresh data key from the
//!    new key, and replaced in place (atomically; in a versioned bucket the
//!    old version becomes noncurrent; an Object Lock retention is kept).
//!
//! A manifest whose own envelope and archive envelopes all name the new key
//! already is left alone, so an interrupted rewrap is finished by running it
//! again, and a second run changes nothing. Archive objects are never opened,
//! HEAD-ed, copied or rewritten: their in-header envelopes go stale and are
//! ignored by readers.

use std::collections::{BTreeSet, HashMap, HashSet};

use anyhow::{Context, Result, anyhow};
use serde::Serialize;
use vaultline_config::KeyConfig;
use vaultline_crypto::{DataKey, EncryptionContext, Header, KeyWrap, SealedReader};

use crate::cli::app::App;
use crate::cli::args::RewrapArgs;
use crate::error::UsageError;
use crate::keys::Keys;
use crate::keys::kms::{KmsKeyWrap, PROVIDER};
use crate::pipeline::snapshot::SnapshotReader;
use crate::repo::manifest::{
    ArchiveRef, EnvelopeJson, ManifestItem, ManifestReader, ManifestWriter, NodesRef,
};
use crate::repo::store::{ObjectStore, Retention};
use crate::repo::{Kind, REPOSITORY_VERSION, RepoMarker, SnapshotRef};

#[derive(Serialize, Default)]
struct RewrapReport {
    repository: String,
    /// The configured key (ARN).
    from_key: String,
    /// The key everything is wrapped under now (ARN).
    to_key: String,
    /// Whether this run switched the repository marker to `to_key`.
    marker_updated: bool,
    hosts: Vec<String>,
    /// Manifests written again under the new key.
    manifests_rewritten: u64,
    /// Manifests that were under the new key already.
    manifests_skipped: u64,
    /// Archive envelope copies (in manifests) moved to the new key.
    archive_envelopes_rewrapped: u64,
    /// KMS ReEncrypt calls made (one per distinct archive envelope).
    reencrypt_calls: u64,
    /// Names of the manifests rewritten.
    rewritten: Vec<String>,
}

/// Runs `rewrap`.
pub fn run(app: &App, args: &RewrapArgs) -> Result<()> {
    let KeyConfig::Kms {
        key_id,
        endpoint,
        accepted_keys,
    } = &app.config.key
    else {
        return Err(UsageError(format!(
            "{} configures a local master key: `vaultline rewrap` moves data keys from one AWS KMS key to \
             another with KMS ReEncrypt and works only with the aws-kms key provider ([key] provider = \"kms\")",
            app.config.file.display()
        ))
        .into());
    };
    let recorder = app.recorder("rewrap");
    recorder.event("rewrap-started", serde_json::json!({ "to_key": args.to_key }))?;
    let mut report = RewrapReport {
        repository: app.repo.store().describe(),
        ..RewrapReport::default()
    };
    let mut keys: Option<Keys> = None;
    let result = (|| -> Result<()> {
        let owned_sdk;
        let sdk = match app.aws() {
            Ok((sdk, _)) => sdk,
            Err(_) => {
                owned_sdk =
                    crate::cloud::aws::sdk_config(&app.config.aws).context("setting up the AWS clients")?;
                &owned_sdk
            }
        };
        let client = crate::cloud::aws::kms_client(sdk, &app.config.aws, endpoint.as_deref())?;
        let from = KmsKeyWrap::connect(client.clone(), key_id)?.trusting(accepted_keys);
        let to =
            KmsKeyWrap::connect(client, &args.to_key).with_context(|| format!("--to-key {}", args.to_key))?;
        // Manifests a previous, interrupted run moved are under the new key.
        let keys = keys.insert(app.keys_also_trusting(&[to.key_id().to_string()])?);
        report.from_key = from.key_id().to_string();
        report.to_key = to.key_id().to_string();
        Rewrap {
            app,
            recorder: &recorder,
            keys,
            from: &from,
            to: &to,
            reencrypted: HashMap::new(),
            report: &mut report,
        }
        .run()
    })();
    recorder.event(
        "rewrap-finished",
        serde_json::json!({
            "to_key": args.to_key,
            "from_arn": report.from_key,
            "to_arn": report.to_key,
            "result": match &result { Ok(()) => "ok".to_string(), Err(e) => format!("{e:#}") },
            "marker_updated": report.marker_updated,
            "hosts": report.hosts,
            "manifests_rewritten": report.manifests_rewritten,
            "manifests_skipped": report.manifests_skipped,
            "archive_envelopes_rewrapped": report.archive_envelopes_rewrapped,
            "reencrypt_calls": report.reencrypt_calls,
            "rewritten": report.rewritten,
            "key_use": keys.as_ref().map(|k| k.usage()),
        }),
    )?;
    result?;
    app.out.summary(&report, || render(&report))
}

fn render(r: &RewrapReport) -> String {
    let mut t = if r.manifests_rewritten == 0 && !r.marker_updated {
        format!(
            "nothing to do: the {} manifest(s) in {} already wrap every data key under aws-kms key {}{}",
            r.manifests_skipped,
            r.repository,
            r.to_key,
            if r.from_key == r.to_key {
                " (the configured key)"
            } else {
                ""
            }
        )
    } else {
        format!(
            "rewrapped {} to aws-kms key {}: {} manifest(s) rewritten, {} archive envelope(s) re-wrapped, {} \
             manifest(s) under it already; no archive was read or rewritten",
            r.repository, r.to_key, r.manifests_rewritten, r.archive_envelopes_rewrapped, r.manifests_skipped
        )
    };
    if r.from_key != r.to_key {
        t.push_str(&format!(
            "\nnext: set `key-id = \"{}\"` under [key] in the configuration of every host (hosts still \
             configured with {} are refused until then; the first backup of each job is a full one), check \
             restores, then disable (do not delete) the old key: see docs/key-rotation.md",
            r.to_key, r.from_key
        ));
    }
    t
}

struct Rewrap<'a> {
    app: &'a App,
    recorder: &'a crate::ops::report::Recorder,
    /// The configured key provider (counted): opens manifests, whatever key
    /// their envelopes name.
    keys: &'a Keys,
    from: &'a KmsKeyWrap,
    to: &'a KmsKeyWrap,
    /// Archive envelopes re-wrapped so far, by (object, wrapped key): an
    /// incremental chain's manifests carry the same envelope of a full's
    /// archive, which is re-wrapped once.
    reencrypted: HashMap<(String, String), EnvelopeJson>,
    report: &'a mut RewrapReport,
}

impl Rewrap<'_> {
    fn run(&mut self) -> Result<()> {
        let marker = self.check_marker()?;
        self.preflight()?;
        self.recorder.reached();
        if marker.key_id != self.to.key_id() {
            self.switch_marker(marker)?;
        }
        // Manifests committed while this runs (by a backup that checked the
        // marker before it changed) are picked up by another listing.
        let mut done: HashSet<String> = HashSet::new();
        loop {
            let (hosts, snapshots) = self.snapshots()?;
            for h in hosts {
                if !self.report.hosts.contains(&h) {
                    self.report.hosts.push(h);
                }
            }
            let fresh: Vec<SnapshotRef> = snapshots
                .into_iter()
                .filter(|s| !done.contains(&self.app.repo.manifest_name(&s.host, &s.job, &s.id)))
                .collect();
            if fresh.is_empty() {
                return Ok(());
            }
            for s in fresh {
                done.insert(self.app.repo.manifest_name(&s.host, &s.job, &s.id));
                self.snapshot(&s)
                    .with_context(|| format!("rewrap: snapshot {} of {}/{}", s.id, s.host, s.job))?;
            }
        }
    }

    /// The marker must name the configured key, or already the new one (a
    /// rewrap that is being resumed).
    fn check_marker(&self) -> Result<RepoMarker> {
        let repo = &self.app.repo;
        let configured = match repo.check_key(self.keys.as_ref()) {
            Ok(marker) => return Ok(marker),
            Err(e) => e,
        };
        match repo.read_marker() {
            Ok(Some(m))
                if m.vaultline_repository == REPOSITORY_VERSION
                    && m.key_provider == PROVIDER
                    && m.key_id == self.to.key_id() =>
            {
                Ok(m)
            }
            Ok(Some(m)) if m.vaultline_repository == REPOSITORY_VERSION => Err(UsageError(format!(
                "this repository was sealed with {} key {}, but the configured key is {PROVIDER} key {} and \
                 --to-key is {PROVIDER} key {}: rewrap moves a repository from its configured key to another",
                m.key_provider,
                m.key_id,
                self.from.key_id(),
                self.to.key_id()
            ))
            .into()),
            _ => Err(configured),
        }
    }

    /// Proves the new key can generate data keys before the marker changes.
    fn preflight(&self) -> Result<()> {
        let ctx = self.app.repo.context(
            &self.app.config.agent.host,
            "rewrap",
            "rewrap",
            Kind::Manifest,
            "rewrap",
        )?;
        self.to.generate(&ctx).with_context(|| {
            format!(
                "checking that KMS key {} can generate data keys",
                self.to.key_id()
            )
        })?;
        Ok(())
    }

    fn switch_marker(&mut self, marker: RepoMarker) -> Result<()> {
        let store = self.app.repo.store();
        let name = self.app.repo.marker_name();
        let new = RepoMarker {
            key_provider: PROVIDER.to_string(),
            key_id: self.to.key_id().to_string(),
            ..marker
        };
        let retention = live_retention(store, &name)?;
        self.app.repo.replace_marker(&new, retention.as_ref())?;
        tracing::info!(
            "repository marker {name} now names {PROVIDER} key {}",
            self.to.key_id()
        );
        self.report.marker_updated = true;
        Ok(())
    }

    /// Every host with objects under the prefix, and every committed
    /// snapshot of each.
    fn snapshots(&self) -> Result<(Vec<String>, Vec<SnapshotRef>)> {
        let repo = &self.app.repo;
        let root = if repo.prefix().is_empty() {
            String::new()
        } else {
            format!("{}/", repo.prefix())
        };
        let objects = repo
            .store()
            .list(&root)
            .with_context(|| format!("cannot list {}", repo.store().describe()))?;
        let hosts: BTreeSet<String> = objects
            .iter()
            .filter_map(|o| o.name.strip_prefix(&root))
            .filter_map(|rest| rest.split_once('/').map(|(host, _)| host.to_string()))
            .filter(|host| !host.is_empty())
            .collect();
        let mut snapshots = Vec::new();
        for host in &hosts {
            snapshots.extend(repo.list_snapshots(host, None)?);
        }
        Ok((hosts.into_iter().collect(), snapshots))
    }

    fn snapshot(&mut self, s: &SnapshotRef) -> Result<()> {
        let repo = &self.app.repo;
        let store = repo.store();
        let name = repo.manifest_name(&s.host, &s.job, &s.id);
        let reader = SnapshotReader::open(repo, self.keys.as_ref(), s.clone())?;
        let own = reader.sealed_header().envelope().clone();
        let to: &KmsKeyWrap = self.to;
        let under_new = |provider: &str, key: &str| provider == PROVIDER && key == to.key_id();
        let stale = reader
            .archives()
            .iter()
            .flatten()
            .map(|a| &a.envelope)
            .chain(reader.nodes().iter().flatten().map(|n| &n.envelope))
            .filter(|e| !under_new(&e.provider, &e.key_id))
            .count();
        if stale == 0 && under_new(&own.provider, &own.key_id) {
            tracing::debug!("{name}: under {} already", self.to.key_id());
            self.report.manifests_skipped += 1;
            return Ok(());
        }

        let mut archives: Vec<Option<ArchiveRef>> = Vec::with_capacity(reader.archives().len());
        let mut moved = 0;
        for a in reader.archives() {
            let Some(a) = a else {
                archives.push(None);
                continue;
            };
            let mut a = a.clone();
            if !under_new(&a.envelope.provider, &a.envelope.key_id) {
                a.envelope = self.reencrypt(s, &a)?;
                moved += 1;
            }
            archives.push(Some(a));
        }
        // Node packs (schema 4) are sealed objects too: their envelopes in
        // the table move like the archives'.
        let mut nodes: Vec<Option<NodesRef>> = Vec::with_capacity(reader.nodes().len());
        for n in reader.nodes() {
            let Some(n) = n else {
                nodes.push(None);
                continue;
            };
            let mut n = n.clone();
            if !under_new(&n.envelope.provider, &n.envelope.key_id) {
                n.envelope = self.reencrypt_object(s, &n.snapshot, &n.object, Kind::Nodes, &n.envelope)?;
                moved += 1;
            }
            nodes.push(Some(n));
        }
        let segmented = reader.header().vaultline_manifest >= 4;

        let ctx = repo.context(&s.host, &s.job, &s.id, Kind::Manifest, &name)?;
        let (key, envelope) = self
            .to
            .generate(&ctx)
            .with_context(|| format!("object {name}: cannot generate its new data key"))?;
        let mut writer = ManifestWriter::new(Vec::new(), &key, envelope, ctx.clone(), reader.header())?;
        let mut pass = reader.root_pass()?;
        let mut items = 0u64;
        while let Some(item) = pass.next_item()? {
            match item {
                ManifestItem::Entry(e) => writer.entry(&e)?,
                ManifestItem::Deleted(p) => writer.deleted(&p)?,
                ManifestItem::Segment(seg) => writer.segment(&seg)?,
            }
            items += 1;
        }
        let end = pass
            .end()
            .cloned()
            .ok_or_else(|| anyhow!("manifest {name}: no end record"))?;
        let nodes = segmented.then_some(nodes);
        let bytes = writer.finish(nodes.clone(), archives.clone(), end)?;
        let lines = Lines {
            items,
            deleted: pass.deleted(),
        };
        check_copy(
            &bytes,
            &name,
            &ctx,
            &key,
            self.to.key_id(),
            &reader,
            &archives,
            nodes.as_deref(),
            lines,
        )?;

        let retention = live_retention(store, &name)?;
        store
            .replace(&name, &bytes, retention.as_ref())
            .with_context(|| format!("cannot replace {name}"))?;
        tracing::info!(
            "{name}: rewritten under {} ({moved} archive envelope(s) re-wrapped)",
            self.to.key_id()
        );
        self.report.manifests_rewritten += 1;
        self.report.archive_envelopes_rewrapped += moved;
        self.report.rewritten.push(name);
        Ok(())
    }

    /// The archive's envelope, moved to the new key.
    fn reencrypt(&mut self, s: &SnapshotRef, a: &ArchiveRef) -> Result<EnvelopeJson> {
        self.reencrypt_object(s, &a.snapshot, &a.object, Kind::Archive, &a.envelope)
    }

    /// The envelope of `object` (of `kind`, written by `snapshot`), moved
    /// to the new key.
    fn reencrypt_object(
        &mut self,
        s: &SnapshotRef,
        snapshot: &str,
        object: &str,
        kind: Kind,
        envelope: &EnvelopeJson,
    ) -> Result<EnvelopeJson> {
        let cache_key = (object.to_string(), envelope.wrapped.clone());
        if let Some(done) = self.reencrypted.get(&cache_key) {
            return Ok(done.clone());
        }
        // The object's context names the snapshot that wrote it.
        let ctx = self.app.repo.context(&s.host, &s.job, snapshot, kind, object)?;
        let old = envelope.to_envelope()?;
        let new = self
            .from
            .reencrypt(&old, &ctx, self.to)
            .with_context(|| format!("object {object}: cannot re-wrap its data key"))?;
        let new = EnvelopeJson::from(&new);
        self.report.reencrypt_calls += 1;
        self.reencrypted.insert(cache_key, new.clone());
        Ok(new)
    }
}

/// An Object Lock retention of `name` that has not expired yet.
fn live_retention(store: &dyn ObjectStore, name: &str) -> Result<Option<Retention>> {
    let now = jiff::Timestamp::now();
    Ok(store
        .head(name)
        .with_context(|| format!("cannot look up {name}"))?
        .retention
        .filter(|r| r.until > now))
}

/// How many lines a manifest pass yielded.
struct Lines {
    /// Entries and deleted paths.
    items: u64,
    /// Deleted paths.
    deleted: u64,
}

/// Reads the new manifest back (with the data key in hand, no KMS call)
/// before it replaces the old one: it must open under its own name and
/// context, be sealed under the new key, and hold the same header, number of
/// lines and deleted paths, archive table and end record.
#[allow(clippy::too_many_arguments)]
fn check_copy(
    bytes: &[u8],
    name: &str,
    ctx: &EncryptionContext,
    key: &DataKey,
    to: &str,
    original: &SnapshotReader<'_>,
    archives: &[Option<ArchiveRef>],
    nodes: Option<&[Option<NodesRef>]>,
    lines: Lines,
) -> Result<()> {
    let bad = |what: String| -> anyhow::Error {
        anyhow!("internal error: the rewritten manifest {name} {what}; the original was left in place")
    };
    let mut input = bytes;
    let header = Header::read_from(&mut input).map_err(|e| bad(format!("has an unreadable header ({e})")))?;
    if header.context() != ctx || header.envelope().key_id != to {
        return Err(bad("is not sealed as expected".into()));
    }
    let sealed = SealedReader::new(input, &header, key).map_err(|e| bad(format!("does not open ({e})")))?;
    let mut copy = ManifestReader::new(sealed, name)?;
    if copy.header() != original.header() {
        return Err(bad("has another header".into()));
    }
    let mut count = 0u64;
    while copy.next_item()?.is_some() {
        count += 1;
    }
    if count != lines.items || copy.deleted() != lines.deleted {
        return Err(bad(format!(
            "has {count} lines ({} deleted paths) where the original has {} ({})",
            copy.deleted(),
            lines.items,
            lines.deleted
        )));
    }
    if copy.archives() != Some(archives) || copy.nodes() != nodes || copy.end() != Some(original.end()) {
        return Err(bad("has another archive or node pack table, or end record".into()));
    }
    Ok(())
}
