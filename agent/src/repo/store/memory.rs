//! An in-memory store: objects in a map, for fuzzing, benchmarks and unit
//! tests that exercise the layers above a store without a file system or a
//! server. Same contract as the others: an object appears only when its
//! pending write commits, and a committed name is never replaced by
//! `create`.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, PoisonError};

use super::{ObjectClass, ObjectInfo, ObjectMeta, ObjectStore, PendingObject, Retention, StoreError, Thaw};

/// Each object's bytes and the time it was recorded, by name.
type Map = BTreeMap<String, (Arc<Vec<u8>>, jiff::Timestamp)>;
type Objects = Arc<Mutex<Map>>;

/// Objects held in memory.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    objects: Objects,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// Stores `bytes` under `name` as they are, replacing what is there
    /// (a test planting or damaging an object).
    pub fn insert(&self, name: &str, bytes: Vec<u8>) {
        self.insert_at(name, bytes, jiff::Timestamp::now());
    }

    /// Stores `bytes` under `name` as recorded at `time` (a test of how
    /// recorded times order snapshots).
    pub fn insert_at(&self, name: &str, bytes: Vec<u8>, time: jiff::Timestamp) {
        self.lock().insert(name.to_string(), (Arc::new(bytes), time));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        self.objects.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bytes(&self, name: &str) -> io::Result<Arc<Vec<u8>>> {
        self.lock().get(name).map(|(b, _)| Arc::clone(b)).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                StoreError::NotFound {
                    name: name.to_string(),
                    store: self.describe(),
                },
            )
        })
    }
}

/// Reads a shared object from `pos` to `end`.
struct Slice {
    bytes: Arc<Vec<u8>>,
    pos: usize,
    end: usize,
}

impl Read for Slice {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.end - self.pos);
        buf[..n].copy_from_slice(&self.bytes[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

struct MemoryPending {
    objects: Objects,
    name: String,
    bytes: Vec<u8>,
    store: String,
}

impl Write for MemoryPending {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl PendingObject for MemoryPending {
    fn commit(self: Box<Self>) -> io::Result<ObjectInfo> {
        let mut objects = self.objects.lock().unwrap_or_else(PoisonError::into_inner);
        if objects.contains_key(&self.name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                StoreError::AlreadyExists {
                    name: self.name,
                    store: self.store,
                },
            ));
        }
        let size = self.bytes.len() as u64;
        objects.insert(self.name.clone(), (Arc::new(self.bytes), jiff::Timestamp::now()));
        Ok(ObjectInfo {
            name: self.name,
            size,
            modified: None,
        })
    }
}

impl ObjectStore for MemoryStore {
    fn describe(&self) -> String {
        "memory store".to_string()
    }

    fn create(
        &self,
        name: &str,
        _class: ObjectClass,
        _retention: Option<&Retention>,
    ) -> io::Result<Box<dyn PendingObject>> {
        Ok(Box::new(MemoryPending {
            objects: Arc::clone(&self.objects),
            name: name.to_string(),
            bytes: Vec::new(),
            store: self.describe(),
        }))
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn Read + Send>> {
        self.open_range(name, 0, None)
    }

    fn open_range(&self, name: &str, start: u64, end: Option<u64>) -> io::Result<Box<dyn Read + Send>> {
        let bytes = self.bytes(name)?;
        let len = bytes.len();
        let end = end.map_or(len, |e| usize::try_from(e).unwrap_or(len).min(len));
        let pos = usize::try_from(start).unwrap_or(len).min(end);
        Ok(Box::new(Slice { bytes, pos, end }))
    }

    fn head(&self, name: &str) -> io::Result<ObjectMeta> {
        Ok(ObjectMeta {
            size: self.bytes(name)?.len() as u64,
            storage_class: None,
            thaw: Thaw::Readable,
            retention: None,
        })
    }

    fn delete(&self, name: &str) -> io::Result<()> {
        self.lock().remove(name);
        Ok(())
    }

    fn replace(&self, name: &str, bytes: &[u8], _retention: Option<&Retention>) -> io::Result<ObjectInfo> {
        self.insert(name, bytes.to_vec());
        Ok(ObjectInfo {
            name: name.to_string(),
            size: bytes.len() as u64,
            modified: None,
        })
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>> {
        Ok(self
            .lock()
            .range(prefix.to_string()..)
            .take_while(|(name, _)| name.starts_with(prefix))
            .map(|(name, (bytes, time))| ObjectInfo {
                name: name.clone(),
                size: bytes.len() as u64,
                modified: Some(*time),
            })
            .collect())
    }

    fn list_prefixes(&self, prefix: &str) -> io::Result<Vec<String>> {
        let objects = self.lock();
        let names = objects
            .range(prefix.to_string()..)
            .take_while(|(name, _)| name.starts_with(prefix))
            .map(|(name, _)| name.as_str());
        Ok(super::prefixes_below(prefix, names))
    }

    fn clean_pending(&self, _prefix: &str) -> io::Result<usize> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_appear_on_commit_and_read_back_by_range() {
        let store = MemoryStore::new();
        let mut p = store.create("a/b", ObjectClass::Control, None).unwrap();
        p.write_all(b"hello world").unwrap();
        assert!(store.list("a/").unwrap().is_empty());
        p.commit().unwrap();
        assert_eq!(store.list("a/").unwrap()[0].size, 11);
        let mut s = String::new();
        store
            .open_range("a/b", 6, Some(11))
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "world");
        let again = store.create("a/b", ObjectClass::Control, None).unwrap();
        assert_eq!(again.commit().unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert!(super::super::is_not_found(&store.open("nope").err().unwrap()));
    }

    #[test]
    fn prefixes_are_listed_once_each() {
        let store = MemoryStore::new();
        for name in ["p/a/1", "p/a/2/x", "p/b/1", "p/c", "pq/d/1"] {
            store.insert(name, Vec::new());
        }
        assert_eq!(store.list_prefixes("p/").unwrap(), ["p/a/", "p/b/"]);
        assert_eq!(store.list_prefixes("").unwrap(), ["p/", "pq/"]);
    }
}
