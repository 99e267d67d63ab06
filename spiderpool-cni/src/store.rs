//! The embedded store: allocation state in one SQLite database in the data directory.
//!
//! Every call of the plugin opens the database, queues on the writers' lock file
//! (`state.lock`), holds SQLite's write lock for the whole decision (`BEGIN IMMEDIATE`), reads
//! what the engine asks through indexed queries, writes the plan, and commits durably (rollback
//! journal kept between calls, `synchronous=FULL`) before answering. A kill at any point
//! leaves either the old state or the new one.

use std::fs;
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use spiderpool_core::{
    AllocationState, Change, HeldAddress, Holder, IpRange, IpVersion, OwnerKey, PodRef, address_value,
};

/// The file name of the database inside the data directory.
pub const STATE_FILE: &str = "state.db";

/// The file writers lock, next to the database.
const LOCK_FILE: &str = "state.lock";

/// The writers' lock, held until dropped.
struct WriterLock(fs::File);

impl Drop for WriterLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// Removes a database file and its rollback journal.
fn remove_with_journal(path: &Path) {
    let _ = fs::remove_file(path);
    let mut journal = path.as_os_str().to_owned();
    journal.push("-journal");
    let _ = fs::remove_file(journal);
}

/// Removes `state.new-<pid>` files of creators that no longer run (killed while creating).
fn remove_abandoned_creations(path: &Path) {
    let Some(directory) = path.parent() else { return };
    let Ok(entries) = fs::read_dir(directory) else {
        return;
    };
    let prefix = format!(
        "{}.new-",
        path.file_stem().and_then(|s| s.to_str()).unwrap_or(STATE_FILE)
    );
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// `PRAGMA application_id` of our databases: "SPIP".
const APPLICATION_ID: i32 = 0x5350_4950;

/// The schema this build writes and reads.
const SCHEMA_VERSION: i32 = 1;

const SCHEMA: &str = "
CREATE TABLE pools (
    name TEXT PRIMARY KEY,
    family INTEGER NOT NULL CHECK (family IN (4, 6)),
    cursor BLOB,
    allocated INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE allocations (
    pool TEXT NOT NULL,
    address BLOB NOT NULL,
    owner_kind INTEGER NOT NULL CHECK (owner_kind IN (0, 1)),
    owner_id TEXT NOT NULL,
    interface TEXT NOT NULL,
    pod_namespace TEXT,
    pod_name TEXT,
    container_id TEXT NOT NULL,
    network TEXT NOT NULL,
    PRIMARY KEY (pool, address)
) STRICT, WITHOUT ROWID;
CREATE INDEX allocations_by_owner ON allocations (owner_kind, owner_id);
CREATE INDEX allocations_by_attachment ON allocations (container_id, interface);
CREATE TABLE runs (
    pool TEXT NOT NULL,
    start BLOB NOT NULL,
    end BLOB NOT NULL,
    PRIMARY KEY (pool, start)
) STRICT, WITHOUT ROWID;
CREATE TABLE pool_files (
    path TEXT PRIMARY KEY,
    stamp TEXT NOT NULL,
    documents TEXT NOT NULL
) STRICT;
";

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file exists and is empty.
    #[error(
        "state file {path} is empty; it is not a spiderpool store. Move it away; a new store is created on the next call"
    )]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file is not an SQLite database, or is damaged.
    #[error(
        "state file {path} is not a readable SQLite database ({reason}); it was left untouched. Restore it from a backup, or move it away to start a new store"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was found.
        reason: String,
    },
    /// An SQLite database of another application.
    #[error(
        "state file {path} is an SQLite database of another application (application_id {found:#x}); it was left untouched. Point data_dir elsewhere"
    )]
    Foreign {
        /// The file.
        path: PathBuf,
        /// Its application ID.
        found: i32,
    },
    /// Written by a newer spiderpool.
    #[error(
        "state file {path} has schema version {found}, newer than this plugin's {SCHEMA_VERSION}; it was left untouched. Upgrade the plugin"
    )]
    Newer {
        /// The file.
        path: PathBuf,
        /// Its schema version.
        found: i32,
    },
    /// Other writers held the lock for the whole wait.
    #[error("the state in {path} stayed locked by other plugin calls for {waited:?}; try again")]
    Busy {
        /// The file.
        path: PathBuf,
        /// How long the call waited.
        waited: Duration,
    },
    /// `data_dir` names something that is not a directory.
    #[error("data_dir {path} is not a directory; point data_dir at a directory (it is created when missing)")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The data directory cannot be created or read.
    #[error("data_dir {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// Any other database failure.
    #[error("state file {path}: {source}")]
    Database {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: rusqlite::Error,
    },
}

/// An open store.
pub struct Store {
    connection: Connection,
    path: PathBuf,
    busy_wait: Duration,
}

/// What the header of an existing store says.
struct Header {
    /// Whether the database is in WAL mode, where the header can lag the log.
    wal: bool,
}

/// The 100-byte SQLite header fields we check before letting SQLite touch a file; `None` when
/// there is no file yet.
fn check_header(path: &Path) -> Result<Option<Header>, StoreError> {
    let mut file = match fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Directory {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut header = Vec::with_capacity(100);
    file.by_ref()
        .take(100)
        .read_to_end(&mut header)
        .map_err(|source| StoreError::Directory {
            path: path.to_owned(),
            source,
        })?;
    if header.is_empty() {
        return Err(StoreError::Empty {
            path: path.to_owned(),
        });
    }
    if header.len() < 100 || !header.starts_with(b"SQLite format 3\0") {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            reason: "no SQLite header".into(),
        });
    }
    let field = |at: usize| i32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
    let (user_version, application_id) = (field(60), field(68));
    if application_id != APPLICATION_ID {
        return Err(StoreError::Foreign {
            path: path.to_owned(),
            found: application_id,
        });
    }
    if user_version > SCHEMA_VERSION {
        return Err(StoreError::Newer {
            path: path.to_owned(),
            found: user_version,
        });
    }
    // Bytes 18 and 19: file format versions, 2 in WAL mode.
    Ok(Some(Header {
        wal: header[18] == 2 || header[19] == 2,
    }))
}

impl Store {
    /// Opens the store in `data_dir`, creating the directory and the database on first use.
    /// A file that is empty, not SQLite, of another application or of a newer schema is
    /// refused before SQLite opens it, so it stays byte for byte as it was.
    pub fn open(data_dir: &Path, busy_wait: Duration) -> Result<Store, StoreError> {
        if data_dir.exists() && !data_dir.is_dir() {
            return Err(StoreError::NotADirectory {
                path: data_dir.to_owned(),
            });
        }
        fs::create_dir_all(data_dir).map_err(|source| StoreError::Directory {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(STATE_FILE);
        let header = match check_header(&path)? {
            Some(header) => header,
            None => {
                Store::create(&path)?;
                check_header(&path)?.expect("the store was just created")
            }
        };
        let classify = |source| classify_with(&path, busy_wait, source);
        let connection =
            Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(classify)?;
        connection.busy_timeout(busy_wait).map_err(classify)?;
        // In WAL mode (another build's) the header can lag the log: ask SQLite too, before
        // anything here may write.
        if header.wal {
            let version: i32 = connection
                .query_row("PRAGMA user_version", [], |row| row.get(0))
                .map_err(classify)?;
            if version > SCHEMA_VERSION {
                return Err(StoreError::Newer {
                    path: path.clone(),
                    found: version,
                });
            }
        }
        // A rollback journal kept between calls: each call is its own process, so a WAL would
        // be created, checkpointed and deleted by every one of them.
        connection
            .execute_batch("PRAGMA journal_mode = PERSIST; PRAGMA synchronous = FULL;")
            .map_err(classify)?;
        Ok(Store {
            connection,
            path,
            busy_wait,
        })
    }

    /// Creates a complete database under a temporary name and links it into place, so that no
    /// process ever sees a half-made store; when another process won the race, its store stays.
    /// Temporary databases of creators that were killed are removed first.
    fn create(path: &Path) -> Result<(), StoreError> {
        remove_abandoned_creations(path);
        let temporary = path.with_extension(format!("new-{}", std::process::id()));
        let database = |source| StoreError::Database {
            path: temporary.clone(),
            source,
        };
        remove_with_journal(&temporary);
        {
            let connection = Connection::open(&temporary).map_err(database)?;
            connection
                .execute_batch(&format!(
                    "PRAGMA application_id = {APPLICATION_ID};
                     BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                ))
                .map_err(database)?;
        }
        let linked = fs::hard_link(&temporary, path);
        remove_with_journal(&temporary);
        match linked {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(source) => Err(StoreError::Directory {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Takes the writers' lock of the data directory (`state.lock`), waiting at most the busy
    /// wait. Writers queue here, polling every few hundred microseconds, rather than in
    /// SQLite's busy handler, which sleeps up to 100 ms between tries and lets some callers of
    /// a burst wait seconds.
    fn lock_writers(&self) -> Result<WriterLock, StoreError> {
        let lock_path = self.path.with_file_name(LOCK_FILE);
        let io = |source| StoreError::Directory {
            path: lock_path.clone(),
            source,
        };
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(io)?;
        let deadline = Instant::now() + self.busy_wait;
        let mut pause = Duration::from_micros(100);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(WriterLock(file)),
                Err(fs::TryLockError::WouldBlock) => {}
                Err(fs::TryLockError::Error(source)) => return Err(io(source)),
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(StoreError::Busy {
                    path: self.path.clone(),
                    waited: self.busy_wait,
                });
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` in one write transaction: committed when it returns `Ok`, rolled back
    /// otherwise. Waits for other writers at most the busy wait.
    pub fn write<T, E: From<StoreError>>(
        &mut self,
        work: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let _writers = self.lock_writers()?;
        let view = self.begin(TransactionBehavior::Immediate)?;
        let outcome = work(&view)?;
        let (path, busy_wait) = (view.path, view.busy_wait);
        view.transaction
            .commit()
            .map_err(|source| classify_with(path, busy_wait, source))?;
        Ok(outcome)
    }

    /// Runs `work` on a consistent snapshot, without taking the write lock.
    pub fn read<T, E: From<StoreError>>(
        &mut self,
        work: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let view = self.begin(TransactionBehavior::Deferred)?;
        work(&view)
    }

    /// A transaction of `behavior` on the database, as the view the engine reads through.
    fn begin(&mut self, behavior: TransactionBehavior) -> Result<Transaction<'_>, StoreError> {
        let transaction = self
            .connection
            .transaction_with_behavior(behavior)
            .map_err(|source| classify_with(&self.path, self.busy_wait, source))?;
        Ok(Transaction {
            transaction,
            path: &self.path,
            busy_wait: self.busy_wait,
        })
    }
}

fn classify_with(path: &Path, busy_wait: Duration, source: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    match source.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Busy {
            path: path.to_owned(),
            waited: busy_wait,
        },
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Corrupt {
            path: path.to_owned(),
            reason: source.to_string(),
        },
        _ => StoreError::Database {
            path: path.to_owned(),
            source,
        },
    }
}

/// A transaction on the store: the allocation state the engine reads, and the writes of its
/// plans.
///
/// A failed [`AllocationState`] query answers [`StoreError`] (a busy or damaged database, any
/// other SQLite failure), which the engine passes on: it is never read as "nothing held".
pub struct Transaction<'a> {
    transaction: rusqlite::Transaction<'a>,
    path: &'a Path,
    busy_wait: Duration,
}

/// An address as stored: its value in its family, 16 bytes big-endian, so that byte order is
/// numeric order.
fn key(address: IpAddr) -> [u8; 16] {
    address_value(address).to_be_bytes()
}

fn value_of(bytes: &[u8]) -> u128 {
    let mut array = [0u8; 16];
    let start = 16usize.saturating_sub(bytes.len());
    array[start..].copy_from_slice(&bytes[bytes.len().saturating_sub(16)..]);
    u128::from_be_bytes(array)
}

fn address_of(version: IpVersion, bytes: &[u8]) -> Option<IpAddr> {
    version.address_at(value_of(bytes))
}

/// The columns of an allocation's holder.
struct HolderColumns {
    owner_kind: i64,
    owner_id: String,
    interface: String,
    pod_namespace: Option<String>,
    pod_name: Option<String>,
    container_id: String,
}

impl HolderColumns {
    fn of(holder: &Holder) -> HolderColumns {
        let (owner_kind, owner_id) = match holder.owner() {
            OwnerKey::Pod(uid) => (0, uid),
            OwnerKey::Container(id) => (1, id),
        };
        let pod = holder.pod();
        HolderColumns {
            owner_kind,
            owner_id,
            interface: holder.interface(),
            pod_namespace: pod.as_ref().map(|p| p.namespace.clone()),
            pod_name: pod.map(|p| p.name),
            container_id: holder.container_id(),
        }
    }

    fn holder(&self) -> Holder {
        let owner = if self.owner_kind == 0 {
            OwnerKey::Pod(self.owner_id.clone())
        } else {
            OwnerKey::Container(self.owner_id.clone())
        };
        let pod = self.pod_namespace.as_ref().map(|namespace| PodRef {
            namespace: namespace.clone(),
            name: self.pod_name.clone().unwrap_or_default(),
        });
        Holder::new(&owner, &self.interface, pod.as_ref(), &self.container_id)
    }

    fn read(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<HolderColumns> {
        Ok(HolderColumns {
            owner_kind: row.get(first)?,
            owner_id: row.get(first + 1)?,
            interface: row.get(first + 2)?,
            pod_namespace: row.get(first + 3)?,
            pod_name: row.get(first + 4)?,
            container_id: row.get(first + 5)?,
        })
    }
}

const HOLDER_COLUMNS: &str = "owner_kind, owner_id, interface, pod_namespace, pod_name, container_id";

/// A change that does not match the stored state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{change}: the stored state changed under the plan; try again")]
pub struct Conflict {
    /// The change.
    pub change: Box<Change>,
}

impl Transaction<'_> {
    fn family(&self, pool: &str) -> rusqlite::Result<Option<IpVersion>> {
        let family: Option<i64> = self
            .transaction
            .query_row("SELECT family FROM pools WHERE name = ?1", [pool], |row| {
                row.get(0)
            })
            .optional()?;
        Ok(family.map(|f| if f == 6 { IpVersion::V6 } else { IpVersion::V4 }))
    }

    /// The end of the run that holds `value`, if one does.
    fn run_containing(&self, pool: &str, value: u128) -> rusqlite::Result<Option<(u128, u128)>> {
        let run: Option<(Vec<u8>, Vec<u8>)> = self
            .transaction
            .query_row(
                "SELECT start, end FROM runs WHERE pool = ?1 AND start <= ?2 ORDER BY start DESC LIMIT 1",
                params![pool, value.to_be_bytes()],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        Ok(run
            .map(|(start, end)| (value_of(&start), value_of(&end)))
            .filter(|&(_, end)| end >= value))
    }

    fn set_run(&self, pool: &str, start: u128, end: u128) -> rusqlite::Result<()> {
        self.transaction.execute(
            "INSERT INTO runs (pool, start, end) VALUES (?1, ?2, ?3)
             ON CONFLICT (pool, start) DO UPDATE SET end = excluded.end",
            params![pool, start.to_be_bytes(), end.to_be_bytes()],
        )?;
        Ok(())
    }

    fn delete_run(&self, pool: &str, start: u128) -> rusqlite::Result<()> {
        self.transaction.execute(
            "DELETE FROM runs WHERE pool = ?1 AND start = ?2",
            params![pool, start.to_be_bytes()],
        )?;
        Ok(())
    }

    /// Adds `value` to the maximal runs of `pool`, merging with its neighbours.
    fn hold(&self, pool: &str, value: u128) -> rusqlite::Result<()> {
        let before = match value.checked_sub(1) {
            Some(previous) => self.run_containing(pool, previous)?,
            None => None,
        };
        let after: Option<u128> = match value.checked_add(1) {
            Some(next) => self
                .transaction
                .query_row(
                    "SELECT end FROM runs WHERE pool = ?1 AND start = ?2",
                    params![pool, next.to_be_bytes()],
                    |row| row.get::<_, Vec<u8>>(0),
                )
                .optional()?
                .map(|end| value_of(&end)),
            None => None,
        };
        if after.is_some() {
            self.delete_run(pool, value + 1)?;
        }
        let end = after.unwrap_or(value);
        match before {
            Some((start, _)) => self.set_run(pool, start, end),
            None => self.set_run(pool, value, end),
        }
    }

    /// Removes `value` from the runs of `pool`, splitting its run.
    fn unhold(&self, pool: &str, value: u128) -> rusqlite::Result<()> {
        let Some((start, end)) = self.run_containing(pool, value)? else {
            return Ok(());
        };
        if start < value {
            self.set_run(pool, start, value - 1)?;
        } else {
            self.delete_run(pool, start)?;
        }
        if value < end {
            self.set_run(pool, value + 1, end)?;
        }
        Ok(())
    }

    /// Writes the changes of a plan, in order, checking each against the stored state. New
    /// allocations are recorded as made through `network`, whose GC alone may release them.
    pub fn apply(&self, changes: &[Change], network: &str) -> Result<(), ApplyFailure> {
        for change in changes {
            self.apply_one(change, network)?;
        }
        Ok(())
    }

    fn apply_one(&self, change: &Change, network: &str) -> Result<(), ApplyFailure> {
        let pool = change.pool();
        let address = change.address();
        let version = IpVersion::of(address);
        let key = key(address);
        let conflict = || {
            ApplyFailure::Conflict(Conflict {
                change: Box::new(change.clone()),
            })
        };
        match self.family(pool)? {
            Some(family) if family != version => return Err(conflict()),
            Some(_) => {}
            None => {
                self.transaction.execute(
                    "INSERT INTO pools (name, family) VALUES (?1, ?2)",
                    params![pool, i64::from(version.number())],
                )?;
            }
        }
        let matches_stored = |holder: &Holder| -> rusqlite::Result<bool> {
            Ok(self.stored_holder(pool, &key)?.as_ref() == Some(holder))
        };
        match change {
            Change::Allocate { holder, .. } => {
                let columns = HolderColumns::of(holder);
                let inserted = self.transaction.execute(
                    &format!(
                        "INSERT INTO allocations (pool, address, {HOLDER_COLUMNS}, network)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT DO NOTHING"
                    ),
                    params![
                        pool,
                        key,
                        columns.owner_kind,
                        columns.owner_id,
                        columns.interface,
                        columns.pod_namespace,
                        columns.pod_name,
                        columns.container_id,
                        network
                    ],
                )?;
                if inserted != 1 {
                    return Err(conflict());
                }
                self.transaction.execute(
                    "UPDATE pools SET cursor = ?2, allocated = allocated + 1 WHERE name = ?1",
                    params![pool, key],
                )?;
                self.hold(pool, value_of(&key))?;
            }
            Change::Release { holder, .. } => {
                if !matches_stored(holder)? {
                    return Err(conflict());
                }
                self.transaction.execute(
                    "DELETE FROM allocations WHERE pool = ?1 AND address = ?2",
                    params![pool, key],
                )?;
                self.transaction.execute(
                    "UPDATE pools SET allocated = allocated - 1 WHERE name = ?1",
                    [pool],
                )?;
                self.unhold(pool, value_of(&key))?;
            }
            Change::Transfer { from, to, .. } => {
                if !matches_stored(from)? {
                    return Err(conflict());
                }
                let columns = HolderColumns::of(to);
                self.transaction.execute(
                    "UPDATE allocations SET owner_kind = ?3, owner_id = ?4, interface = ?5, pod_namespace = ?6,
                     pod_name = ?7, container_id = ?8 WHERE pool = ?1 AND address = ?2",
                    params![
                        pool,
                        key,
                        columns.owner_kind,
                        columns.owner_id,
                        columns.interface,
                        columns.pod_namespace,
                        columns.pod_name,
                        columns.container_id
                    ],
                )?;
            }
        }
        Ok(())
    }

    fn stored_holder(&self, pool: &str, key: &[u8; 16]) -> rusqlite::Result<Option<Holder>> {
        let columns = self
            .transaction
            .query_row(
                &format!("SELECT {HOLDER_COLUMNS} FROM allocations WHERE pool = ?1 AND address = ?2"),
                params![pool, key],
                |row| HolderColumns::read(row, 0),
            )
            .optional()?;
        Ok(columns.map(|c| c.holder()))
    }

    /// Every allocation made through `network`, for its GC.
    pub fn allocations_of_network(&self, network: &str) -> Result<Vec<HeldAddress>, StoreError> {
        self.held_where("a.network = ?1", &[&network])
            .map_err(|source| self.classify(source))
    }

    /// Held addresses matching a condition on the allocations (alias `a`), by pool and address.
    fn held_where(
        &self,
        condition: &str,
        values: &[&dyn rusqlite::ToSql],
    ) -> rusqlite::Result<Vec<HeldAddress>> {
        let mut statement = self.transaction.prepare_cached(&format!(
            "SELECT a.pool, p.family, a.address, {HOLDER_COLUMNS} FROM allocations a
             JOIN pools p ON p.name = a.pool WHERE {condition} ORDER BY a.pool, a.address"
        ))?;
        let rows = statement.query_map(values, |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, Vec<u8>>(2)?,
                HolderColumns::read(row, 3)?,
            ))
        })?;
        let mut held = Vec::new();
        for row in rows {
            let (pool, family, bytes, columns) = row?;
            let version = if family == 6 { IpVersion::V6 } else { IpVersion::V4 };
            if let Some(address) = address_of(version, &bytes) {
                held.push(HeldAddress {
                    pool,
                    address,
                    holder: columns.holder(),
                });
            }
        }
        Ok(held)
    }

    fn classify(&self, source: rusqlite::Error) -> StoreError {
        classify_with(self.path, self.busy_wait, source)
    }

    /// Names of every pool that holds or held addresses.
    pub fn pool_names(&self) -> Result<Vec<String>, StoreError> {
        let query = || -> rusqlite::Result<Vec<String>> {
            let mut statement = self.transaction.prepare("SELECT name FROM pools ORDER BY name")?;
            let names = statement.query_map([], |row| row.get(0))?;
            names.collect()
        };
        query().map_err(|source| self.classify(source))
    }

    /// The cached documents of a pool file, when its stamp is unchanged.
    pub fn cached_documents(&self, path: &str, stamp: &str) -> rusqlite::Result<Option<String>> {
        self.transaction
            .query_row(
                "SELECT documents FROM pool_files WHERE path = ?1 AND stamp = ?2",
                params![path, stamp],
                |row| row.get(0),
            )
            .optional()
    }

    /// Caches the documents of a pool file under its stamp.
    pub fn cache_documents(&self, path: &str, stamp: &str, documents: &str) -> rusqlite::Result<()> {
        self.transaction.execute(
            "INSERT INTO pool_files (path, stamp, documents) VALUES (?1, ?2, ?3)
             ON CONFLICT (path) DO UPDATE SET stamp = excluded.stamp, documents = excluded.documents",
            params![path, stamp, documents],
        )?;
        Ok(())
    }
}

/// Why a plan could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ApplyFailure {
    /// The stored state does not match the plan.
    #[error(transparent)]
    Conflict(#[from] Conflict),
    /// The database failed.
    #[error("writing the plan failed: {0}")]
    Database(#[from] rusqlite::Error),
}

impl AllocationState for Transaction<'_> {
    type Error = StoreError;

    fn holder(&self, pool: &str, address: IpAddr) -> Result<Option<Holder>, StoreError> {
        self.stored_holder(pool, &key(address))
            .map_err(|source| self.classify(source))
    }

    fn first_unheld_from(&self, pool: &str, from: IpAddr) -> Result<Option<IpAddr>, StoreError> {
        let version = IpVersion::of(from);
        let run = self
            .run_containing(pool, address_value(from))
            .map_err(|source| self.classify(source))?;
        Ok(match run {
            None => Some(from),
            Some((_, end)) => end
                .checked_add(1)
                .filter(|&next| next <= version.max_value())
                .and_then(|next| address_of(version, &next.to_be_bytes())),
        })
    }

    fn allocated_count(&self, pool: &str) -> Result<u64, StoreError> {
        let count = self
            .transaction
            .query_row("SELECT allocated FROM pools WHERE name = ?1", [pool], |row| {
                row.get::<_, i64>(0)
            })
            .optional()
            .map_err(|source| self.classify(source))?;
        Ok(count.map_or(0, |n| n.max(0) as u64))
    }

    fn held_count_in(&self, pool: &str, range: IpRange) -> Result<u128, StoreError> {
        let (start, end) = (key(range.start()), key(range.end()));
        let count = self
            .transaction
            .query_row(
                "SELECT count(*) FROM allocations WHERE pool = ?1 AND address BETWEEN ?2 AND ?3",
                params![pool, start, end],
                |row| row.get::<_, i64>(0),
            )
            .map_err(|source| self.classify(source))?;
        Ok(count.max(0) as u128)
    }

    fn cursor(&self, pool: &str) -> Result<Option<IpAddr>, StoreError> {
        let row = self
            .transaction
            .query_row(
                "SELECT family, cursor FROM pools WHERE name = ?1",
                [pool],
                |row| Ok((row.get::<_, i64>(0)?, row.get::<_, Option<Vec<u8>>>(1)?)),
            )
            .optional()
            .map_err(|source| self.classify(source))?;
        let Some((family, Some(cursor))) = row else {
            return Ok(None);
        };
        let version = if family == 6 { IpVersion::V6 } else { IpVersion::V4 };
        Ok(address_of(version, &cursor))
    }

    fn held_by(&self, owner: &OwnerKey) -> Result<Vec<HeldAddress>, StoreError> {
        let (kind, id) = match owner {
            OwnerKey::Pod(uid) => (0i64, uid),
            OwnerKey::Container(id) => (1i64, id),
        };
        self.held_where("a.owner_kind = ?1 AND a.owner_id = ?2", &[&kind, id])
            .map_err(|source| self.classify(source))
    }

    fn held_by_container(&self, container_id: &str) -> Result<Vec<HeldAddress>, StoreError> {
        self.held_where("a.container_id = ?1", &[&container_id])
            .map_err(|source| self.classify(source))
    }

    fn allocations(&self, pool: &str) -> Result<Vec<(IpAddr, Holder)>, StoreError> {
        let query = || -> rusqlite::Result<Vec<(IpAddr, Holder)>> {
            let Some(version) = self.family(pool)? else {
                return Ok(Vec::new());
            };
            let mut statement = self.transaction.prepare(&format!(
                "SELECT address, {HOLDER_COLUMNS} FROM allocations WHERE pool = ?1 ORDER BY address"
            ))?;
            let rows = statement.query_map([pool], |row| {
                Ok((row.get::<_, Vec<u8>>(0)?, HolderColumns::read(row, 1)?))
            })?;
            let mut held = Vec::new();
            for row in rows {
                let (bytes, columns) = row?;
                if let Some(address) = address_of(version, &bytes) {
                    held.push((address, columns.holder()));
                }
            }
            Ok(held)
        };
        query().map_err(|source| self.classify(source))
    }
}

#[cfg(test)]
mod tests {
    use spiderpool_core::{
        AllocateError, PoolCatalog, Request, allocate, annotations, next_free, parse_documents, release,
    };

    use super::*;
    use crate::cni::codes;
    use crate::demo::TemporaryDir;
    use crate::failure::Failure;

    /// A store in a new directory holding one pool, `p`, whose first address 10.6.0.10 is held
    /// by container `c1`; the catalog and the request that allocated it.
    fn store_with_one_allocation(
        label: &str,
        busy_wait: Duration,
    ) -> (TemporaryDir, Store, PoolCatalog, Request) {
        let dir = TemporaryDir::new(label).expect("a temporary directory");
        let mut store = Store::open(dir.path(), busy_wait).expect("a new store");
        let documents = parse_documents(
            "{apiVersion: spiderpool.spidernet.io/v2beta1, kind: SpiderIPPool, metadata: {name: p},
              spec: {subnet: 10.6.0.0/16, ips: [10.6.0.10-10.6.0.19]}}",
        )
        .expect("the pool parses");
        let catalog = PoolCatalog::from_documents(&documents);
        let mut request = Request::new("c1", "eth0");
        request
            .pod
            .annotations
            .insert(annotations::POD_IPPOOL.into(), r#"{"ipv4": ["p"]}"#.into());
        store
            .write(|transaction| {
                let plan = allocate(&catalog, transaction, &request).expect("a free address");
                transaction.apply(&plan.changes, "net").expect("the plan applies");
                Ok::<_, StoreError>(())
            })
            .expect("the first allocation");
        (dir, store, catalog, request)
    }

    /// Runs `statements` on the store's database through a connection of its own.
    fn tamper(dir: &TemporaryDir, statements: &str) {
        let connection = Connection::open(dir.path().join(STATE_FILE)).expect("the database opens");
        connection.execute_batch(statements).expect("the statements run");
    }

    #[test]
    fn a_query_the_database_cannot_answer_is_an_error_never_a_free_address() {
        let (dir, store, catalog, request) =
            store_with_one_allocation("spiderpool-store-damaged", Duration::from_secs(5));
        drop(store);
        let held: IpAddr = "10.6.0.10".parse().unwrap();
        let mut other = request.clone();
        other.container_id = "c2".into();

        // Without its allocations table the store cannot say who holds what.
        tamper(&dir, "ALTER TABLE allocations RENAME TO allocations_moved");
        let mut store = Store::open(dir.path(), Duration::from_secs(5)).expect("the store opens");
        store
            .read(|transaction| {
                let holder = transaction.holder("p", held);
                assert!(
                    matches!(&holder, Err(StoreError::Database { .. })),
                    "the holder of a held address: {holder:?}"
                );
                let text = holder.unwrap_err().to_string();
                assert!(text.contains("no such table: allocations"), "{text}");
                // A retried ADD of c1 would get a second address if its holdings read as none.
                let retry = allocate(&catalog, transaction, &request);
                assert!(
                    matches!(&retry, Err(AllocateError::State(StoreError::Database { .. }))),
                    "{retry:?}"
                );
                let text = retry.unwrap_err().to_string();
                assert!(
                    text.starts_with("reading the allocation state failed: state file "),
                    "{text}"
                );
                let owner = request.owner();
                assert!(matches!(
                    release(transaction, &owner, None),
                    Err(StoreError::Database { .. })
                ));
                Ok::<_, StoreError>(())
            })
            .expect("the reads ran");
        // Through the plugin's path: the CNI error of the store's failure, and nothing written.
        let added = store.write(|transaction| {
            let plan = allocate(&catalog, transaction, &other)?;
            transaction.apply(&plan.changes, "net")?;
            Ok::<_, Failure>(plan)
        });
        let error = added.expect_err("an ADD over a damaged store fails");
        assert_eq!(error.code(), codes::IO_FAILURE, "{error}");
        drop(store);
        tamper(&dir, "ALTER TABLE allocations_moved RENAME TO allocations");

        // Without its runs of held addresses, the search for a free one cannot skip them.
        tamper(&dir, "ALTER TABLE runs RENAME TO runs_moved");
        let mut store = Store::open(dir.path(), Duration::from_secs(5)).expect("the store opens");
        store
            .read(|transaction| {
                let unheld = transaction.first_unheld_from("p", held);
                assert!(matches!(unheld, Err(StoreError::Database { .. })), "{unheld:?}");
                let pool = catalog.pool("p").expect("the pool is valid");
                assert!(matches!(
                    next_free(transaction, pool),
                    Err(StoreError::Database { .. })
                ));
                let plan = allocate(&catalog, transaction, &other);
                assert!(
                    matches!(plan, Err(AllocateError::State(StoreError::Database { .. }))),
                    "{plan:?}"
                );
                // What is held is still read.
                assert_eq!(
                    transaction.holder("p", held)?.map(|h| h.container_id()),
                    Some("c1".into())
                );
                Ok::<_, StoreError>(())
            })
            .expect("the reads ran");
    }

    #[test]
    fn a_store_busy_under_the_engine_is_code_11() {
        let (dir, mut store, catalog, request) =
            store_with_one_allocation("spiderpool-store-busy", Duration::from_millis(50));
        // Another connection holds the database's exclusive lock for the whole read.
        let locker = Connection::open(dir.path().join(STATE_FILE)).expect("the database opens");
        locker
            .execute_batch("BEGIN EXCLUSIVE")
            .expect("the exclusive lock");
        let mut other = request.clone();
        other.container_id = "c2".into();
        store
            .read(|transaction| {
                let holder = transaction.holder("p", "10.6.0.10".parse().unwrap());
                assert!(matches!(holder, Err(StoreError::Busy { .. })), "{holder:?}");
                let error = allocate(&catalog, transaction, &other).expect_err("the state is locked");
                assert!(
                    matches!(error, AllocateError::State(StoreError::Busy { .. })),
                    "{error:?}"
                );
                let cni = Failure::from(error).render();
                assert_eq!(cni.code, codes::TRY_AGAIN_LATER, "{cni}");
                assert!(cni.msg.contains("stayed locked by other plugin calls"), "{cni}");
                Ok::<_, StoreError>(())
            })
            .expect("the reads ran");
        locker.execute_batch("ROLLBACK").expect("the lock is released");
    }
}
