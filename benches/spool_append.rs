//! The spool's write path on this machine's disk: appends per second and
//! their p99 latency with 1, 8, 32 and 128 concurrent appenders (each one
//! appending again as soon as it is answered, as a sender that waits for its
//! 202 does), removals per second in batches of 1, 64 and 1024, and the
//! latency of one small write and `fdatasync` on the same disk, which bounds
//! them all.
//!
//!   cargo bench --bench spool_append [-- SECONDS]
//!
//! Each case runs SECONDS (default 5). The spool is made in a new directory
//! under `SPOOL_BENCH_DIR` (default `target/`), which must be a real disk
//! for the figures to mean anything: the file system is printed, and tmpfs
//! is refused. The end-to-end figures (HTTP, brokers) are `benches/load.sh`'s
//! and `benches/spool.sh`'s.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use apizee_bridge::envelope::{self, Rules};
use apizee_bridge::route::{self, DEFAULT_TEMPLATE, Message, TopicTemplate};
use apizee_bridge::spool::Spool;
use bytes::Bytes;

const APPENDERS: [usize; 4] = [1, 8, 32, 128];
const REMOVE_BATCHES: [usize; 3] = [1, 64, 1024];
/// Events in the spool before the removals start; batches of 1 seldom get
/// through them all within a case.
const REMOVE_BACKLOG: u64 = 50_000;
/// Far above what a case writes: the limit must not be what is measured.
const MAX_BYTES: u64 = 4 << 30;

fn main() {
    let seconds = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map_or(Ok(5), |a| a.parse::<u64>())
        .unwrap_or_else(|e| panic!("SECONDS: {e}"));
    let case = Duration::from_secs(seconds);
    let parent = std::env::var_os("SPOOL_BENCH_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&parent).unwrap_or_else(|e| panic!("{}: {e}", parent.display()));
    let filesystem = filesystem_of(&parent);
    assert!(
        filesystem != "tmpfs",
        "{} is on tmpfs: its fsync costs nothing; set SPOOL_BENCH_DIR to a real disk",
        parent.display()
    );
    println!(
        "spool_append: in {} ({filesystem}), {seconds} s a case",
        parent.display()
    );
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));

    for (what, grow) in [("in place", false), ("growing the file", true)] {
        let fsync = fsync_latencies(&parent, grow, case.min(Duration::from_secs(3)));
        println!(
            "fsync: 4 KiB write + fdatasync, {what}: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
            fsync.len() as f64 / fsync.iter().sum::<Duration>().as_secs_f64(),
            millis(percentile(&fsync, 50)),
            millis(percentile(&fsync, 99)),
        );
    }

    for appenders in APPENDERS {
        let dir = tempfile::tempdir_in(&parent).unwrap_or_else(|e| panic!("{e}"));
        let spool = Arc::new(Spool::open(dir.path(), MAX_BYTES).unwrap_or_else(|e| panic!("{e}")));
        let (latencies, elapsed) = runtime.block_on(append_for(&spool, appenders, case));
        assert_eq!(spool.len(), latencies.len() as u64, "every append stored");
        println!(
            "append: {appenders:>3} appenders: {:>6.0} appends/s, p50 {:.2} ms, p99 {:.2} ms ({} appends); {}",
            latencies.len() as f64 / elapsed.as_secs_f64(),
            millis(percentile(&latencies, 50)),
            millis(percentile(&latencies, 99)),
            latencies.len(),
            disk_now(&parent),
        );
    }

    for batch in REMOVE_BATCHES {
        let dir = tempfile::tempdir_in(&parent).unwrap_or_else(|e| panic!("{e}"));
        let spool = Arc::new(Spool::open(dir.path(), MAX_BYTES).unwrap_or_else(|e| panic!("{e}")));
        runtime.block_on(fill(&spool, REMOVE_BACKLOG));
        let (removed, elapsed) = runtime.block_on(remove_for(&spool, batch, case));
        assert_eq!(spool.len(), REMOVE_BACKLOG - removed, "every removal done");
        println!(
            "remove: batches of {batch:>4}: {:>6.0} removals/s ({removed} removed)",
            removed as f64 / elapsed.as_secs_f64(),
        );
    }
}

/// A ticket update as the platform sends it, routed as the bridge routes
/// it (about 300 bytes once spooled), for object `object_id`. Routed once:
/// each call only changes its key and event id, so that the time measured
/// is the spool's, not the router's.
fn message(object_id: u64) -> Message {
    static ROUTED: OnceLock<Message> = OnceLock::new();
    let routed = ROUTED.get_or_init(|| {
        let body = Bytes::from_static(include_bytes!("../tests/samples/spec-ticket.json"));
        let envelope = envelope::parse(&body, Rules::default()).unwrap_or_else(|e| panic!("{e}"));
        let template =
            TopicTemplate::parse(DEFAULT_TEMPLATE, "apizee").unwrap_or_else(|e| panic!("{e}"));
        route::build_message(&envelope, body.clone(), &template, None, SystemTime::now())
            .unwrap_or_else(|e| panic!("{e}"))
    });
    let mut message = routed.clone();
    message.key = object_id.to_string();
    message.event_id = format!("{object_id:032x}");
    message
}

async fn append(spool: &Arc<Spool>, message: Message) -> u64 {
    spool
        .append(&message)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn remove(spool: &Arc<Spool>, sequences: Vec<u64>) {
    spool
        .remove(sequences)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// `appenders` tasks, each appending one event after the other for `case`;
/// the latency of every append and the time it all took.
async fn append_for(
    spool: &Arc<Spool>,
    appenders: usize,
    case: Duration,
) -> (Vec<Duration>, Duration) {
    let started = Instant::now();
    let deadline = started + case;
    let tasks: Vec<_> = (0..appenders as u64)
        .map(|appender| {
            let spool = spool.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0;
                while Instant::now() < deadline {
                    let message = message(appender * 1_000_000 + n);
                    let began = Instant::now();
                    append(&spool, message).await;
                    latencies.push(began.elapsed());
                    n += 1;
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap_or_else(|e| panic!("{e}")));
    }
    (latencies, started.elapsed())
}

/// Puts `count` events in the spool, 128 appenders at a time.
async fn fill(spool: &Arc<Spool>, count: u64) {
    let tasks: Vec<_> = (0..128)
        .map(|appender| {
            let spool = spool.clone();
            tokio::spawn(async move {
                for n in (appender..count).step_by(128) {
                    append(&spool, message(n)).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Removes the oldest events, `batch` sequences a call, one call after the
/// other as the replayer does, for `case` or until the spool is empty.
async fn remove_for(spool: &Arc<Spool>, batch: usize, case: Duration) -> (u64, Duration) {
    let mut sequences: Vec<u64> = spool
        .oldest(usize::MAX, u64::MAX)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|s| s.sequence)
        .collect();
    sequences.reverse();
    let started = Instant::now();
    let mut removed = 0;
    while started.elapsed() < case && !sequences.is_empty() {
        let split = sequences.len().saturating_sub(batch);
        let mut chunk = sequences.split_off(split);
        chunk.reverse();
        removed += chunk.len() as u64;
        remove(spool, chunk).await;
    }
    (removed, started.elapsed())
}

/// Write 4 KiB and `fdatasync` it, again and again for `case`: what one
/// commit costs at least on this disk. In place, the same 4 KiB each time,
/// as redb mostly writes pages of a file it has already grown; growing the
/// file, each 4 KiB after the last, as a log that does not preallocate
/// (`dd oflag=dsync`): every fdatasync then also commits the new size to
/// the file system's journal.
fn fsync_latencies(parent: &Path, grow: bool, case: Duration) -> Vec<Duration> {
    use std::io::{Seek, SeekFrom, Write};
    let dir = tempfile::tempdir_in(parent).unwrap_or_else(|e| panic!("{e}"));
    let mut file =
        std::fs::File::create(dir.path().join("fsync")).unwrap_or_else(|e| panic!("{e}"));
    let page = [0x5a_u8; 4096];
    let started = Instant::now();
    let mut latencies = Vec::new();
    while started.elapsed() < case {
        let began = Instant::now();
        let at = if grow {
            SeekFrom::End(0)
        } else {
            SeekFrom::Start(0)
        };
        file.seek(at)
            .and_then(|_| file.write_all(&page))
            .and_then(|()| file.sync_data())
            .unwrap_or_else(|e| panic!("{e}"));
        latencies.push(began.elapsed());
    }
    latencies
}

/// The disk's fsync (in place) right after a case: a shared disk's
/// latency swings from 0.05 to 4 ms within a minute, and a figure means
/// little without the one it was measured on.
fn disk_now(parent: &Path) -> String {
    let fsync = fsync_latencies(parent, false, Duration::from_millis(500));
    format!(
        "disk fsync just after: mean {:.2} ms",
        millis(fsync.iter().sum::<Duration>() / fsync.len().max(1) as u32)
    )
}

/// The type of the file system `path` is on, from the longest mount point
/// above it.
fn filesystem_of(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let point = fields.nth(1)?;
            let kind = fields.next()?;
            path.starts_with(point)
                .then(|| (point.len(), kind.to_owned()))
        })
        .max()
        .map_or_else(|| "unknown".to_owned(), |(_, kind)| kind)
}

fn percentile(latencies: &[Duration], percent: usize) -> Duration {
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    sorted
        .get((sorted.len() * percent / 100).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
