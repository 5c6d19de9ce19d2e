//! A logical replication connection to the primary (`replication=database`): creating a temporary slot
//! with an exported snapshot, starting pgoutput streaming, receiving CopyData and sending standby status updates.

use std::time::Duration;

use bytes::Bytes;

use super::pgoutput::{self, Lsn, ReplicationMessage};
use crate::backend::BackendConn;
use crate::backend::connect::{BackendError, Login, NodeTarget, connect};
use crate::protocol::frame::build;
use crate::protocol::messages::error_field;

/// Why the replication stream failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Connection-level failure.
    #[error(transparent)]
    Node(#[from] BackendError),
    /// The primary refused a replication command.
    #[error("the primary refused `{command}`: {message} ({code})")]
    Refused {
        /// The command.
        command: String,
        /// SQLSTATE.
        code: String,
        /// Message.
        message: String,
    },
    /// The stream carried something unexpected.
    #[error("replication stream: {0}")]
    Protocol(String),
}

/// An open replication connection.
pub(crate) struct ReplicationStream {
    conn: BackendConn,
}

impl ReplicationStream {
    /// Connects to the primary as a logical replication client for one database.
    pub(crate) async fn connect(
        target: &NodeTarget,
        user: &str,
        password: &str,
        database: &str,
        timeout: Duration,
    ) -> Result<Self, StreamError> {
        let login = Login {
            user,
            password,
            database,
            replication: true,
        };
        Ok(Self {
            conn: connect(target, &login, timeout).await?,
        })
    }

    async fn command(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, StreamError> {
        match self.conn.query_rows(sql).await? {
            Ok(rows) => Ok(rows),
            Err(e) => Err(StreamError::Refused {
                command: sql.to_owned(),
                code: error_field(e.body(), b'C').unwrap_or("XX000").to_owned(),
                message: error_field(e.body(), b'M').unwrap_or("error").to_owned(),
            }),
        }
    }

    /// Creates a temporary logical slot for pgoutput and exports its snapshot; returns (consistent point,
    /// snapshot name). The snapshot stays usable by other connections until this one runs its next command;
    /// the slot goes with the connection (it only marks where a copy's rows end).
    pub(crate) async fn create_copy_slot(&mut self, slot: &str) -> Result<(Lsn, String), StreamError> {
        let rows = self
            .command(&format!(
                "CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')"
            ))
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| StreamError::Protocol("CREATE_REPLICATION_SLOT returned no row".into()))?;
        let lsn = row
            .get(1)
            .and_then(|v| v.as_deref())
            .and_then(|text| text.parse::<Lsn>().ok())
            .ok_or_else(|| StreamError::Protocol("no consistent point in CREATE_REPLICATION_SLOT".into()))?;
        let snapshot = row
            .get(2)
            .and_then(|v| v.clone())
            .ok_or_else(|| StreamError::Protocol("no snapshot name in CREATE_REPLICATION_SLOT".into()))?;
        Ok((lsn, snapshot))
    }

    /// Starts streaming pgoutput changes of `publication` from `start`; with `in_progress`, large
    /// transactions come in blocks while they run (protocol version 2, PostgreSQL 14 and later).
    pub(crate) async fn start(
        &mut self,
        slot: &str,
        start: Lsn,
        publication: &str,
        in_progress: bool,
    ) -> Result<(), StreamError> {
        let version = if in_progress {
            "proto_version '2', streaming 'on'"
        } else {
            "proto_version '1'"
        };
        let sql = format!(
            "START_REPLICATION SLOT {slot} LOGICAL {} ({version}, publication_names '\"{}\"', messages 'true')",
            start,
            publication.replace('\'', "''").replace('"', "\"\"")
        );
        self.conn
            .write_all(&crate::protocol::messages::query(&sql))
            .await?;
        loop {
            let f = self.conn.read_frame().await?;
            match f.kind {
                b'W' => return Ok(()),
                b'E' => {
                    return Err(StreamError::Refused {
                        command: sql,
                        code: error_field(f.body(), b'C').unwrap_or("XX000").to_owned(),
                        message: error_field(f.body(), b'M').unwrap_or("error").to_owned(),
                    });
                }
                b'N' => {}
                other => {
                    return Err(StreamError::Protocol(format!(
                        "unexpected message '{}'",
                        other as char
                    )));
                }
            }
        }
    }

    /// The next message from the primary. Cancel safe.
    pub(crate) async fn next(&mut self) -> Result<ReplicationMessage, StreamError> {
        loop {
            let f = self.conn.read_frame().await?;
            match f.kind {
                b'd' => {
                    return pgoutput::decode_copy_data(&f.raw.slice(5..))
                        .map_err(|e| StreamError::Protocol(e.to_string()));
                }
                b'E' => {
                    return Err(StreamError::Refused {
                        command: "START_REPLICATION".into(),
                        code: error_field(f.body(), b'C').unwrap_or("XX000").to_owned(),
                        message: error_field(f.body(), b'M').unwrap_or("error").to_owned(),
                    });
                }
                b'c' => {
                    return Err(StreamError::Protocol(
                        "the primary ended the replication stream".into(),
                    ));
                }
                _ => {}
            }
        }
    }

    /// Whether another message is already buffered (so a batch can grow without waiting).
    pub(crate) fn has_buffered(&self) -> bool {
        self.conn.has_buffered_frame()
    }

    /// Reports how far changes are written and durably applied; the slot may free WAL up to `flushed`.
    pub(crate) async fn send_status(&mut self, flushed: Lsn, reply: bool) -> Result<(), StreamError> {
        let body: Bytes = pgoutput::standby_status_update(
            flushed,
            flushed,
            flushed,
            pgoutput::pg_epoch_micros_now(),
            reply,
        );
        self.conn.write_all(&build(b'd', &body)).await?;
        Ok(())
    }
}
