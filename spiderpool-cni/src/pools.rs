//! Pool definitions: read from `ippools_path` (a file or a directory of files) and from the
//! network configuration, on every call. Files whose stamp (size, times, inode) is unchanged
//! are not parsed again: their documents come from the store's cache.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use spiderpool_core::{
    PoolCatalog, Resource, SpiderIPPool, SpiderReservedIP, parse_documents, parse_resource,
};

use crate::cni::IpamConfig;
use crate::store::Transaction;

/// Why pool definitions cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolsError {
    /// The path does not exist or cannot be read.
    #[error("ipam.ippools_path: {path}: {reason}")]
    Unreadable {
        /// The path.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A file holds a document that cannot be read.
    #[error("ipam.ippools_path: {path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// Every bad document, with its field.
        reason: String,
    },
    /// An inline object of `ipam.ippools` cannot be read.
    #[error("ipam.ippools[{index}]: {reason}")]
    BadInline {
        /// Its position.
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

/// The pool files `ippools_path` names: the file itself, or the `.yaml`, `.yml` and `.json`
/// files of the directory, by name.
pub fn pool_files(path: &Path) -> Result<Vec<PathBuf>, PoolsError> {
    let unreadable = |reason: String| PoolsError::Unreadable {
        path: path.to_owned(),
        reason,
    };
    let metadata = fs::metadata(path).map_err(|err| unreadable(err.to_string()))?;
    if !metadata.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(path).map_err(|err| unreadable(err.to_string()))? {
        let entry = entry.map_err(|err| unreadable(err.to_string()))?;
        let file = entry.path();
        let wanted = file
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if wanted && file.is_file() {
            files.push(file);
        }
    }
    files.sort();
    Ok(files)
}

/// What identifies a version of a file without reading it.
fn stamp(metadata: &fs::Metadata) -> String {
    format!(
        "{}:{}:{}.{}:{}.{}",
        metadata.ino(),
        metadata.len(),
        metadata.mtime(),
        metadata.mtime_nsec(),
        metadata.ctime(),
        metadata.ctime_nsec()
    )
}

/// The objects of one file, from the cache when its stamp is unchanged.
fn read_file(file: &Path, cache: Option<&Transaction<'_>>) -> Result<Vec<Value>, PoolsError> {
    let bad = |reason: String| PoolsError::BadFile {
        path: file.to_owned(),
        reason,
    };
    let metadata = fs::metadata(file).map_err(|err| bad(err.to_string()))?;
    let stamp = stamp(&metadata);
    let key = file.to_string_lossy();
    if let Some(transaction) = cache
        && let Ok(Some(cached)) = transaction.cached_documents(&key, &stamp)
        && let Ok(values) = serde_json::from_str::<Vec<Value>>(&cached)
    {
        return Ok(values);
    }
    let text = fs::read_to_string(file).map_err(|err| bad(err.to_string()))?;
    let documents = parse_documents(&text).map_err(|err| bad(err.to_string()))?;
    let mut values = Vec::new();
    for document in documents {
        let value = match document.resource {
            Resource::IpPool(pool) => serde_json::to_value(*pool),
            Resource::ReservedIp(reserved) => serde_json::to_value(reserved),
            Resource::Other { .. } => continue,
        };
        values.push(value.expect("wire types serialize to JSON"));
    }
    if let Some(transaction) = cache {
        let text = serde_json::to_string(&values).expect("JSON values serialize");
        // The cache only saves work: failing to write it changes nothing else.
        let _ = transaction.cache_documents(&key, &stamp, &text);
    }
    Ok(values)
}

/// Every pool and reserved-IP object of the configuration: the files of `ippools_path` in
/// order, then `ipam.ippools`, validated together into a catalog. `cache`, when given, is
/// used to skip files that did not change.
pub fn load_catalog(ipam: &IpamConfig, cache: Option<&Transaction<'_>>) -> Result<PoolCatalog, PoolsError> {
    let mut pools: Vec<SpiderIPPool> = Vec::new();
    let mut reserved: Vec<SpiderReservedIP> = Vec::new();
    let mut take = |resource: Resource| match resource {
        Resource::IpPool(pool) => pools.push(*pool),
        Resource::ReservedIp(object) => reserved.push(object),
        Resource::Other { .. } => {}
    };
    if let Some(path) = &ipam.ippools_path {
        for file in pool_files(path)? {
            for value in read_file(&file, cache)? {
                let resource = parse_resource(value).map_err(|err| PoolsError::BadFile {
                    path: file.clone(),
                    reason: err.to_string(),
                })?;
                take(resource);
            }
        }
    }
    for (index, value) in ipam.ippools.iter().enumerate() {
        let resource = parse_resource(value.clone()).map_err(|err| PoolsError::BadInline {
            index,
            reason: err.problem.to_string(),
        })?;
        take(resource);
    }
    Ok(PoolCatalog::new(pools, reserved))
}
