//! The durable spool: where a webhook waits, on local disk, while the broker
//! is down or slow.
//!
//! A webhook the broker could not take in time is appended here and synced
//! before the sender gets `202`; a background task replays the spool, oldest
//! first, once the broker is back, and removes each event only after the
//! broker acknowledged it. Replay is strictly in arrival order, one at a
//! time, which keeps per-objectId order; while the spool holds anything, new
//! webhooks queue behind it for the same reason.
//!
//! Storage is redb: an embedded, crash-safe B-tree whose commits are fsynced
//! (`Durability::Immediate`, its default), so a `202` survives `kill -9` and
//! a power cut. Records are small JSON documents; the payload is kept as the
//! exact string received.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::route::{Message, header};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const FILE_NAME: &str = "spool.redb";

/// redb's page cache. Its default, 1 GiB, fills with every event written
/// until the process holds the spool twice, on disk and in memory (measured:
/// 539 MB resident after 400 MB spooled), far past a container's memory
/// limit. The spool is written at the end and read from the start, once, so
/// a small cache costs no speed; the README's memory sums count this.
pub const CACHE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({limit} bytes); raise --spool-max-bytes or restore the broker")]
    Full { limit: u64 },
    #[error("spool storage failed: {0}")]
    Storage(String),
    #[error("cannot open the spool in {path}: {reason}")]
    Open { path: PathBuf, reason: String },
}

fn storage(e: impl std::fmt::Display) -> SpoolError {
    SpoolError::Storage(e.to_string())
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

/// Counters kept in memory, rebuilt from disk at start-up.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    next_sequence: u64,
    entries: u64,
    bytes: u64,
}

pub struct Spool {
    db: Database,
    max_bytes: u64,
    totals: Mutex<Totals>,
}

/// A spooled event and its place in the spool.
pub struct Spooled {
    pub sequence: u64,
    pub message: Message,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, counting what a previous run
    /// left there.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        let open_error = |reason: String| SpoolError::Open {
            path: dir.to_owned(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_error(e.to_string()))?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(dir.join(FILE_NAME))
            .map_err(|e| open_error(e.to_string()))?;
        let mut totals = Totals::default();
        {
            let write = db.begin_write().map_err(|e| open_error(e.to_string()))?;
            {
                let table = write
                    .open_table(EVENTS)
                    .map_err(|e| open_error(e.to_string()))?;
                for entry in table.iter().map_err(|e| open_error(e.to_string()))? {
                    let (sequence, value) = entry.map_err(|e| open_error(e.to_string()))?;
                    totals.entries += 1;
                    totals.bytes += value.value().len() as u64;
                    totals.next_sequence = totals.next_sequence.max(sequence.value() + 1);
                }
            }
            write.commit().map_err(|e| open_error(e.to_string()))?;
        }
        Ok(Self {
            db,
            max_bytes,
            totals: Mutex::new(totals),
        })
    }

    fn totals(&self) -> MutexGuard<'_, Totals> {
        self.totals.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> u64 {
        self.totals().entries
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> u64 {
        self.totals().bytes
    }

    /// `--spool-max-bytes`.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn has_room(&self) -> bool {
        self.bytes() < self.max_bytes
    }

    /// Appends an event and syncs it to disk. Blocking: call it from
    /// `spawn_blocking`.
    pub fn append(&self, message: &Message) -> Result<u64, SpoolError> {
        let record = serde_json::to_vec(&Record::from_message(message, SystemTime::now())?)
            .map_err(storage)?;
        let size = record.len() as u64;
        // Reserve the sequence and the bytes first, so concurrent appends
        // never overshoot the limit; give the bytes back if the write fails.
        let sequence = {
            let mut totals = self.totals();
            if totals.bytes + size > self.max_bytes {
                return Err(SpoolError::Full {
                    limit: self.max_bytes,
                });
            }
            totals.bytes += size;
            totals.next_sequence += 1;
            totals.next_sequence - 1
        };
        let written = (|| {
            let write = self.db.begin_write().map_err(storage)?;
            write
                .open_table(EVENTS)
                .map_err(storage)?
                .insert(sequence, record.as_slice())
                .map_err(storage)?;
            write.commit().map_err(storage)
        })();
        let mut totals = self.totals();
        match written {
            Ok(()) => {
                totals.entries += 1;
                Ok(sequence)
            }
            Err(e) => {
                totals.bytes -= size;
                Err(e)
            }
        }
    }

    /// The oldest events, in order. Blocking.
    pub fn oldest(&self, limit: usize) -> Result<Vec<Spooled>, SpoolError> {
        let read = self.db.begin_read().map_err(storage)?;
        let table = read.open_table(EVENTS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(storage)?.take(limit) {
            let (sequence, value) = entry.map_err(storage)?;
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
        let read = self.db.begin_read().map_err(storage)?;
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

    /// Removes a delivered event. Blocking.
    pub fn remove(&self, sequence: u64) -> Result<(), SpoolError> {
        let write = self.db.begin_write().map_err(storage)?;
        let removed = write
            .open_table(EVENTS)
            .map_err(storage)?
            .remove(sequence)
            .map_err(storage)?
            .map(|value| value.value().len() as u64);
        write.commit().map_err(storage)?;
        if let Some(size) = removed {
            let mut totals = self.totals();
            totals.entries = totals.entries.saturating_sub(1);
            totals.bytes = totals.bytes.saturating_sub(size);
        }
        Ok(())
    }

    /// Entries on disk, counted from the table itself (for tests and
    /// start-up checks). Blocking.
    pub fn stored_entries(&self) -> Result<u64, SpoolError> {
        let read = self.db.begin_read().map_err(storage)?;
        read.open_table(EVENTS)
            .map_err(storage)?
            .len()
            .map_err(storage)
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

    #[test]
    fn events_come_back_in_order_and_byte_for_byte_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        {
            let spool = Spool::open(dir.path(), 1 << 20).unwrap_or_else(|e| panic!("{e}"));
            for n in 0..5 {
                spool.append(&message(n)).unwrap_or_else(|e| panic!("{e}"));
            }
            assert_eq!(spool.len(), 5);
        }
        let spool = Spool::open(dir.path(), 1 << 20).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spool.len(), 5);
        assert!(spool.bytes() > 0);
        let oldest = spool.oldest(3).unwrap_or_else(|e| panic!("{e}"));
        let keys: Vec<&str> = oldest.iter().map(|s| s.message.key.as_str()).collect();
        assert_eq!(keys, ["0", "1", "2"]);
        assert_eq!(oldest[1].message, message(1));

        spool
            .remove(oldest[0].sequence)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spool.len(), 4);
        assert_eq!(spool.stored_entries().unwrap_or_default(), 4);
        // New events go after the old ones, even after a reopen.
        spool.append(&message(9)).unwrap_or_else(|e| panic!("{e}"));
        let keys: Vec<String> = spool
            .oldest(10)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|s| s.message.key)
            .collect();
        assert_eq!(keys, ["1", "2", "3", "4", "9"]);
        assert!(spool.oldest_age().unwrap_or_default().is_some());
    }

    #[test]
    fn a_full_spool_refuses_and_frees_room_on_remove() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let spool = Spool::open(dir.path(), 600).unwrap_or_else(|e| panic!("{e}"));
        let mut accepted = Vec::new();
        loop {
            match spool.append(&message(accepted.len() as u32)) {
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
        spool.remove(accepted[0]).unwrap_or_else(|e| panic!("{e}"));
        assert!(spool.append(&message(99)).is_ok());
    }
}
