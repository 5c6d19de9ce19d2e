//! Streamed transactions the feed holds back. Each streamed transaction that the replicas apply while it
//! runs takes a connection of its own on every replica until it ends; many large transactions open at once
//! on the primary would take as many, past what the replicas allow. Beyond
//! `replication.max_streamed_transactions` open at once, the feed writes a new one's blocks to a file of its
//! own instead of passing them on, and at its Stream Commit hands the replicas the transaction whole, as a
//! Begin, its changes and a Commit: what the primary would have sent without streaming. Each replica then
//! applies it in commit order on its main connection. A Stream Abort of the whole transaction drops the
//! file; one of a subtransaction marks the subtransaction, whose changes are left out when the file is read
//! back. Descriptions of tables and types stay even if the subtransaction that carried them aborted: the
//! primary describes a table once per streamed transaction, not once per subtransaction.
//!
//! The primary still streams such a transaction, so it spills nothing to its own disk; the feed writes it
//! once per database, whatever the number of replicas. Nothing here is durable: a stream that starts over
//! (pgfleet restarted, a replica behind it) gets the open transactions from their beginning again, and the
//! files of the old stream, which have no name, go with their handles.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufReader, BufWriter};

use super::super::pgoutput::split_streamed;
use super::super::streamed::StreamedLoad;

/// Failures writing or reading back a held transaction.
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    /// The file could not be made, written or read.
    #[error("held streamed transaction {xid}: {action} {path}: {source}")]
    Io {
        /// The transaction.
        xid: u32,
        /// What was being done with the file.
        action: &'static str,
        /// The file.
        path: String,
        /// The system's error.
        source: std::io::Error,
    },
    /// A message of the held transaction could not be taken apart.
    #[error("held streamed transaction {xid}: {reason}")]
    Malformed {
        /// The transaction.
        xid: u32,
        /// What was wrong.
        reason: String,
    },
}

/// Files made by this process, numbered so that two streams (databases) never share a name.
static FILES: AtomicU64 = AtomicU64::new(0);

/// Messages and bytes handed over at once when a held transaction is read back.
pub(super) struct ChunkLimits {
    pub(super) messages: usize,
    pub(super) bytes: usize,
}

/// The held transactions of one stream, by xid.
pub(super) struct Spills {
    limit: usize,
    held: HashMap<u32, Spill>,
    /// What the reports show of the held transactions.
    load: Arc<StreamedLoad>,
}

impl Spills {
    /// Holds back the streamed transactions beyond `limit` applied while they run.
    pub(super) fn new(limit: usize, load: Arc<StreamedLoad>) -> Self {
        Self {
            limit,
            held: HashMap::new(),
            load,
        }
    }

    /// Whether `xid`'s blocks go to a file.
    pub(super) fn holds(&self, xid: u32) -> bool {
        self.held.contains_key(&xid)
    }

    /// A streamed transaction begins while `open` others are (held ones included): holds it back when the
    /// replicas already apply as many as the limit allows.
    pub(super) async fn begin(&mut self, xid: u32, open: usize) -> Result<bool, SpillError> {
        if !must_hold(open, self.held.len(), self.limit) {
            return Ok(false);
        }
        let spill = Spill::create(xid).await?;
        tracing::info!(xid, file = %spill.path.display(), limit = self.limit,
            "streamed transaction held back until its commit: as many are applied while they run as allowed");
        self.held.insert(xid, spill);
        self.load.hold();
        Ok(true)
    }

    /// Writes one message of a held block.
    pub(super) async fn write(&mut self, xid: u32, data: &[u8]) -> Result<(), SpillError> {
        match self.held.get_mut(&xid) {
            Some(spill) => {
                let written = spill.write(data).await?;
                self.load.wrote(written);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Subtransaction `sub` of held `xid` aborted: its changes are left out.
    pub(super) fn abort_sub(&mut self, xid: u32, sub: u32) {
        if let Some(spill) = self.held.get_mut(&xid) {
            spill.aborted.insert(sub);
        }
    }

    /// `xid` aborted: its file goes.
    pub(super) fn abort(&mut self, xid: u32) {
        if let Some(spill) = self.held.remove(&xid) {
            self.load.release(spill.bytes);
        }
    }

    /// `xid` committed (`stream_commit` is its Stream Commit): the transaction whole, to be read in chunks.
    pub(super) async fn commit(
        &mut self,
        xid: u32,
        stream_commit: &[u8],
    ) -> Result<Option<Replay>, SpillError> {
        let Some(spill) = self.held.remove(&xid) else {
            return Ok(None);
        };
        // From here the transaction is on its way to the replicas, no longer waiting for its commit.
        self.load.release(spill.bytes);
        spill.finish(stream_commit).await.map(Some)
    }
}

impl Drop for Spills {
    /// The stream ended: its held transactions (and their files) go with it.
    fn drop(&mut self) {
        for spill in self.held.values() {
            self.load.release(spill.bytes);
        }
    }
}

/// Whether a streamed transaction beginning while `open` are open, `held` of them held back, is held too.
fn must_hold(open: usize, held: usize, limit: usize) -> bool {
    open.saturating_sub(held) >= limit
}

/// One held transaction's file: records of (subtransaction xid, message without its xid). The file has no
/// name: it is deleted as soon as it is made and lives as long as it is open, so that nothing is left behind
/// when the transaction ends, the stream starts over, or pgfleet is killed.
struct Spill {
    xid: u32,
    /// Where the file was made, for messages.
    path: PathBuf,
    out: BufWriter<tokio::fs::File>,
    aborted: HashSet<u32>,
    /// Bytes written so far.
    bytes: u64,
}

impl Spill {
    async fn create(xid: u32) -> Result<Self, SpillError> {
        let n = FILES.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("pgfleet-{}-held-{n}", std::process::id()));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|source| io_error(xid, "create", &path, source))?;
        tokio::fs::remove_file(&path)
            .await
            .map_err(|source| io_error(xid, "unlink", &path, source))?;
        Ok(Spill {
            xid,
            path,
            out: BufWriter::with_capacity(256 * 1024, file),
            aborted: HashSet::new(),
            bytes: 0,
        })
    }

    /// Appends one message's record; the bytes it took.
    async fn write(&mut self, data: &[u8]) -> Result<u64, SpillError> {
        let (sub, tag, body) = split_xid(self.xid, data)?;
        let mut head = [0u8; 9];
        head[..4].copy_from_slice(&sub.to_be_bytes());
        // pgoutput messages are far below 4 GiB: a row is at most 1 GB.
        head[4..8].copy_from_slice(&(1 + body.len() as u32).to_be_bytes());
        head[8] = tag;
        let out = &mut self.out;
        let written = async {
            out.write_all(&head).await?;
            out.write_all(body).await
        };
        written
            .await
            .map_err(|source| io_error(self.xid, "write", &self.path, source))?;
        let record = (head.len() + body.len()) as u64;
        self.bytes += record;
        Ok(record)
    }

    async fn finish(mut self, stream_commit: &[u8]) -> Result<Replay, SpillError> {
        let (xid, path) = (self.xid, self.path);
        let (begin, commit) = whole_ends(stream_commit).ok_or_else(|| SpillError::Malformed {
            xid,
            reason: format!("a Stream Commit of {} bytes, not 30", stream_commit.len()),
        })?;
        let rewound = async {
            self.out.flush().await?;
            let mut file = self.out.into_inner();
            file.seek(std::io::SeekFrom::Start(0)).await?;
            Ok(file)
        };
        let file = rewound
            .await
            .map_err(|source| io_error(xid, "read back", &path, source))?;
        Ok(Replay {
            xid,
            path,
            input: BufReader::with_capacity(256 * 1024, file),
            aborted: self.aborted,
            begin: Some(begin),
            commit: Some(commit),
        })
    }
}

fn io_error(xid: u32, action: &'static str, path: &std::path::Path, source: std::io::Error) -> SpillError {
    SpillError::Io {
        xid,
        action,
        path: path.display().to_string(),
        source,
    }
}

/// The (sub)transaction a message inside a block belongs to (0 for none: the block's Origin), its type byte
/// and its fields after the xid (see [`split_streamed`]).
fn split_xid(xid: u32, data: &[u8]) -> Result<(u32, u8, &[u8]), SpillError> {
    let (sub, tag, fields) = split_streamed(data).map_err(|e| SpillError::Malformed {
        xid,
        reason: e.to_string(),
    })?;
    Ok((sub.unwrap_or(0), tag, fields))
}

/// The Begin and Commit that stand for a Stream Commit (`c`, xid, flags, commit LSN, end LSN, time): Begin is
/// `B`, final (commit) LSN, time, xid; Commit is `C`, flags, commit LSN, end LSN, time.
fn whole_ends(stream_commit: &[u8]) -> Option<(Bytes, Bytes)> {
    let xid = stream_commit.get(1..5)?;
    let flags_on = stream_commit.get(5..30)?;
    let commit_lsn = stream_commit.get(6..14)?;
    let time = stream_commit.get(22..30)?;
    let mut begin = BytesMut::with_capacity(21);
    begin.put_u8(b'B');
    begin.put_slice(commit_lsn);
    begin.put_slice(time);
    begin.put_slice(xid);
    let mut commit = BytesMut::with_capacity(26);
    commit.put_u8(b'C');
    commit.put_slice(flags_on);
    Some((begin.freeze(), commit.freeze()))
}

/// A held transaction being read back: Begin, the changes of the subtransactions that did not abort (and
/// every description), Commit.
pub(super) struct Replay {
    xid: u32,
    path: PathBuf,
    input: BufReader<tokio::fs::File>,
    aborted: HashSet<u32>,
    begin: Option<Bytes>,
    commit: Option<Bytes>,
}

impl Replay {
    /// The next messages to hand over, None once the Commit was.
    pub(super) async fn next_chunk(
        &mut self,
        limits: &ChunkLimits,
    ) -> Result<Option<Vec<Bytes>>, SpillError> {
        if self.commit.is_none() {
            return Ok(None);
        }
        let mut chunk: Vec<Bytes> = Vec::new();
        chunk.extend(self.begin.take());
        let mut bytes = 0;
        while chunk.len() < limits.messages && bytes < limits.bytes {
            let Some((sub, message)) = self.read_record().await? else {
                chunk.extend(self.commit.take());
                break;
            };
            let description = matches!(message.first(), Some(b'R' | b'Y' | b'O'));
            if description || !self.aborted.contains(&sub) {
                bytes += message.len();
                chunk.push(message);
            }
        }
        Ok(Some(chunk))
    }

    async fn read_record(&mut self) -> Result<Option<(u32, Bytes)>, SpillError> {
        let mut head = [0u8; 8];
        match self.input.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(source) => return Err(io_error(self.xid, "read", &self.path, source)),
        }
        let sub = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let mut message = vec![0u8; len];
        self.input
            .read_exact(&mut message)
            .await
            .map_err(|source| io_error(self.xid, "read", &self.path, source))?;
        Ok(Some((sub, message.into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_past_the_limit_are_held() {
        // (open, held, limit) -> held back
        let table = [
            ((0, 0, 2), false),
            ((1, 0, 2), false),
            ((2, 0, 2), true),
            ((2, 1, 2), false),
            ((3, 1, 2), true),
            ((0, 0, 0), true),
            ((5, 5, 0), true),
            ((4, 4, 1), false),
        ];
        for ((open, held, limit), expected) in table {
            assert_eq!(
                must_hold(open, held, limit),
                expected,
                "open {open}, held {held}, limit {limit}"
            );
        }
    }

    fn in_block(tag: u8, xid: u32, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&xid.to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn stream_commit(xid: u32, commit_lsn: u64, end_lsn: u64, time: i64) -> Vec<u8> {
        let mut m = vec![b'c'];
        m.extend_from_slice(&xid.to_be_bytes());
        m.push(0);
        m.extend_from_slice(&commit_lsn.to_be_bytes());
        m.extend_from_slice(&end_lsn.to_be_bytes());
        m.extend_from_slice(&time.to_be_bytes());
        m
    }

    #[tokio::test]
    async fn a_held_transaction_comes_back_whole_without_its_aborted_subtransactions() {
        let load = Arc::new(StreamedLoad::default());
        let mut spills = Spills::new(0, load.clone());
        assert!(spills.begin(700, 0).await.expect("held"));
        let origin = b"O\0\0\0\0\0\0\0\x01origin\0".to_vec();
        let written = [
            origin.clone(),
            in_block(b'R', 700, b"relation of 700"),
            in_block(b'I', 700, b"insert by the top level"),
            in_block(b'R', 701, b"relation described in 701"),
            in_block(b'I', 701, b"insert by 701, aborted"),
            in_block(b'T', 701, b"truncate by 701, aborted"),
            in_block(b'U', 702, b"update by 702, kept"),
            in_block(b'D', 700, b"delete by the top level"),
        ];
        for m in &written {
            spills.write(700, m).await.expect("written");
        }
        spills.abort_sub(700, 701);
        // Each record: subtransaction, length, type byte (9 bytes) and the message less its xid.
        let on_file: usize = written
            .iter()
            .map(|m| 9 + m.len() - 1 - if m[0] == b'O' { 0 } else { 4 })
            .sum();
        assert_eq!((load.held(), load.held_bytes()), (1, on_file as u64));
        let file = spills.held.get(&700).map(|s| s.path.clone()).expect("file");
        assert!(
            !file.exists(),
            "the file has no name once made: nothing is left behind"
        );
        let commit = stream_commit(700, 0x1_0000_0010, 0x1_0000_0040, 42);
        let mut replay = spills
            .commit(700, &commit)
            .await
            .expect("read back")
            .expect("held");
        assert!(!spills.holds(700), "a committed transaction is no longer held");
        assert_eq!((load.held(), load.held_bytes(), load.held_total()), (0, 0, 1));
        let limits = ChunkLimits {
            messages: 3,
            bytes: 1 << 20,
        };
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut chunks = 0;
        while let Some(chunk) = replay.next_chunk(&limits).await.expect("chunk") {
            chunks += 1;
            got.extend(chunk.iter().map(|b| b.to_vec()));
        }
        let mut begin = vec![b'B'];
        begin.extend_from_slice(&0x1_0000_0010u64.to_be_bytes());
        begin.extend_from_slice(&42i64.to_be_bytes());
        begin.extend_from_slice(&700u32.to_be_bytes());
        let mut end = vec![b'C', 0];
        end.extend_from_slice(&0x1_0000_0010u64.to_be_bytes());
        end.extend_from_slice(&0x1_0000_0040u64.to_be_bytes());
        end.extend_from_slice(&42i64.to_be_bytes());
        let expected: Vec<Vec<u8>> = vec![
            begin,
            origin,
            b"Rrelation of 700".to_vec(),
            b"Iinsert by the top level".to_vec(),
            b"Rrelation described in 701".to_vec(),
            b"Uupdate by 702, kept".to_vec(),
            b"Ddelete by the top level".to_vec(),
            end,
        ];
        assert_eq!(got, expected);
        assert!(chunks >= 3, "read back in chunks of at most 3 messages: {chunks}");
        assert!(
            replay.next_chunk(&limits).await.expect("after the end").is_none(),
            "nothing after the Commit"
        );
    }

    #[tokio::test]
    async fn an_aborted_transaction_leaves_no_file_and_others_are_not_held() {
        let load = Arc::new(StreamedLoad::default());
        let mut spills = Spills::new(1, load.clone());
        assert!(!spills.begin(10, 0).await.expect("first"), "below the limit");
        assert!(spills.begin(11, 1).await.expect("second"), "at the limit");
        spills
            .write(11, &in_block(b'I', 11, b"row"))
            .await
            .expect("written");
        assert_eq!((load.held(), load.held_bytes()), (1, 9 + 3));
        spills.abort(11);
        assert!(!spills.holds(11), "an aborted transaction is no longer held");
        assert_eq!((load.held(), load.held_bytes(), load.held_total()), (0, 0, 1));
        assert!(
            spills
                .commit(10, &stream_commit(10, 1, 2, 3))
                .await
                .expect("commit")
                .is_none(),
            "a transaction that was not held has nothing to read back"
        );
        assert!(
            matches!(spills.write(11, b"I").await, Ok(())),
            "a transaction no longer held takes nothing"
        );
        let mut spills = Spills::new(0, load.clone());
        assert!(spills.begin(12, 0).await.expect("held"));
        assert!(matches!(
            spills.write(12, b"I\0\0").await,
            Err(SpillError::Malformed { xid: 12, .. })
        ));
        assert!(spills.begin(13, 0).await.expect("held"));
        spills
            .write(13, &in_block(b'I', 13, b"row"))
            .await
            .expect("written");
        assert_eq!((load.held(), load.held_bytes()), (2, 12));
        drop(spills);
        assert_eq!(
            (load.held(), load.held_bytes(), load.held_total()),
            (0, 0, 3),
            "a stream that ends takes its held transactions with it"
        );
    }
}
