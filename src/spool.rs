//! The durable spool: where a webhook waits, on local disk, while the broker
//! is down or slow.
//!
//! A webhook the broker could not take in time is appended here and synced
//! before the sender gets `202`; a background task (`delivery`) replays the
//! spool, oldest first, once the broker is back, and removes events only
//! after the broker acknowledged them. [`Spool::holds_key`] tells whether an
//! objectId still has events here: its new webhooks queue behind them, so
//! per-objectId order holds, while other webhooks need not.
//!
//! Storage is redb: an embedded, crash-safe B-tree whose commits are fsynced
//! (`Durability::Immediate`), so a `202` survives `kill -9` and a power cut.
//! Records are small JSON documents; the payload is kept as the exact string
//! received.
//!
//! Every write goes through one thread, `spool-writer`, which owns every
//! write transaction: it takes the appends and removals queued while it was
//! committing the previous ones, writes them all in one transaction, commits
//! it with one fsync, and only then answers each (group commit, as Kafka's
//! log and PostgreSQL's WAL do). One fsync per webhook capped a spooling
//! bridge at the disk's fsyncs per second; now many senders share each one,
//! and none is answered before the fsync that covers its event. A commit
//! that fails fails every request in it. Sequences are handed out and
//! queued under one lock, and the writer takes them in that order, so
//! commits land in sequence order: a reader never sees an event while an
//! older one is still being written.
//!
//! Disk faults. redb refuses every write after one I/O error ("Previous I/O
//! error occurred"), so the writer closes the database after a write that
//! failed for the disk and opens it again (redb repairs it), with a growing
//! pause between tries, and counts what the file holds anew: that count is
//! the truth, since a commit that failed may still have reached the disk
//! (its events are then replayed, duplicates with their event ids at worst,
//! never lost). A full filesystem is met with a reserve: a file of
//! [`RESERVE_BYTES`] beside the spool, deleted when a write finds the disk
//! full, so that the repair and the removals of replayed events (which,
//! copy-on-write, write before they free) still have room. Until the reserve
//! is back, appends are refused at once ([`SpoolError::Unwritable`], a 503
//! for the sender) and [`Spool::is_writable`] says no; the writer takes it
//! back as soon as the filesystem has room for twice its size, or once the
//! replay has emptied the spool and compacting the file has given its space
//! back.

use std::collections::VecDeque;
use std::fs::File;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::io::{self, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::config::ConfigError;
use crate::route::{Message, header};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const FILE_NAME: &str = "spool.redb";
const RESERVE_FILE: &str = "spool.reserve";

/// Room kept on the spool's filesystem for what must still be written once
/// it is full: redb's repair when the database is opened again, and the
/// removals of replayed events, which write new pages before they free the
/// old ones. Measured on a full 3 MiB tmpfs: without it every removal fails
/// with ENOSPC; with 64 KiB, removals of 600 events commit. 1 MiB leaves a
/// margin for a deep tree and is nothing on a real disk.
pub const RESERVE_BYTES: u64 = 1024 * 1024;

/// The first pause before the writer tries again to reopen the database or
/// take its reserve back; it doubles up to [`RECOVERY_AT_MOST`].
const RECOVERY_FIRST: Duration = Duration::from_millis(50);
/// The longest pause between two tries: a spool is back this long at most
/// after the room is, and a try (2 MiB written for the reserve) costs
/// little at that pace.
const RECOVERY_AT_MOST: Duration = Duration::from_secs(2);
/// A fault that lasts is logged again this often, not at every try.
const FAULT_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// How long a reopen or a compaction waits for the readers of the
/// database (a replay's read takes milliseconds) to let go of it.
const READERS_AT_MOST: Duration = Duration::from_secs(5);

/// redb's page cache. Its default, 1 GiB, fills with every event written
/// until the process holds the spool twice, on disk and in memory (measured:
/// 539 MB resident after 400 MB spooled), far past a container's memory
/// limit. The spool is written at the end and read from the start, once, so
/// a small cache costs no speed; the README's memory sums count this.
pub const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// How much one transaction of the writer may hold: a group stays small
/// enough that writing it costs little next to its fsync, and those queued
/// behind it wait for one short commit, not a huge one. An append counts as
/// one event, a removal as one per sequence; the first request of a group
/// is taken whatever its size.
const GROUP_LIMITS: GroupLimits = GroupLimits {
    events: 1024,
    bytes: 4 * 1024 * 1024,
};

/// The longest the writer waits for a group to fill ([`Writer::gather`]).
const GATHER_AT_MOST: Duration = Duration::from_millis(1);

/// Slots in the table that counts, per objectId, the events waiting or
/// being written ([`Spool::holds_key`]): 4 MiB, whatever the backlog (a
/// map of every key would grow with it, to hundreds of MB for a full 1 GiB
/// spool of small webhooks). Two keys may share a slot; that can only make
/// a webhook queue behind the spool when it need not.
const KEY_SLOTS: usize = 1 << 20;
/// The memory of that table (a `u32` count per slot), for the deploy
/// files' memory limits.
pub const KEY_TABLE_BYTES: usize = KEY_SLOTS * std::mem::size_of::<u32>();

#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({limit} bytes); raise --spool-max-bytes or restore the broker")]
    Full { limit: u64 },
    #[error("spool storage failed: {0}")]
    Storage(String),
    /// A write failed for the disk (full, or failing) and the spool has not
    /// recovered yet; it does by itself, and meanwhile refuses appends.
    #[error(
        "the spool cannot write since a disk fault ({0}); it retries by itself: \
         if its filesystem is full, free space on it"
    )]
    Unwritable(String),
    #[error("cannot open the spool in {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    /// Another process has the spool open: redb locks its file, so that
    /// two writers never share it.
    #[error(
        "the spool in {} is locked: another process has it open, most likely a bridge \
         running on this directory",
        path.display()
    )]
    Locked { path: PathBuf },
    /// The spool file cannot be read: the bridge does not start on it
    /// rather than lose its events without a word.
    #[error(
        "the spool file {shown} is damaged ({reason}); the bridge does not start on it, so \
         that the webhooks it holds are not dropped without a word. Move it aside \
         (mv {shown} {shown}.damaged) and start again: the bridge makes a new, empty spool. \
         The webhooks in the damaged file were answered 202 and the bridge cannot replay \
         them: keep the file to find out which",
        shown = file.display()
    )]
    Damaged { file: PathBuf, reason: String },
}

fn storage(e: impl std::fmt::Display) -> SpoolError {
    SpoolError::Storage(e.to_string())
}

fn writer_stopped() -> SpoolError {
    SpoolError::Storage("the spool's writer has stopped".into())
}

/// What a failed write says of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiskFault {
    /// ENOSPC or a quota: room may come back.
    Full,
    /// Any other I/O error, or a database redb no longer writes to (after
    /// an I/O error, or found damaged): reopening it is the way out.
    Failed,
}

impl DiskFault {
    /// `None` for an error that says nothing of the disk (a value too
    /// large, a transaction misused): the database still writes.
    fn of(error: &redb::Error) -> Option<Self> {
        match error {
            redb::Error::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
                ) =>
            {
                Some(Self::Full)
            }
            redb::Error::Io(_)
            | redb::Error::PreviousIo
            | redb::Error::Corrupted(_)
            | redb::Error::DatabaseClosed
            | redb::Error::Backend(_) => Some(Self::Failed),
            _ => None,
        }
    }
}

/// The text of a panic caught in redb, which is how it meets some damaged
/// pages.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    format!("redb stopped on it: {text}")
}

/// One spooled event, as stored.
#[derive(Serialize, Deserialize)]
struct Record {
    topic: String,
    key: String,
    event_id: String,
    headers: Vec<(String, String)>,
    /// The body is JSON, hence UTF-8: kept as received.
    payload: String,
    spooled_at_ms: u64,
}

/// Only the key of a stored record, for the key counts.
#[derive(Deserialize)]
struct RecordKey {
    key: String,
}

fn key_of(value: &[u8]) -> Result<String, serde_json::Error> {
    serde_json::from_slice::<RecordKey>(value).map(|record| record.key)
}

impl Record {
    fn from_message(message: &Message, now: SystemTime) -> Result<Self, SpoolError> {
        Ok(Self {
            topic: message.topic.clone(),
            key: message.key.clone(),
            event_id: message.event_id.clone(),
            headers: message
                .headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            payload: String::from_utf8(message.payload.to_vec())
                .map_err(|_| SpoolError::Storage("payload is not UTF-8".into()))?,
            spooled_at_ms: millis(now),
        })
    }

    fn into_message(self) -> Message {
        Message {
            topic: self.topic,
            key: self.key,
            event_id: self.event_id,
            headers: self
                .headers
                .into_iter()
                .filter_map(|(name, value)| Some((header::canonical(&name)?, value)))
                .collect(),
            payload: Bytes::from(self.payload),
        }
    }
}

fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How many events, per slot of a key's hash, wait in the spool or are
/// being appended, and how many in all.
struct KeyCounts {
    slots: Vec<u32>,
    total: u64,
}

impl KeyCounts {
    fn new() -> Self {
        Self {
            slots: vec![0; KEY_SLOTS],
            total: 0,
        }
    }

    fn slot(key: &str) -> usize {
        // SipHash with fixed keys: a key keeps its slot for as long as the
        // process runs, which is as long as the counts live.
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        hash as usize & (KEY_SLOTS - 1)
    }

    fn add(&mut self, key: &str) {
        let count = &mut self.slots[Self::slot(key)];
        if let Some(more) = count.checked_add(1) {
            *count = more;
            self.total += 1;
        }
    }

    fn release(&mut self, key: &str) {
        let count = &mut self.slots[Self::slot(key)];
        if let Some(fewer) = count.checked_sub(1) {
            *count = fewer;
            self.total -= 1;
        }
    }

    fn holds(&self, key: &str) -> bool {
        self.slots[Self::slot(key)] > 0
    }
}

/// Counters kept in memory, rebuilt from disk at start-up and at every
/// reopen.
struct State {
    next_sequence: u64,
    /// Events on disk.
    entries: u64,
    /// Bytes on disk, and bytes reserved by appends under way.
    bytes: u64,
    /// Keys of the events on disk and of appends under way.
    keys: KeyCounts,
    /// Why appends are refused, while the writer recovers from a disk
    /// fault; kept here so that an append reads it under the lock it takes
    /// anyway.
    unwritable: Option<String>,
}

impl State {
    fn empty() -> Self {
        Self {
            next_sequence: 0,
            entries: 0,
            bytes: 0,
            keys: KeyCounts::new(),
            unwritable: None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct GroupLimits {
    events: usize,
    bytes: usize,
}

/// What the writer is asked to do; each is answered after its commit.
enum Request {
    Append {
        sequence: u64,
        key: String,
        record: Vec<u8>,
        reply: oneshot::Sender<Result<u64, SpoolError>>,
    },
    Remove {
        sequences: Vec<u64>,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
}

impl Request {
    /// Events and bytes, against [`GroupLimits`].
    fn weight(&self) -> (usize, usize) {
        match self {
            Self::Append { record, .. } => (1, record.len()),
            Self::Remove { sequences, .. } => (sequences.len(), 0),
        }
    }
}

/// A record a removal took out of the table.
struct Removed {
    bytes: u64,
    /// `None` if the record could not be read: its key stays counted, which
    /// can only make webhooks of that key queue behind the spool.
    key: Option<String>,
}

/// Why opening the database failed: a file that cannot be read, or
/// anything else (rights, a lock, a missing directory).
enum OpenFailure {
    Damaged(String),
    Locked,
    Other(String),
}

impl OpenFailure {
    fn redb(error: impl Into<redb::Error>) -> Self {
        let error = error.into();
        if matches!(error, redb::Error::DatabaseAlreadyOpen) {
            return Self::Locked;
        }
        let damaged = match &error {
            redb::Error::Corrupted(_) => true,
            redb::Error::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
            ),
            _ => false,
        };
        if damaged {
            Self::Damaged(error.to_string())
        } else {
            Self::Other(error.to_string())
        }
    }
}

/// Where the database is, so that the writer can open it again.
enum Store {
    /// `spool.redb` in this directory, its reserve beside it.
    Dir(PathBuf),
    /// Any redb backend, opened (again) by `open`: for tests that inject
    /// disk faults.
    #[cfg(test)]
    Backend {
        open: Box<dyn Fn() -> Result<Database, redb::DatabaseError> + Send + Sync>,
        reserve: Option<PathBuf>,
    },
}

impl Store {
    fn reserve(&self) -> Option<PathBuf> {
        match self {
            Self::Dir(dir) => Some(dir.join(RESERVE_FILE)),
            #[cfg(test)]
            Self::Backend { reserve, .. } => reserve.clone(),
        }
    }

    /// Opens the database and counts what it holds. A file that cannot be
    /// read, whether redb says so or panics on it, is
    /// [`SpoolError::Damaged`].
    fn open(&self) -> Result<(Database, State), SpoolError> {
        let (file, opened) = match self {
            Self::Dir(dir) => {
                let file = dir.join(FILE_NAME);
                // redb makes a new database of an empty file: a spool
                // truncated to nothing would come back empty, its events
                // gone without a word.
                if std::fs::metadata(&file).is_ok_and(|m| m.len() == 0) {
                    return Err(SpoolError::Damaged {
                        file,
                        reason: "it is empty (0 bytes), though even an empty spool has a header"
                            .into(),
                    });
                }
                let opened = open_and_count(|| {
                    Database::builder()
                        .set_cache_size(CACHE_BYTES)
                        .create(&file)
                });
                (file, opened)
            }
            #[cfg(test)]
            Self::Backend { open, .. } => (PathBuf::from("(test backend)"), open_and_count(open)),
        };
        let dir = file.parent().map(Path::to_owned).unwrap_or_default();
        opened.map_err(|failure| match failure {
            OpenFailure::Locked => SpoolError::Locked { path: dir },
            OpenFailure::Other(reason) => SpoolError::Open { path: dir, reason },
            OpenFailure::Damaged(reason) => SpoolError::Damaged { file, reason },
        })
    }
}

fn open_and_count(
    open: impl Fn() -> Result<Database, redb::DatabaseError>,
) -> Result<(Database, State), OpenFailure> {
    catch_unwind(AssertUnwindSafe(|| {
        let db = open().map_err(OpenFailure::redb)?;
        let state = count(&db)?;
        Ok((db, state))
    }))
    .unwrap_or_else(|panic| Err(OpenFailure::Damaged(panic_text(&*panic))))
}

/// Counts what a previous run (or the database before a reopen) left,
/// keys included. Reads only: a full disk does not stop it.
fn count(db: &Database) -> Result<State, OpenFailure> {
    let mut state = State::empty();
    let read = db.begin_read().map_err(OpenFailure::redb)?;
    let table = match read.open_table(EVENTS) {
        Ok(table) => table,
        // A new spool: the table is made now, so that readers find it.
        Err(redb::TableError::TableDoesNotExist(_)) => {
            let write = db.begin_write().map_err(OpenFailure::redb)?;
            write.open_table(EVENTS).map_err(OpenFailure::redb)?;
            write.commit().map_err(OpenFailure::redb)?;
            return Ok(state);
        }
        Err(e) => return Err(OpenFailure::redb(e)),
    };
    for entry in table.iter().map_err(OpenFailure::redb)? {
        let (sequence, value) = entry.map_err(OpenFailure::redb)?;
        let sequence = sequence.value();
        let key = key_of(value.value()).map_err(|e| {
            OpenFailure::Damaged(format!("spooled event {sequence} cannot be read: {e}"))
        })?;
        state.keys.add(&key);
        state.entries += 1;
        state.bytes += value.value().len() as u64;
        state.next_sequence = state.next_sequence.max(sequence + 1);
    }
    Ok(state)
}

/// Whether the reserve is in place.
fn reserve_held(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() == RESERVE_BYTES)
}

/// Makes the reserve, once twice its size could be written and synced:
/// taken back as soon as it just fits, it would leave the spool no room
/// for anything else, and the next append would find the disk full again.
/// The bytes are not all alike, so that a compressing filesystem stores
/// them all. A reserve not made is removed whole.
fn make_reserve(path: &Path) -> io::Result<()> {
    let made = (|| {
        let mut file = File::create(path)?;
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut chunk = vec![0_u8; 64 * 1024];
        for _ in 0..(2 * RESERVE_BYTES) / chunk.len() as u64 {
            for word in chunk.chunks_exact_mut(8) {
                // xorshift64
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                word.copy_from_slice(&state.to_le_bytes());
            }
            file.write_all(&chunk)?;
        }
        // A filesystem that allocates late reports ENOSPC here.
        file.sync_all()?;
        file.set_len(RESERVE_BYTES)?;
        file.sync_all()
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Takes `db` once no reader holds it any more, waiting `at_most`.
fn wait_unique(mut db: Arc<Database>, at_most: Duration) -> Result<Database, Arc<Database>> {
    let deadline = Instant::now() + at_most;
    loop {
        match Arc::try_unwrap(db) {
            Ok(db) => return Ok(db),
            Err(shared) if Instant::now() < deadline => {
                db = shared;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(shared) => return Err(shared),
        }
    }
}

/// What the callers and the writer share.
struct Shared {
    /// `None` while the writer reopens or compacts it; readers then get an
    /// error and try again later.
    db: RwLock<Option<Arc<Database>>>,
    store: Store,
    max_bytes: u64,
    state: Mutex<State>,
    /// `state.keys.total`, stored after every change under the lock: a
    /// webhook's check against an empty spool (every webhook's, while the
    /// broker is healthy) takes no lock.
    keys_held: AtomicU64,
    /// Databases opened again after a fault.
    reopens: AtomicU64,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes the count of held keys; called with `state` locked, after
    /// changing it.
    fn keys_changed(&self, state: &State) {
        self.keys_held.store(state.keys.total, Ordering::Release);
    }

    fn database(&self) -> Result<Arc<Database>, SpoolError> {
        self.db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| {
                SpoolError::Storage(
                    "the spool is being reopened after a disk fault; try again shortly".into(),
                )
            })
    }

    fn set_database(&self, db: Option<Arc<Database>>) -> Option<Arc<Database>> {
        std::mem::replace(
            &mut *self.db.write().unwrap_or_else(PoisonError::into_inner),
            db,
        )
    }

    fn unwritable(&self) -> Option<String> {
        self.state().unwritable.clone()
    }

    /// Books a group's outcome in the counters, then answers each request:
    /// only now, after its fsync, may a sender be told its event is safe.
    fn settle(&self, group: Vec<Request>, written: Result<Vec<Removed>, SpoolError>) {
        {
            let mut state = self.state();
            for request in &group {
                if let Request::Append { key, record, .. } = request {
                    if written.is_ok() {
                        state.entries += 1;
                    } else {
                        // The reservation made by `append` is given back.
                        state.bytes = state.bytes.saturating_sub(record.len() as u64);
                        state.keys.release(key);
                    }
                }
            }
            for removed in written.iter().flatten() {
                state.entries = state.entries.saturating_sub(1);
                state.bytes = state.bytes.saturating_sub(removed.bytes);
                if let Some(key) = &removed.key {
                    state.keys.release(key);
                }
            }
            self.keys_changed(&state);
        }
        for request in group {
            // A caller that went away (its connection closed) no longer
            // listens; its event is written all the same.
            match request {
                Request::Append {
                    sequence, reply, ..
                } => {
                    let _ = reply.send(written.as_ref().map(|_| sequence).map_err(Clone::clone));
                }
                Request::Remove { reply, .. } => {
                    let _ = reply.send(written.as_ref().map(|_| ()).map_err(Clone::clone));
                }
            }
        }
    }
}

/// An episode of disk fault, from the write that failed to the recovery.
struct Fault {
    since: Instant,
    /// The latest reason: the failed write, then what stops the recovery.
    reason: String,
    /// When the writer tries to recover next, and the pause after that.
    retry_at: Instant,
    backoff: Duration,
    tries: u64,
    logged_at: Instant,
}

impl Fault {
    fn new(reason: String) -> Self {
        let now = Instant::now();
        Self {
            since: now,
            reason,
            retry_at: now,
            backoff: RECOVERY_FIRST,
            tries: 0,
            logged_at: now,
        }
    }
}

enum Next {
    Request(Request),
    /// Time to try to recover.
    Retry,
    /// The spool is dropped and nothing is left to write.
    Closed,
}

/// The writer thread: one group, one transaction, one fsync, until the
/// spool is dropped and the queue is empty; and the recovery from disk
/// faults.
struct Writer<'a> {
    shared: &'a Shared,
    queue: &'a mpsc::Receiver<Request>,
    limits: GroupLimits,
    /// Requests taken from the queue and not yet written: one that would
    /// have made the previous group too big, or those queued when the
    /// database was reopened. They go before the queue.
    backlog: VecDeque<Request>,
    /// A database given up after a fault, closed once no reader holds it
    /// (redb locks its file: it cannot be opened again before).
    retired: Option<Arc<Database>>,
    fault: Option<Fault>,
    last_group: usize,
    last_commit: Duration,
}

impl<'a> Writer<'a> {
    fn new(
        shared: &'a Shared,
        queue: &'a mpsc::Receiver<Request>,
        limits: GroupLimits,
        fault: Option<Fault>,
    ) -> Self {
        Self {
            shared,
            queue,
            limits,
            backlog: VecDeque::new(),
            retired: None,
            fault,
            last_group: 0,
            last_commit: Duration::ZERO,
        }
    }

    fn run(mut self) {
        loop {
            if self
                .fault
                .as_ref()
                .is_some_and(|fault| Instant::now() >= fault.retry_at)
            {
                self.recover();
            }
            let first = match self.next() {
                Next::Request(request) => request,
                Next::Retry => continue,
                Next::Closed => return,
            };
            let group = self.gather(first);
            self.write(group);
        }
    }

    /// The next request; during a fault, waits no longer than the next try.
    fn next(&mut self) -> Next {
        if let Some(request) = self.backlog.pop_front() {
            return Next::Request(request);
        }
        let Some(fault) = &self.fault else {
            return self.queue.recv().map_or(Next::Closed, Next::Request);
        };
        match self
            .queue
            .recv_timeout(fault.retry_at.saturating_duration_since(Instant::now()))
        {
            Ok(request) => Next::Request(request),
            Err(RecvTimeoutError::Timeout) => Next::Retry,
            Err(RecvTimeoutError::Disconnected) => Next::Closed,
        }
    }

    /// A group that starts with `first`, within the limits.
    fn gather(&mut self, first: Request) -> Vec<Request> {
        let (mut events, mut bytes) = first.weight();
        let mut group = vec![first];
        // The senders the last commit answered come back with their next
        // webhooks one by one: a group taken as soon as the first is back
        // holds only that one, and the others wait a whole commit more
        // (measured: groups of 19 on average with 32 appenders). So the
        // writer waits for as many as the last group held, for at most a
        // quarter of what the last commit took (up to 1 ms): less latency
        // than a commit it saves. A lone sender never waits.
        let gather_until = Instant::now() + (self.last_commit / 4).min(GATHER_AT_MOST);
        while events < self.limits.events && bytes < self.limits.bytes {
            let next = if let Some(request) = self.backlog.pop_front() {
                Some(request)
            } else if group.len() < self.last_group {
                self.queue
                    .recv_timeout(gather_until.saturating_duration_since(Instant::now()))
                    .ok()
            } else {
                self.queue.try_recv().ok()
            };
            let Some(request) = next else {
                break;
            };
            let (more_events, more_bytes) = request.weight();
            if events + more_events > self.limits.events || bytes + more_bytes > self.limits.bytes {
                // It starts the next group.
                self.backlog.push_front(request);
                break;
            }
            events += more_events;
            bytes += more_bytes;
            group.push(request);
        }
        self.last_group = group.len();
        group
    }

    fn write(&mut self, mut group: Vec<Request>) {
        if let Some(reason) = self.shared.unwritable() {
            // Appends queued before the fault are refused without a try:
            // each would fail again, or eat the room kept for removals.
            // Removals go on: they are how a full spool empties.
            let (appends, removals) = group
                .into_iter()
                .partition(|request| matches!(request, Request::Append { .. }));
            self.shared
                .settle(appends, Err(SpoolError::Unwritable(reason.clone())));
            group = removals;
            if group.is_empty() {
                return;
            }
        }
        let db = match self.shared.database() {
            Ok(db) => db,
            Err(e) => {
                self.shared.settle(group, Err(e));
                return;
            }
        };
        let started = Instant::now();
        let written = catch_unwind(AssertUnwindSafe(|| write_group(&db, &group)));
        self.last_commit = started.elapsed();
        drop(db);
        let (error, fault) = match written {
            Ok(Ok(removed)) => {
                self.shared.settle(group, Ok(removed));
                return;
            }
            Ok(Err(e)) => (e.to_string(), DiskFault::of(&e)),
            Err(panic) => (panic_text(&*panic), Some(DiskFault::Failed)),
        };
        // Marked unwritable before the senders hear of it: one told of a
        // failure finds /readyz saying so already.
        if let Some(fault) = fault {
            self.fail(error.clone(), fault);
        }
        self.shared.settle(group, Err(SpoolError::Storage(error)));
    }

    /// After a write that failed for the disk: appends are refused, and the
    /// database is given up, to be opened again at once.
    fn fail(&mut self, reason: String, fault: DiskFault) {
        self.shared.state().unwritable = Some(reason.clone());
        if fault == DiskFault::Full
            && let Some(reserve) = self.shared.store.reserve()
        {
            // Its room is for the reopen and the removals.
            let _ = std::fs::remove_file(reserve);
        }
        if let Some(db) = self.shared.set_database(None) {
            self.retired = Some(db);
        }
        match &mut self.fault {
            Some(episode) => {
                episode.retry_at = Instant::now();
                episode.reason = reason;
            }
            None => {
                let advice = match fault {
                    DiskFault::Full => {
                        "free space on its filesystem; the replay frees some too once the \
                         broker is back"
                    }
                    DiskFault::Failed => "the spool file is opened again",
                };
                tracing::warn!(
                    error = %reason,
                    "the spool cannot write: webhooks the broker cannot take get 503 until \
                     it can; it recovers by itself once {advice}"
                );
                self.fault = Some(Fault::new(reason));
            }
        }
    }

    /// Tries to end a fault: reopens the database if it was given up, then
    /// takes the reserve back; or tries again later.
    fn recover(&mut self) {
        if let Err(reason) = self
            .reopen_if_closed()
            .and_then(|()| self.take_reserve_back())
        {
            self.retry_later(reason);
            return;
        }
        self.shared.state().unwritable = None;
        if let Some(fault) = self.fault.take() {
            tracing::info!(
                after = ?fault.since.elapsed(),
                tries = fault.tries + 1,
                reopens = self.shared.reopens.load(Ordering::Relaxed),
                "the spool can write again"
            );
        }
    }

    fn retry_later(&mut self, reason: String) {
        let Some(fault) = &mut self.fault else {
            return;
        };
        let now = Instant::now();
        fault.tries += 1;
        fault.retry_at = now + fault.backoff;
        fault.backoff = (fault.backoff * 2).min(RECOVERY_AT_MOST);
        fault.reason.clone_from(&reason);
        self.shared.state().unwritable = Some(reason.clone());
        if now.duration_since(fault.logged_at) >= FAULT_LOG_INTERVAL {
            fault.logged_at = now;
            tracing::warn!(
                error = %reason,
                since = ?fault.since.elapsed(),
                tries = fault.tries,
                "the spool still cannot write; webhooks the broker cannot take get 503"
            );
        }
    }

    fn reopen_if_closed(&mut self) -> Result<(), String> {
        if self
            .shared
            .db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
        {
            return Ok(());
        }
        if let Some(old) = self.retired.take() {
            match wait_unique(old, READERS_AT_MOST) {
                Ok(old) => drop(old),
                Err(old) => {
                    self.retired = Some(old);
                    return Err("a reader still holds the spool's database".into());
                }
            }
        }
        let (db, counted) = self.shared.store.open().map_err(|e| e.to_string())?;
        self.install(db, counted);
        self.shared.reopens.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Puts a reopened database in place, with what it holds counted anew:
    /// a commit that failed may have reached the disk or not, and only the
    /// file knows. Appends queued meanwhile hold reservations (bytes, keys,
    /// sequences) in the old counts: they are taken out of the queue now,
    /// while the lock keeps new ones out, and counted again on top.
    fn install(&mut self, db: Database, mut counted: State) {
        let mut state = self.shared.state();
        while let Ok(request) = self.queue.try_recv() {
            self.backlog.push_back(request);
        }
        for request in &self.backlog {
            if let Request::Append { key, record, .. } = request {
                counted.bytes += record.len() as u64;
                counted.keys.add(key);
            }
        }
        // Sequences already handed out are never handed out again.
        counted.next_sequence = counted.next_sequence.max(state.next_sequence);
        counted.unwritable = state.unwritable.take();
        *state = counted;
        self.shared.keys_changed(&state);
        self.shared.set_database(Some(Arc::new(db)));
    }

    /// Makes the reserve again if it is gone; an empty spool is compacted
    /// first when there is no room for it.
    fn take_reserve_back(&mut self) -> Result<(), String> {
        let Some(reserve) = self.shared.store.reserve() else {
            return Ok(());
        };
        if reserve_held(&reserve) {
            return Ok(());
        }
        let no_room = |e: io::Error| {
            format!(
                "no room for the reserve of {RESERVE_BYTES} bytes twice over at {}: {e}",
                reserve.display()
            )
        };
        let Err(e) = make_reserve(&reserve) else {
            return Ok(());
        };
        if self.shared.state().entries > 0 {
            return Err(no_room(e));
        }
        // Emptied by the replay, the spool file keeps the size it grew to:
        // redb reuses its free pages but gives them back to the filesystem
        // only when compacted. Measured on a full 3 MiB tmpfs: an empty
        // spool of 2 MiB compacts to 12 KiB.
        self.compact()?;
        make_reserve(&reserve).map_err(no_room)
    }

    fn compact(&mut self) -> Result<(), String> {
        let Some(db) = self.shared.set_database(None) else {
            return Err("the spool's database is closed".into());
        };
        let mut db = match wait_unique(db, READERS_AT_MOST) {
            Ok(db) => db,
            Err(db) => {
                self.shared.set_database(Some(db));
                return Err("a reader still holds the spool's database".into());
            }
        };
        match catch_unwind(AssertUnwindSafe(|| db.compact())) {
            Ok(Ok(_)) => {
                self.shared.set_database(Some(Arc::new(db)));
                Ok(())
            }
            // It may no longer write (redb latches I/O errors): opened again
            // at the next try.
            Ok(Err(e)) => {
                self.retired = Some(Arc::new(db));
                Err(format!("cannot compact the spool file: {e}"))
            }
            Err(panic) => {
                self.retired = Some(Arc::new(db));
                Err(format!(
                    "cannot compact the spool file: {}",
                    panic_text(&*panic)
                ))
            }
        }
    }
}

/// Writes a group in one transaction and commits it, fsync included.
/// Returns what the removals took out.
fn write_group(db: &Database, group: &[Request]) -> Result<Vec<Removed>, redb::Error> {
    let mut write = db.begin_write()?;
    // redb's default, stated: commit() returns once the group is on disk.
    write.set_durability(Durability::Immediate)?;
    let mut removed = Vec::new();
    {
        let mut table = write.open_table(EVENTS)?;
        for request in group {
            match request {
                Request::Append {
                    sequence, record, ..
                } => {
                    table.insert(*sequence, record.as_slice())?;
                }
                Request::Remove { sequences, .. } => {
                    for &sequence in sequences {
                        if let Some(value) = table.remove(sequence)? {
                            let value = value.value();
                            removed.push(Removed {
                                bytes: value.len() as u64,
                                key: key_of(value).ok(),
                            });
                        }
                    }
                }
            }
        }
    }
    write.commit()?;
    Ok(removed)
}

pub struct Spool {
    shared: Arc<Shared>,
    /// To the writer; `None` only while dropping.
    queue: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
}

/// A spooled event and its place in the spool.
pub struct Spooled {
    pub sequence: u64,
    pub message: Message,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, counting what a previous run
    /// left there, and starts its writer thread.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        std::fs::create_dir_all(dir).map_err(|e| SpoolError::Open {
            path: dir.to_owned(),
            reason: e.to_string(),
        })?;
        Self::start(Store::Dir(dir.to_owned()), max_bytes, GROUP_LIMITS)
    }

    /// Whether `dir` holds a spool, without making one: for a tool that
    /// must not leave a new, empty spool where there was none.
    pub fn exists_in(dir: &Path) -> bool {
        dir.join(FILE_NAME).is_file()
    }

    /// A spool on any redb backend, opened again by `open` after a fault,
    /// with its own group limits and, if given, a reserve file: for tests
    /// that inject disk faults or make groups small.
    #[cfg(test)]
    fn open_on(
        open: impl Fn() -> Result<Database, redb::DatabaseError> + Send + Sync + 'static,
        reserve: Option<PathBuf>,
        max_bytes: u64,
        limits: GroupLimits,
    ) -> Result<Self, SpoolError> {
        let store = Store::Backend {
            open: Box::new(open),
            reserve,
        };
        Self::start(store, max_bytes, limits)
    }

    fn start(store: Store, max_bytes: u64, limits: GroupLimits) -> Result<Self, SpoolError> {
        let (db, mut state) = store.open()?;
        // A spool that starts on a full disk still replays what it holds;
        // it takes appends once the writer has the reserve back.
        let fault = store
            .reserve()
            .filter(|reserve| !reserve_held(reserve))
            .and_then(|reserve| make_reserve(&reserve).err().map(|e| (reserve, e)))
            .map(|(reserve, e)| {
                let reason = format!(
                    "no room for the reserve of {RESERVE_BYTES} bytes twice over at {}: {e}",
                    reserve.display()
                );
                tracing::warn!(
                    error = %reason,
                    "the spool cannot write: webhooks the broker cannot take get 503 until it \
                     can; it recovers by itself once there is room on its filesystem"
                );
                state.unwritable = Some(reason.clone());
                Fault::new(reason)
            });
        let (queue, requests) = mpsc::channel();
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(Arc::new(db))),
            store,
            max_bytes,
            keys_held: AtomicU64::new(state.keys.total),
            state: Mutex::new(state),
            reopens: AtomicU64::new(0),
        });
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("spool-writer".into())
                .spawn(move || Writer::new(&shared, &requests, limits, fault).run())
                .map_err(|e| SpoolError::Storage(format!("cannot start the spool's writer: {e}")))?
        };
        Ok(Self {
            shared,
            queue: Some(queue),
            writer: Some(writer),
        })
    }

    fn send(&self, request: Request) -> Result<(), SpoolError> {
        self.queue
            .as_ref()
            .ok_or_else(writer_stopped)?
            .send(request)
            .map_err(|_| writer_stopped())
    }

    pub fn len(&self) -> u64 {
        self.shared.state().entries
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> u64 {
        self.shared.state().bytes
    }

    /// `--spool-max-bytes`.
    pub fn max_bytes(&self) -> u64 {
        self.shared.max_bytes
    }

    pub fn has_room(&self) -> bool {
        self.bytes() < self.shared.max_bytes
    }

    /// Whether the spool takes appends: false from a write that failed for
    /// the disk until the writer has recovered (reopened the database if it
    /// had to, and has its reserve back).
    pub fn is_writable(&self) -> bool {
        self.shared.state().unwritable.is_none()
    }

    /// How many times the database was opened again after a disk fault.
    pub fn reopens(&self) -> u64 {
        self.shared.reopens.load(Ordering::Relaxed)
    }

    /// Whether an event with this message key (the objectId) waits in the
    /// spool or is being appended to it, so that a webhook of that object
    /// queues behind it. It may say yes for a key with none (keys share a
    /// fixed table of counts), never no for a key with one.
    pub fn holds_key(&self, key: &str) -> bool {
        if self.shared.keys_held.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.shared.state().keys.holds(key)
    }

    /// Appends an event; returns its sequence once it is synced to disk,
    /// together with whatever else was appended meanwhile.
    pub async fn append(&self, message: &Message) -> Result<u64, SpoolError> {
        let record = serde_json::to_vec(&Record::from_message(message, SystemTime::now())?)
            .map_err(storage)?;
        let size = record.len() as u64;
        let (reply, answer) = oneshot::channel();
        {
            let mut state = self.shared.state();
            if let Some(reason) = &state.unwritable {
                return Err(SpoolError::Unwritable(reason.clone()));
            }
            // Reserved before the write, so that concurrent appends never
            // overshoot the limit; the writer gives it back if the write
            // fails.
            if state.bytes + size > self.shared.max_bytes {
                return Err(SpoolError::Full {
                    limit: self.shared.max_bytes,
                });
            }
            self.send(Request::Append {
                sequence: state.next_sequence,
                key: message.key.clone(),
                record,
                reply,
            })?;
            state.next_sequence += 1;
            state.bytes += size;
            // Counted from now, not from the commit: a webhook of the same
            // object arriving meanwhile must queue behind this one.
            state.keys.add(&message.key);
            self.shared.keys_changed(&state);
        }
        answer.await.unwrap_or_else(|_| Err(writer_stopped()))
    }

    /// The oldest events, in order: at most `limit`, and no more once they
    /// add up to `max_bytes` as stored (always one at least), so that what
    /// a reader holds stays bounded whatever the bodies' size. Blocking.
    pub fn oldest(&self, limit: usize, max_bytes: u64) -> Result<Vec<Spooled>, SpoolError> {
        self.oldest_after(None, limit, max_bytes)
    }

    /// As [`Spool::oldest`], only events after sequence `after`: the next
    /// batch of a reader whose previous ones are not yet removed.
    pub fn oldest_after(
        &self,
        after: Option<u64>,
        limit: usize,
        max_bytes: u64,
    ) -> Result<Vec<Spooled>, SpoolError> {
        let db = self.shared.database()?;
        let read = db.begin_read().map_err(storage)?;
        let table = read.open_table(EVENTS).map_err(storage)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        let entries = match after {
            Some(after) => table.range(after.saturating_add(1)..),
            None => table.iter(),
        };
        for entry in entries.map_err(storage)?.take(limit) {
            if bytes >= max_bytes {
                break;
            }
            let (sequence, value) = entry.map_err(storage)?;
            bytes += value.value().len() as u64;
            let record: Record = serde_json::from_slice(value.value()).map_err(storage)?;
            out.push(Spooled {
                sequence: sequence.value(),
                message: record.into_message(),
            });
        }
        Ok(out)
    }

    /// How long the oldest event has waited. Blocking.
    pub fn oldest_age(&self) -> Result<Option<Duration>, SpoolError> {
        let db = self.shared.database()?;
        let read = db.begin_read().map_err(storage)?;
        let table = read.open_table(EVENTS).map_err(storage)?;
        let Some(entry) = table.first().map_err(storage)? else {
            return Ok(None);
        };
        let record: Record = serde_json::from_slice(entry.1.value()).map_err(storage)?;
        let now = millis(SystemTime::now());
        Ok(Some(Duration::from_millis(
            now.saturating_sub(record.spooled_at_ms),
        )))
    }

    /// Removes delivered events, all in one transaction (with whatever else
    /// the writer has queued); sequences no longer in the spool are skipped.
    pub async fn remove(&self, sequences: Vec<u64>) -> Result<(), SpoolError> {
        if sequences.is_empty() {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        self.send(Request::Remove { sequences, reply })?;
        answer.await.unwrap_or_else(|_| Err(writer_stopped()))
    }

    /// Entries on disk, counted from the table itself (for tests and
    /// start-up checks). Blocking.
    pub fn stored_entries(&self) -> Result<u64, SpoolError> {
        let db = self.shared.database()?;
        let read = db.begin_read().map_err(storage)?;
        read.open_table(EVENTS)
            .map_err(storage)?
            .len()
            .map_err(storage)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        // With its queue closed, the writer writes what is still queued (the
        // appends of callers that went away) and ends. Waiting for it closes
        // the database before this returns: redb locks the file, and the
        // same directory may be opened again at once.
        drop(self.queue.take());
        if let Some(writer) = self.writer.take() {
            // A writer that panicked has nothing left to write.
            let _ = writer.join();
        }
    }
}

/// Flags under "Spool" in `--help`.
#[derive(Debug, clap::Args)]
pub struct SpoolArgs {
    /// Directory of the durable spool. When the broker is down or does not
    /// acknowledge in time, the webhook is synced here and answered 202,
    /// then delivered, oldest first, once the broker is back. Survives
    /// kill -9 and reboots. Without it, such webhooks get 503.
    #[arg(long, env = "APIZEE_BRIDGE_SPOOL_DIR", value_name = "PATH")]
    pub spool_dir: Option<PathBuf>,

    /// Largest size of the spool on disk; when full, webhooks get 503.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_SPOOL_MAX_BYTES",
        default_value_t = 1024 * 1024 * 1024
    )]
    pub spool_max_bytes: u64,
}

/// Where the spool lives and how big it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

impl SpoolArgs {
    pub fn settings(self) -> Result<Option<SpoolSettings>, ConfigError> {
        match self.spool_dir {
            Some(_) if self.spool_max_bytes == 0 => {
                Err(ConfigError::new("--spool-max-bytes", "must be at least 1"))
            }
            Some(dir) => Ok(Some(SpoolSettings {
                dir,
                max_bytes: self.spool_max_bytes,
            })),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Condvar;

    use redb::StorageBackend;
    use redb::backends::InMemoryBackend;

    use super::*;

    fn message(n: u32) -> Message {
        Message {
            topic: "apizee.ticket.update".into(),
            key: n.to_string(),
            event_id: format!("{n:032x}"),
            headers: vec![
                (header::CONTENT_TYPE, "application/json".into()),
                (header::OBJECT_ID, n.to_string()),
            ],
            payload: Bytes::from(format!("{{\"objectId\":{n},\n \"x\":\"é\"}}")),
        }
    }

    /// Polls `done` until it holds, failing after 10 s.
    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// A disk in memory whose fsyncs are counted, can be held (the writer
    /// then waits inside one, while the test queues more requests), and can
    /// be made to fail from the next one on.
    #[derive(Debug, Clone, Default)]
    struct Disk(Arc<DiskInner>);

    #[derive(Debug, Default)]
    struct DiskInner {
        memory: InMemoryBackend,
        syncs: Mutex<Syncs>,
        changed: Condvar,
    }

    #[derive(Debug, Default)]
    struct Syncs {
        done: u64,
        held: bool,
        waiting: bool,
        fail_from: Option<u64>,
        /// Only this fsync fails.
        fail_only: Option<u64>,
        /// Every write and fsync fails with this, until healed.
        broken: Option<std::io::ErrorKind>,
    }

    impl Disk {
        fn syncs(&self) -> MutexGuard<'_, Syncs> {
            self.0.syncs.lock().unwrap_or_else(|e| e.into_inner())
        }

        fn spool(&self, max_bytes: u64, limits: GroupLimits) -> Spool {
            self.spool_with_reserve(None, max_bytes, limits)
        }

        /// A spool on this disk, opened again on it after a fault.
        fn spool_with_reserve(
            &self,
            reserve: Option<PathBuf>,
            max_bytes: u64,
            limits: GroupLimits,
        ) -> Spool {
            let disk = self.clone();
            let open = move || Database::builder().create_with_backend(disk.clone());
            Spool::open_on(open, reserve, max_bytes, limits).unwrap_or_else(|e| panic!("{e}"))
        }

        /// Fsyncs from now on wait for [`Self::release`].
        fn hold(&self) {
            self.syncs().held = true;
        }

        fn release(&self) {
            self.syncs().held = false;
            self.0.changed.notify_all();
        }

        fn waiting(&self) -> bool {
            self.syncs().waiting
        }

        /// Fsyncs started so far, the one waiting included.
        fn count(&self) -> u64 {
            self.syncs().done
        }

        /// Every fsync after the one under way fails.
        fn fail_after_this_one(&self) {
            let mut syncs = self.syncs();
            syncs.fail_from = Some(syncs.done + 1);
        }

        /// The fsync under way fails, and no other.
        fn fail_this_one(&self) {
            let mut syncs = self.syncs();
            syncs.fail_only = Some(syncs.done);
        }

        /// Every write and fsync fails with `kind` until [`Self::heal`].
        fn break_with(&self, kind: std::io::ErrorKind) {
            self.syncs().broken = Some(kind);
        }

        fn heal(&self) {
            self.syncs().broken = None;
        }

        fn broken(&self) -> Result<(), std::io::Error> {
            match self.syncs().broken {
                Some(kind) => Err(std::io::Error::new(kind, "injected disk fault")),
                None => Ok(()),
            }
        }
    }

    impl StorageBackend for Disk {
        fn len(&self) -> Result<u64, std::io::Error> {
            self.0.memory.len()
        }

        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
            self.0.memory.read(offset, out)
        }

        fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
            self.0.memory.set_len(len)
        }

        fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
            self.broken()?;
            self.0.memory.write(offset, data)
        }

        fn sync_data(&self) -> Result<(), std::io::Error> {
            let mut syncs = self.syncs();
            syncs.done += 1;
            let number = syncs.done;
            syncs.waiting = true;
            let deadline = Instant::now() + Duration::from_secs(10);
            while syncs.held && Instant::now() < deadline {
                syncs = self
                    .0
                    .changed
                    .wait_timeout(syncs, Duration::from_millis(10))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            syncs.waiting = false;
            if syncs.fail_from.is_some_and(|from| number >= from) || syncs.fail_only == Some(number)
            {
                return Err(std::io::Error::other("injected fsync failure"));
            }
            if let Some(kind) = syncs.broken {
                return Err(std::io::Error::new(kind, "injected disk fault"));
            }
            self.0.memory.sync_data()
        }
    }

    /// Groups big enough for every test here.
    const LIMITS: GroupLimits = GroupLimits {
        events: 1024,
        bytes: 1 << 20,
    };

    #[tokio::test]
    async fn events_come_back_in_order_and_byte_for_byte_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        {
            let spool = Spool::open(dir.path(), 1 << 20).unwrap_or_else(|e| panic!("{e}"));
            for n in 0..5 {
                spool
                    .append(&message(n))
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            assert_eq!(spool.len(), 5);
        }
        let spool = Spool::open(dir.path(), 1 << 20).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spool.len(), 5);
        assert!(spool.bytes() > 0);
        let oldest = spool.oldest(3, u64::MAX).unwrap_or_else(|e| panic!("{e}"));
        let keys: Vec<&str> = oldest.iter().map(|s| s.message.key.as_str()).collect();
        assert_eq!(keys, ["0", "1", "2"]);
        assert_eq!(oldest[1].message, message(1));
        // A byte budget stops the read, and one event comes whatever it is.
        let each = spool.bytes() / 5;
        let read = |max_bytes| spool.oldest(5, max_bytes).map(|events| events.len()).ok();
        assert_eq!(read(1), Some(1));
        assert_eq!(read(each + 1), Some(2));
        assert_eq!(read(u64::MAX), Some(5));

        spool
            .remove(vec![oldest[0].sequence])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spool.len(), 4);
        assert_eq!(spool.stored_entries().unwrap_or_default(), 4);
        // New events go after the old ones, even after a reopen.
        spool
            .append(&message(9))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let keys: Vec<String> = spool
            .oldest(10, u64::MAX)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|s| s.message.key)
            .collect();
        assert_eq!(keys, ["1", "2", "3", "4", "9"]);
        assert!(spool.oldest_age().unwrap_or_default().is_some());
    }

    #[tokio::test]
    async fn a_full_spool_refuses_and_frees_room_on_remove() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let spool = Spool::open(dir.path(), 600).unwrap_or_else(|e| panic!("{e}"));
        let mut accepted = Vec::new();
        loop {
            match spool.append(&message(accepted.len() as u32)).await {
                Ok(sequence) => accepted.push(sequence),
                Err(SpoolError::Full { limit }) => {
                    assert_eq!(limit, 600);
                    break;
                }
                Err(e) => panic!("{e}"),
            }
            assert!(accepted.len() < 100, "the limit never applied");
        }
        assert!(!accepted.is_empty());
        assert!(spool.bytes() <= 600);
        spool
            .remove(vec![accepted[0]])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(spool.append(&message(99)).await.is_ok());
    }

    /// 32 appenders, each appending its own object's events one after the
    /// other (as a sender waits for its 202), through groups of at most
    /// 1000 bytes (about 4 records), so that many requests are held over to
    /// the next group: every event stored once, under the sequence it was
    /// answered with, and each object's events in the order they were
    /// answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_are_all_stored_once_in_the_order_answered() {
        let limits = GroupLimits {
            events: 1024,
            bytes: 1000,
        };
        let spool = Arc::new(Disk::default().spool(1 << 30, limits));
        let (appenders, each) = (32_u32, 20_u32);
        let tasks: Vec<_> = (0..appenders)
            .map(|appender| {
                let spool = spool.clone();
                tokio::spawn(async move {
                    let mut answered = Vec::new();
                    for n in 0..each {
                        let mut message = message(appender);
                        message.event_id = format!("{appender}-{n}");
                        let sequence = spool
                            .append(&message)
                            .await
                            .unwrap_or_else(|e| panic!("{e}"));
                        answered.push((sequence, message));
                    }
                    answered
                })
            })
            .collect();
        let mut answered = Vec::new();
        for task in tasks {
            answered.extend(task.await.unwrap_or_else(|e| panic!("{e}")));
        }
        let total = u64::from(appenders * each);
        assert_eq!(spool.len(), total);
        assert_eq!(spool.stored_entries().unwrap_or_default(), total);
        let stored = spool
            .oldest(usize::MAX, u64::MAX)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut sequences: Vec<u64> = answered.iter().map(|(sequence, _)| *sequence).collect();
        sequences.sort_unstable();
        sequences.dedup();
        assert_eq!(sequences.len() as u64, total, "a sequence given twice");
        answered.sort_by_key(|(sequence, _)| *sequence);
        for ((sequence, sent), spooled) in answered.iter().zip(&stored) {
            assert_eq!(*sequence, spooled.sequence);
            assert_eq!(*sent, spooled.message, "stored under another sequence");
        }
        for appender in 0..appenders {
            let order: Vec<&str> = stored
                .iter()
                .filter(|s| s.message.key == appender.to_string())
                .map(|s| s.message.event_id.as_str())
                .collect();
            let sent: Vec<String> = (0..each).map(|n| format!("{appender}-{n}")).collect();
            assert_eq!(order, sent, "object {appender} out of order");
        }
    }

    /// Spawns an append of `message(n)` and waits until it is queued (its
    /// key counted); returns the task.
    async fn queued_append(
        spool: &Arc<Spool>,
        n: u32,
    ) -> tokio::task::JoinHandle<Result<u64, SpoolError>> {
        let task = tokio::spawn({
            let spool = spool.clone();
            async move { spool.append(&message(n)).await }
        });
        wait_for("the append to be queued", || {
            spool.holds_key(&n.to_string())
        })
        .await;
        task
    }

    /// While the writer waits for one fsync, 31 appends queue; they are all
    /// written with the next one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_queued_together_share_one_commit() {
        let disk = Disk::default();
        let spool = Arc::new(disk.spool(1 << 20, LIMITS));
        disk.hold();
        let first = queued_append(&spool, 0).await;
        wait_for("the first commit's fsync", || disk.waiting()).await;
        let before = disk.count();
        let mut queued = Vec::new();
        for n in 1..32 {
            queued.push(queued_append(&spool, n).await);
        }
        disk.release();
        for task in std::iter::once(first).chain(queued) {
            let appended = task.await.unwrap_or_else(|e| panic!("{e}"));
            appended.unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(spool.len(), 32);
        assert_eq!(disk.count(), before + 1, "one fsync for the 31 queued");
    }

    /// A group whose fsync fails: every append and removal in it is
    /// answered with the error, and the appends give back the bytes and
    /// keys they reserved. The group before it, already on disk, stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_commit_fails_every_request_in_its_group() {
        let disk = Disk::default();
        let spool = Arc::new(disk.spool(1 << 20, LIMITS));
        disk.hold();
        let first = queued_append(&spool, 0).await;
        wait_for("the first commit's fsync", || disk.waiting()).await;
        let first_bytes = spool.bytes();
        let mut queued = Vec::new();
        for n in 1..9 {
            queued.push(queued_append(&spool, n).await);
        }
        let removal = tokio::spawn({
            let spool = spool.clone();
            async move { spool.remove(vec![0]).await }
        });
        assert!(spool.bytes() > first_bytes);
        disk.fail_after_this_one();
        disk.release();
        let sequence = first
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        for task in queued {
            let appended = task.await.unwrap_or_else(|e| panic!("{e}"));
            assert!(
                matches!(appended, Err(SpoolError::Storage(_))),
                "{appended:?}"
            );
        }
        let removed = removal.await.unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(removed, Err(SpoolError::Storage(_))),
            "{removed:?}"
        );
        assert_eq!(sequence, 0);
        assert_eq!(spool.len(), 1);
        assert_eq!(spool.bytes(), first_bytes, "the failed appends' bytes");
        assert!(spool.holds_key("0"));
        for n in 1..9 {
            assert!(!spool.holds_key(&n.to_string()), "key {n} still counted");
        }
    }

    /// A key is held from the moment its append is queued, through its
    /// commit, until its last event is removed; an append the spool
    /// refused never holds it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_is_held_from_its_append_to_its_removal() {
        let disk = Disk::default();
        let spool = Arc::new(disk.spool(600, LIMITS));
        assert!(!spool.holds_key("7"));
        disk.hold();
        let first = queued_append(&spool, 7).await;
        wait_for("the commit's fsync", || disk.waiting()).await;
        assert!(spool.holds_key("7"), "not held while being written");
        assert!(!first.is_finished());
        disk.release();
        let first = first
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(spool.holds_key("7"));
        let second = spool
            .append(&message(7))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // The third does not fit in 600 bytes.
        assert!(matches!(
            spool.append(&message(8)).await,
            Err(SpoolError::Full { .. })
        ));
        assert!(!spool.holds_key("8"), "a refused append holds its key");
        spool
            .remove(vec![first])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(spool.holds_key("7"), "one event of 7 still waits");
        spool
            .remove(vec![second])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!spool.holds_key("7"));
    }

    /// A removal is one commit however many sequences it names (missing
    /// ones skipped), and gives back their bytes and keys.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_remove_is_one_commit_and_frees_bytes_and_keys() {
        let disk = Disk::default();
        let spool = disk.spool(1 << 20, LIMITS);
        let mut sequences = Vec::new();
        for n in 0..10 {
            sequences.push(
                spool
                    .append(&message(n))
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            );
        }
        let full = spool.bytes();
        let before = disk.count();
        let mut batch = sequences[..6].to_vec();
        batch.push(999);
        spool.remove(batch).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(disk.count(), before + 1, "one commit for the batch");
        assert_eq!(spool.len(), 4);
        assert_eq!(spool.stored_entries().unwrap_or_default(), 4);
        assert!(
            spool.bytes() < full && spool.bytes() > 0,
            "{}",
            spool.bytes()
        );
        for n in 0..10 {
            assert_eq!(spool.holds_key(&n.to_string()), n >= 6, "key {n}");
        }
        spool
            .remove(sequences[6..].to_vec())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((spool.len(), spool.bytes()), (0, 0));
        assert!((0..10).all(|n| !spool.holds_key(&n.to_string())));
    }

    #[tokio::test]
    async fn a_reopen_rebuilds_len_bytes_and_keys() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (len, bytes, last) = {
            let spool = Spool::open(dir.path(), 1 << 20).unwrap_or_else(|e| panic!("{e}"));
            let mut sequences = Vec::new();
            for n in 0..5 {
                sequences.push(
                    spool
                        .append(&message(n))
                        .await
                        .unwrap_or_else(|e| panic!("{e}")),
                );
            }
            spool
                .remove(vec![sequences[1], sequences[3]])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            (spool.len(), spool.bytes(), sequences[4])
        };
        let spool = Spool::open(dir.path(), 1 << 20).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((spool.len(), spool.bytes()), (len, bytes));
        for n in 0..5 {
            assert_eq!(spool.holds_key(&n.to_string()), n % 2 == 0, "key {n}");
        }
        let next = spool
            .append(&message(5))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(next > last);
    }

    /// A caller that goes away once its append is queued, before the
    /// writer took it (its connection closed), leaves a consistent spool:
    /// the event is written and counted all the same.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_append_whose_caller_went_away_is_still_written_and_counted() {
        let disk = Disk::default();
        let spool = Arc::new(disk.spool(1 << 20, LIMITS));
        disk.hold();
        let first = queued_append(&spool, 2).await;
        wait_for("the first commit's fsync", || disk.waiting()).await;
        let abandoned = queued_append(&spool, 3).await;
        abandoned.abort();
        wait_for("the caller to go away", || abandoned.is_finished()).await;
        disk.release();
        assert!(first.await.is_ok_and(|appended| appended.is_ok()));
        wait_for("the abandoned append to be written", || spool.len() == 2).await;
        assert_eq!(spool.stored_entries().unwrap_or_default(), 2);
        assert!(spool.holds_key("3"));
    }

    /// The record as the first release wrote it, put on disk by hand: a
    /// spool left by that release opens, counts it and replays it.
    #[test]
    fn a_spool_written_by_the_first_release_opens_and_replays() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let record = r#"{"topic":"apizee.ticket.update","key":"100","event_id":"0123456789abcdef0123456789abcdef","headers":[["content-type","application/json"],["apizee-object-id","100"]],"payload":"{\"objectId\":100}","spooled_at_ms":1700000000000}"#;
        {
            let db = Database::create(dir.path().join(FILE_NAME)).unwrap_or_else(|e| panic!("{e}"));
            let write = db.begin_write().unwrap_or_else(|e| panic!("{e}"));
            write
                .open_table(EVENTS)
                .unwrap_or_else(|e| panic!("{e}"))
                .insert(41, record.as_bytes())
                .unwrap_or_else(|e| panic!("{e}"));
            write.commit().unwrap_or_else(|e| panic!("{e}"));
        }
        let spool = Spool::open(dir.path(), 1 << 20).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((spool.len(), spool.bytes()), (1, record.len() as u64));
        assert!(spool.holds_key("100"));
        let oldest = spool.oldest(1, u64::MAX).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(oldest[0].sequence, 41);
        assert_eq!(
            oldest[0].message,
            Message {
                topic: "apizee.ticket.update".into(),
                key: "100".into(),
                event_id: "0123456789abcdef0123456789abcdef".into(),
                headers: vec![
                    (header::CONTENT_TYPE, "application/json".into()),
                    (header::OBJECT_ID, "100".into()),
                ],
                payload: Bytes::from_static(br#"{"objectId":100}"#),
            }
        );
    }

    /// Whatever the counters say agrees with what the table holds: the
    /// events, their bytes, and each key held exactly when one of its
    /// events is stored (`keys` are the keys that may be asked about).
    fn assert_counts_match_the_table(spool: &Spool, keys: std::ops::Range<u32>) {
        let stored = spool
            .oldest(usize::MAX, u64::MAX)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spool.len(), stored.len() as u64, "entries");
        assert_eq!(
            spool.stored_entries().unwrap_or_default(),
            stored.len() as u64
        );
        let bytes: u64 = stored
            .iter()
            .map(|s| {
                let record = Record::from_message(&s.message, SystemTime::now())
                    .unwrap_or_else(|e| panic!("{e}"));
                // The stored time may have another width than now's.
                serde_json::to_vec(&record).map_or(0, |r| r.len() as u64)
            })
            .sum();
        assert!(
            spool.bytes().abs_diff(bytes) <= 2 * stored.len() as u64,
            "bytes {} against {bytes} stored",
            spool.bytes()
        );
        for n in keys {
            let key = n.to_string();
            let held = stored.iter().any(|s| s.message.key == key);
            assert_eq!(spool.holds_key(&key), held, "key {key}");
        }
    }

    /// A commit whose fsync fails leaves redb refusing every write: the
    /// writer reopens the database and counts it anew. The appends queued
    /// behind the failed group are kept through the reopen (their
    /// reservations counted once), written and answered; the spool writes
    /// again, and its counters agree with the table, whether or not the
    /// failed commit reached the disk (then its event is replayed: a
    /// duplicate at worst, never a loss).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_fsync_is_followed_by_a_reopen_and_the_queued_appends_are_written() {
        let disk = Disk::default();
        let spool = Arc::new(disk.spool(1 << 20, LIMITS));
        for n in 0..3 {
            spool
                .append(&message(n))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        disk.hold();
        let failing = queued_append(&spool, 3).await;
        wait_for("the commit's fsync", || disk.waiting()).await;
        let mut queued = Vec::new();
        for n in 4..8 {
            queued.push(queued_append(&spool, n).await);
        }
        disk.fail_this_one();
        disk.release();
        let failed = failing.await.unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(failed, Err(SpoolError::Storage(_))), "{failed:?}");
        for task in queued {
            let appended = task.await.unwrap_or_else(|e| panic!("{e}"));
            appended.unwrap_or_else(|e| panic!("queued behind the failure: {e}"));
        }
        assert_eq!(spool.reopens(), 1);
        assert!(spool.is_writable());
        assert_counts_match_the_table(&spool, 0..9);
        spool
            .append(&message(8))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let sequences: Vec<u64> = spool
            .oldest(usize::MAX, u64::MAX)
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(|s| s.sequence)
            .collect();
        let mut unique = sequences.clone();
        unique.dedup();
        assert_eq!(unique, sequences, "a sequence stored twice");
        spool
            .remove(sequences)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((spool.len(), spool.bytes()), (0, 0));
        assert!((0..9).all(|n| !spool.holds_key(&n.to_string())));
    }

    /// A disk that keeps failing: the spool says it cannot write and
    /// refuses appends at once (no write tried), the writer keeps trying to
    /// reopen with a pause that grows, and once the disk is back the spool
    /// writes again by itself, with what it held before intact.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_disk_that_keeps_failing_makes_the_spool_unwritable_until_it_heals() {
        let disk = Disk::default();
        let spool = disk.spool(1 << 20, LIMITS);
        for n in 0..3 {
            spool
                .append(&message(n))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        disk.break_with(std::io::ErrorKind::Other);
        let failed = spool.append(&message(3)).await;
        assert!(matches!(failed, Err(SpoolError::Storage(_))), "{failed:?}");
        assert!(!spool.is_writable());
        let syncs = disk.count();
        for n in 4..20 {
            let refused = spool.append(&message(n)).await;
            assert!(
                matches!(refused, Err(SpoolError::Unwritable(_))),
                "{refused:?}"
            );
        }
        assert!(
            disk.count() <= syncs + 2,
            "appends were tried on a failing disk"
        );
        // Tries at 50, 100, 200, 400 ms...: a few in a second, not hundreds.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!spool.is_writable());
        assert!(disk.count() < syncs + 20, "{} fsyncs", disk.count() - syncs);
        disk.heal();
        wait_for("the spool to write again", || spool.is_writable()).await;
        assert!(spool.reopens() >= 1);
        spool
            .append(&message(20))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_counts_match_the_table(&spool, 0..21);
        let keys: Vec<String> = spool
            .oldest(usize::MAX, u64::MAX)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|s| s.message.key)
            .collect();
        assert_eq!(keys[..3], ["0", "1", "2"]);
        assert_eq!(keys.last().map(String::as_str), Some("20"));
    }

    /// A full disk (ENOSPC) gives its reserve up, so that the reopen and
    /// the removals have room: removals go on while appends are refused,
    /// and the spool takes appends again only once the reserve is back.
    /// Here the reserve cannot be made while its directory is missing,
    /// which stands for a filesystem without room.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_disk_gives_up_the_reserve_and_takes_appends_again_once_it_is_back() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let room = dir.path().join("room");
        std::fs::create_dir(&room).unwrap_or_else(|e| panic!("{e}"));
        let reserve = room.join(RESERVE_FILE);
        let disk = Disk::default();
        let spool = disk.spool_with_reserve(Some(reserve.clone()), 1 << 20, LIMITS);
        assert!(reserve_held(&reserve), "no reserve made at open");
        let mut sequences = Vec::new();
        for n in 0..3 {
            sequences.push(
                spool
                    .append(&message(n))
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            );
        }
        disk.break_with(std::io::ErrorKind::StorageFull);
        let failed = spool.append(&message(3)).await;
        assert!(matches!(failed, Err(SpoolError::Storage(_))), "{failed:?}");
        assert!(!reserve.exists(), "the reserve was kept on a full disk");
        std::fs::remove_dir(&room).unwrap_or_else(|e| panic!("{e}"));
        disk.heal();
        wait_for("the reopen", || spool.reopens() >= 1).await;
        assert!(!spool.is_writable(), "writable without its reserve");
        let refused = spool.append(&message(4)).await;
        assert!(
            matches!(&refused, Err(SpoolError::Unwritable(reason)) if reason.contains("reserve")),
            "{refused:?}"
        );
        spool
            .remove(vec![sequences[0]])
            .await
            .unwrap_or_else(|e| panic!("a removal during the fault: {e}"));
        assert_counts_match_the_table(&spool, 0..5);
        std::fs::create_dir(&room).unwrap_or_else(|e| panic!("{e}"));
        wait_for("the spool to write again", || spool.is_writable()).await;
        assert!(reserve_held(&reserve));
        spool
            .append(&message(5))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_counts_match_the_table(&spool, 0..6);
    }

    /// Writes a spool of 200 events in `dir` and closes it; returns the
    /// spool file.
    async fn written_spool(dir: &Path) -> PathBuf {
        let spool = Spool::open(dir, 1 << 24).unwrap_or_else(|e| panic!("{e}"));
        for n in 0..200 {
            spool
                .append(&message(n))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        drop(spool);
        dir.join(FILE_NAME)
    }

    /// A spool file truncated (to nothing, to a few bytes, to half) or
    /// overwritten in its middle or header is never opened as a spool with
    /// fewer events: the open fails with an error that names the file and
    /// says what to do. (redb repairs a file whose last commit was cut
    /// short, but not one that lost committed pages: it says it is
    /// truncated below its layout, or panics on a damaged page, which the
    /// spool catches.) An intact copy of the same file opens with all 200.
    #[tokio::test]
    async fn a_truncated_or_corrupted_spool_file_stops_the_open_with_a_clear_error() {
        type Damage = fn(&mut Vec<u8>);
        let cases: [(&str, Damage); 6] = [
            ("truncated to nothing", |bytes| bytes.clear()),
            ("truncated to 100 bytes", |bytes| bytes.truncate(100)),
            ("truncated to half", |bytes| bytes.truncate(bytes.len() / 2)),
            ("overwritten in the middle", |bytes| {
                let middle = bytes.len() / 2;
                bytes[middle..middle + 64]
                    .iter_mut()
                    .for_each(|b| *b ^= 0xff);
            }),
            ("overwritten in its header", |bytes| {
                bytes[..64].iter_mut().for_each(|b| *b ^= 0xff);
            }),
            ("zeroed at its end", |bytes| {
                let end = bytes.len();
                bytes[end - 20_000..].iter_mut().for_each(|b| *b = 0);
            }),
        ];
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = written_spool(dir.path()).await;
        let intact = std::fs::read(&file).unwrap_or_else(|e| panic!("{e}"));
        for (case, damage) in cases {
            let mut bytes = intact.clone();
            damage(&mut bytes);
            std::fs::write(&file, &bytes).unwrap_or_else(|e| panic!("{e}"));
            match Spool::open(dir.path(), 1 << 24) {
                Err(e @ SpoolError::Damaged { .. }) => {
                    let text = e.to_string();
                    assert!(text.contains(&file.display().to_string()), "{case}: {text}");
                    assert!(text.contains("Move it aside"), "{case}: {text}");
                }
                Err(e) => panic!("{case}: not told damaged: {e}"),
                Ok(spool) => panic!("{case}: opened with {} events", spool.len()),
            }
        }
        std::fs::write(&file, &intact).unwrap_or_else(|e| panic!("{e}"));
        let spool = Spool::open(dir.path(), 1 << 24).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spool.len(), 200);
    }

    /// A record that is not the spool's JSON stops the open too.
    #[test]
    fn an_unreadable_record_stops_the_open() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        {
            let db = Database::create(dir.path().join(FILE_NAME)).unwrap_or_else(|e| panic!("{e}"));
            let write = db.begin_write().unwrap_or_else(|e| panic!("{e}"));
            write
                .open_table(EVENTS)
                .unwrap_or_else(|e| panic!("{e}"))
                .insert(7, b"not json".as_slice())
                .unwrap_or_else(|e| panic!("{e}"));
            write.commit().unwrap_or_else(|e| panic!("{e}"));
        }
        let opened = Spool::open(dir.path(), 1 << 20);
        assert!(
            matches!(&opened, Err(SpoolError::Damaged { reason, .. }) if reason.contains("event 7")),
            "{:?}",
            opened.as_ref().err()
        );
    }

    /// redb locks the file: a second opener (a tool on a running bridge's
    /// directory) is told so, naming the directory, and changes nothing.
    #[test]
    fn a_second_opener_finds_the_spool_locked() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert!(!Spool::exists_in(dir.path()));
        let first = Spool::open(dir.path(), 1 << 20).unwrap_or_else(|e| panic!("{e}"));
        assert!(Spool::exists_in(dir.path()));
        match Spool::open(dir.path(), 1 << 20) {
            Err(SpoolError::Locked { path }) => assert_eq!(path, dir.path()),
            Err(e) => panic!("not Locked: {e:?}"),
            Ok(_) => panic!("opened twice"),
        }
        drop(first);
        Spool::open(dir.path(), 1 << 20).unwrap_or_else(|e| panic!("{e}"));
    }
}
