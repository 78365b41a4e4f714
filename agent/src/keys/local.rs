//! The local master key: created by `vaultline init`, kept in the OS keyring
//! (Secret Service, through the `keyring` crate) or, where no keyring is
//! reachable (a headless server), in a key file.
//!
//! The key file holds one line, `vaultline-master-key-v1 <64 hex digits>`, is
//! created 0600 in a 0700 directory, and is refused at load if group or others
//! can read it (as ssh refuses private keys). Key bytes live in zeroizing
//! buffers and are never printed; only the fingerprint is.

use std::fs::{DirBuilder, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use vaultline_config::{KeyConfig, KeyStorage};
use vaultline_crypto::{KEY_SIZE, LocalKeyWrap, MasterKey};
use zeroize::Zeroizing;

use crate::error::UsageError;

const FILE_TAG: &str = "vaultline-master-key-v1";
const KEYRING_SERVICE: &str = "vaultline";

/// Where a master key was found or put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLocation {
    /// The OS keyring, under this entry name.
    Keyring(String),
    /// A key file.
    File(PathBuf),
}

impl std::fmt::Display for KeyLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyLocation::Keyring(user) => write!(
                f,
                "the OS keyring (service \"{KEYRING_SERVICE}\", entry \"{user}\")"
            ),
            KeyLocation::File(p) => write!(f, "key file {}", p.display()),
        }
    }
}

/// A master key and where it lives. `Debug` shows the fingerprint only.
#[derive(Debug)]
pub struct LocalKey {
    /// The key.
    pub master: MasterKey,
    /// Where it is kept.
    pub location: KeyLocation,
}

impl LocalKey {
    /// The key-wrapping provider for this key.
    pub fn provider(&self) -> LocalKeyWrap {
        LocalKeyWrap::new(&self.master)
    }
}

/// No master key where the configuration says it is: the caller, which
/// knows the repository, says which key is needed and how to get it back.
#[derive(Debug, thiserror::Error)]
#[error("no local master key found (looked in {})", .looked.join(", "))]
pub struct MissingKey {
    /// The places looked in, for messages.
    pub looked: Vec<String>,
}

/// A key that is already in place where another was to be put.
#[derive(Debug, thiserror::Error)]
#[error("{location} already holds local key {fingerprint}")]
pub struct KeyInPlace {
    /// Where.
    pub location: KeyLocation,
    /// The key there.
    pub fingerprint: String,
}

/// The master key as exported for safekeeping: the key file's own form
/// (so a copy can also be put back as the key file), after comment lines
/// that say what it is.
pub fn export_text(key: &LocalKey, host: &str) -> Zeroizing<String> {
    Zeroizing::new(format!(
        "# vaultline master key, fingerprint {}\n# exported from host {host} ({}) on {}\n# Keep it secret and \
         apart from the backups: it reads every snapshot made with it. Put it back with\n# `vaultline key \
         import FILE`.\n{FILE_TAG} {}\n",
        key.master.fingerprint(),
        key.location,
        jiff::Timestamp::now()
            .round(jiff::Unit::Second)
            .unwrap_or_else(|_| jiff::Timestamp::now()),
        hex::encode(key.master.expose_secret())
    ))
}

/// Reads a master key from the text of a key file or an export: lines
/// starting with `#` and blank lines are ignored; one line must be
/// `vaultline-master-key-v1 <64 hex digits>`.
pub fn parse_key_text(text: &str) -> Result<MasterKey> {
    let mut keys = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let line = keys
        .next()
        .ok_or_else(|| anyhow!("it holds no `{FILE_TAG}` line"))?;
    if keys.next().is_some() {
        bail!("it holds more than one key line");
    }
    let hex = line
        .strip_prefix(FILE_TAG)
        .map(str::trim)
        .ok_or_else(|| anyhow!("its key line does not start with `{FILE_TAG}`"))?;
    parse_hex(hex)
}

/// Settings of the local key provider, from the config.
pub struct LocalKeySettings<'a> {
    storage: KeyStorage,
    file: &'a Path,
    /// Keyring entry name: one per state directory, so two configurations on
    /// one machine do not share a key by accident.
    entry: String,
}

impl<'a> LocalKeySettings<'a> {
    /// From the `[key]` section (`None` when the key is not local);
    /// `state_dir` names the keyring entry.
    pub fn new(key: &'a KeyConfig, state_dir: &Path) -> Option<Self> {
        match key {
            KeyConfig::Local { storage, file } => Some(LocalKeySettings {
                storage: *storage,
                file,
                entry: format!("master-key:{}", state_dir.display()),
            }),
            KeyConfig::Kms { .. } => None,
        }
    }

    fn keyring_entry(&self) -> Result<keyring::Entry, keyring::Error> {
        keyring::Entry::new(KEYRING_SERVICE, &self.entry)
    }

    /// Loads the existing key. Looks in the keyring then the file for
    /// `auto`; an error names every place looked in when there is none.
    pub fn load(&self) -> Result<LocalKey> {
        match self.find()? {
            Found::Key(k) => Ok(k),
            Found::Nothing { looked } => Err(MissingKey { looked }.into()),
        }
    }

    /// Looks for the key where the storage setting allows.
    fn find(&self) -> Result<Found> {
        let mut looked = Vec::new();
        if self.storage != KeyStorage::File {
            match self.keyring_entry().and_then(|e| e.get_password()) {
                Ok(text) => {
                    let text = Zeroizing::new(text);
                    let master = parse_hex(text.trim()).with_context(|| {
                        format!("the master key in {} is malformed", self.keyring_location())
                    })?;
                    return Ok(Found::Key(LocalKey {
                        master,
                        location: self.keyring_location(),
                    }));
                }
                Err(keyring::Error::NoEntry) => looked.push(self.keyring_location().to_string()),
                Err(e) if self.storage == KeyStorage::Keyring => {
                    bail!(
                        "the OS keyring is not reachable ({e}); key.storage = \"keyring\" allows no fallback"
                    )
                }
                Err(e) => {
                    tracing::debug!("OS keyring not reachable ({e}); using the key file");
                    looked.push(format!("the OS keyring (not reachable: {e})"));
                }
            }
        }
        if self.storage != KeyStorage::Keyring {
            match read_key_file(self.file)? {
                Some(master) => {
                    return Ok(Found::Key(LocalKey {
                        master,
                        location: KeyLocation::File(self.file.to_path_buf()),
                    }));
                }
                None => looked.push(format!("key file {}", self.file.display())),
            }
        }
        Ok(Found::Nothing { looked })
    }

    /// Loads the key, or creates one if there is none: in the keyring when
    /// reachable (for `auto` and `keyring`), else in the key file. Returns
    /// whether it was created.
    pub fn load_or_create(&self) -> Result<(LocalKey, bool)> {
        if let Found::Key(k) = self.find()? {
            return Ok((k, false));
        }
        Ok((self.put(MasterKey::generate()?)?, true))
    }

    /// Puts `master` where [`LocalKeySettings::load_or_create`] would put a
    /// new key (`key import`). Never replaces a key: one in place already
    /// is a [`KeyInPlace`] error.
    pub fn store(&self, master: MasterKey) -> Result<LocalKey> {
        if let Found::Key(k) = self.find()? {
            return Err(KeyInPlace {
                fingerprint: k.master.fingerprint(),
                location: k.location,
            }
            .into());
        }
        self.put(master)
    }

    fn put(&self, master: MasterKey) -> Result<LocalKey> {
        if self.storage != KeyStorage::File {
            let stored = self.keyring_entry().and_then(|e| {
                let hex = Zeroizing::new(hex::encode(master.expose_secret()));
                e.set_password(&hex)
            });
            match stored {
                Ok(()) => {
                    return Ok(LocalKey {
                        master,
                        location: self.keyring_location(),
                    });
                }
                Err(e) if self.storage == KeyStorage::Keyring => {
                    bail!("cannot store the master key in the OS keyring: {e}")
                }
                Err(e) => {
                    tracing::info!("OS keyring not reachable ({e}); storing the master key in a key file")
                }
            }
        }
        write_key_file(self.file, &master)?;
        Ok(LocalKey {
            master,
            location: KeyLocation::File(self.file.to_path_buf()),
        })
    }

    fn keyring_location(&self) -> KeyLocation {
        KeyLocation::Keyring(self.entry.clone())
    }
}

enum Found {
    Key(LocalKey),
    Nothing { looked: Vec<String> },
}

fn parse_hex(text: &str) -> Result<MasterKey> {
    let mut bytes = Zeroizing::new([0u8; KEY_SIZE]);
    hex::decode_to_slice(text, &mut bytes[..])
        .map_err(|_| anyhow!("expected {} hex digits", 2 * KEY_SIZE))?;
    Ok(MasterKey::from_bytes(*bytes))
}

/// Reads a key file; `None` when it does not exist.
fn read_key_file(path: &Path) -> Result<Option<MasterKey>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open key file {}", path.display())),
    };
    let meta = file.metadata()?;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        // Whoever owns it could have swapped in a key of their choosing:
        // backups would be sealed to them.
        return Err(UsageError(format!(
            "key file {} is owned by uid {}, not by this user (uid {me}): if it is the right key, run \
             `chown {me} {}`",
            path.display(),
            meta.uid(),
            path.display()
        ))
        .into());
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(UsageError(format!(
            "key file {} is accessible by other users (mode {mode:04o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        ))
        .into());
    }
    let mut text = Zeroizing::new(String::new());
    file.read_to_string(&mut text)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    // (An export is a key file too: its comment lines are skipped.)
    parse_key_text(&text)
        .map_err(|e| UsageError(format!("key file {} is malformed: {e}", path.display())).into())
        .map(Some)
}

/// Creates a key file: never replaces one, never leaves a partial one.
fn write_key_file(path: &Path, master: &MasterKey) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| anyhow!("key file {} has no directory", path.display()))?;
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create key directory {}", dir.display()))?;
    let mut file = crate::state::create_new(path, crate::state::PRIVATE)
        .with_context(|| format!("cannot create key file {}", path.display()))?;
    let line = Zeroizing::new(format!("{FILE_TAG} {}\n", hex::encode(master.expose_secret())));
    let written = file.write_all(line.as_bytes()).and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(path);
        return Err(e).with_context(|| format!("cannot write key file {}", path.display()));
    }
    File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn settings<'a>(key: &'a KeyConfig) -> LocalKeySettings<'a> {
        LocalKeySettings::new(key, Path::new("/state")).unwrap()
    }

    #[test]
    fn file_storage_creates_once_and_reloads_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyConfig::Local {
            storage: KeyStorage::File,
            file: dir.path().join("keys/master.key"),
        };
        let s = settings(&key);
        assert!(s.load().unwrap_err().is::<MissingKey>());
        let (created, new) = s.load_or_create().unwrap();
        assert!(new);
        let (again, new) = s.load_or_create().unwrap();
        assert!(!new);
        assert_eq!(created.master.fingerprint(), again.master.fingerprint());
        let meta = std::fs::metadata(dir.path().join("keys/master.key")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let dir_mode = std::fs::metadata(dir.path().join("keys"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }

    #[test]
    fn an_export_reads_back_as_the_same_key_and_as_a_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyConfig::Local {
            storage: KeyStorage::File,
            file: dir.path().join("master.key"),
        };
        let (k, _) = settings(&key).load_or_create().unwrap();
        let text = export_text(&k, "web1");
        assert!(text.starts_with(&format!(
            "# vaultline master key, fingerprint {}\n",
            k.master.fingerprint()
        )));
        let back = parse_key_text(&text).unwrap();
        assert_eq!(back.fingerprint(), k.master.fingerprint());
        // Put back as the key file, comments and all, it loads.
        let other = KeyConfig::Local {
            storage: KeyStorage::File,
            file: dir.path().join("copy.key"),
        };
        let stored = settings(&other).store(back).unwrap();
        assert_eq!(stored.master.fingerprint(), k.master.fingerprint());
        let again = parse_key_text(&text).unwrap();
        assert!(settings(&other).store(again).unwrap_err().is::<KeyInPlace>());
        assert!(parse_key_text("# nothing\n").is_err());
        assert!(parse_key_text("vaultline-master-key-v1 00\n").is_err());
    }

    #[test]
    fn a_readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let key = KeyConfig::Local {
            storage: KeyStorage::File,
            file: path.clone(),
        };
        settings(&key).load_or_create().unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = settings(&key).load().err().unwrap().to_string();
        assert_eq!(
            err,
            format!(
                "key file {} is accessible by other users (mode 0644); run `chmod 600 {}`",
                path.display(),
                path.display()
            )
        );
    }
}
