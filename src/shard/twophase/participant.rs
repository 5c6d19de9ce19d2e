//! The narrow view the commit protocol has of a shard's connection: run one simple-query string, get its
//! rows as text or the server's error. The session implements it over its own protocol connections; the
//! implementation for `tokio_postgres::Client` here serves recovery's tests and tools.

use std::future::Future;

/// Rows of a simple query, every column as text (None for NULL).
pub type Rows = Vec<Vec<Option<String>>>;

/// Why a participant's statement did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParticipantError {
    /// The server answered with an ERROR: the statement did not take effect. (A FATAL that ends the
    /// session, SQLSTATE class 08 or 57P, is a [`ParticipantError::Connection`]: the statement may have
    /// completed just before it.)
    #[error("{message}")]
    Server {
        /// SQLSTATE.
        code: String,
        /// The server's message.
        message: String,
        /// Its DETAIL, if any.
        detail: Option<String>,
    },
    /// The connection broke (or timed out) before the answer: whether the statement took effect is unknown.
    #[error("connection lost: {0}")]
    Connection(String),
}

impl ParticipantError {
    /// A server error with that SQLSTATE and message.
    pub fn server(code: &str, message: impl Into<String>) -> ParticipantError {
        ParticipantError::Server {
            code: code.to_owned(),
            message: message.into(),
            detail: None,
        }
    }

    /// The SQLSTATE a client should see: the server's, or 08006 for a lost connection.
    pub fn sqlstate(&self) -> &str {
        match self {
            ParticipantError::Server { code, .. } => code,
            ParticipantError::Connection(_) => "08006",
        }
    }

    /// True when the server answered: the statement certainly did not take effect.
    pub fn is_server(&self) -> bool {
        matches!(self, ParticipantError::Server { .. })
    }
}

/// One shard's connection, inside the distributed transaction's open transaction block.
pub trait Participant {
    /// Sends `sql` as one simple Query message (it may hold several statements separated by `;`, which
    /// run in order and stop at the first error) and returns the rows of all of them, in order. An
    /// ErrorResponse is [`ParticipantError::Server`]; a broken connection [`ParticipantError::Connection`].
    fn execute(&mut self, sql: &str) -> impl Future<Output = Result<Rows, ParticipantError>> + Send;
}

impl Participant for tokio_postgres::Client {
    async fn execute(&mut self, sql: &str) -> Result<Rows, ParticipantError> {
        let messages = self.simple_query(sql).await.map_err(from_postgres)?;
        let mut rows = Vec::new();
        for message in messages {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                rows.push((0..row.len()).map(|i| row.get(i).map(str::to_owned)).collect());
            }
        }
        Ok(rows)
    }
}

/// A tokio-postgres error as a participant error: a server answer or a lost connection.
pub(crate) fn from_postgres(e: tokio_postgres::Error) -> ParticipantError {
    match e.as_db_error() {
        Some(db) if !ends_session(db.code().code()) => ParticipantError::Server {
            code: db.code().code().to_owned(),
            message: db.message().to_owned(),
            detail: db.detail().map(str::to_owned),
        },
        _ => ParticipantError::Connection(match std::error::Error::source(&e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        }),
    }
}

/// SQLSTATEs of the errors a server sends as it ends the session (FATAL): connection exceptions and
/// operator intervention (pg_terminate_backend, shutdown).
pub fn ends_session(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57P")
}
