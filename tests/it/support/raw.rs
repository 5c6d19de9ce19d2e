//! A hand-driven protocol client that sees every byte pgfleet sends: for startup, cancel, malformed-input and
//! message-splitting tests that a driver would hide. Logs in with SCRAM (as libpq does), md5 or trust.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use pgfleet::protocol::frame::build;
use pgfleet::protocol::messages::{error_field, query};
use pgfleet::protocol::startup::{encode_cancel, encode_startup};
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::cluster::{APP_DB, APP_USER, PASSWORD};

/// How long one message may take to arrive before the test fails.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One backend message: type byte and body.
pub(crate) type Msg = (u8, Vec<u8>);

/// A hand-driven client connection.
pub(crate) struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
    /// The ParameterStatus values of the greeting, in order, filled by [`Raw::login`].
    pub params: Vec<(String, String)>,
}

impl Raw {
    pub(crate) async fn connect(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("tcp connect to pgfleet");
        Raw {
            stream,
            buf: BytesMut::new(),
            params: Vec::new(),
        }
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write to pgfleet");
    }

    /// The single-byte answer to SSLRequest / GSSENCRequest.
    pub(crate) async fn read_byte(&mut self) -> u8 {
        assert!(self.buf.is_empty(), "nothing may precede the one-byte answer");
        let mut b = [0u8; 1];
        tokio::time::timeout(IO_TIMEOUT, self.stream.read_exact(&mut b))
            .await
            .expect("one-byte answer in time")
            .expect("one-byte answer");
        b[0]
    }

    /// The next message; `Ok(None)` on end of stream (or a reset), `Err(())` when nothing complete arrives
    /// within `wait`.
    pub(crate) async fn frame_within(&mut self, wait: Duration) -> Result<Option<Msg>, ()> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
                if self.buf.len() > len {
                    let kind = self.buf[0];
                    self.buf.advance(5);
                    let body = self.buf.split_to(len - 4).to_vec();
                    return Ok(Some((kind, body)));
                }
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(()),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next message; `None` at end of stream (or a reset). Panics when nothing arrives in [`IO_TIMEOUT`].
    pub(crate) async fn frame(&mut self) -> Option<Msg> {
        self.frame_within(IO_TIMEOUT)
            .await
            .unwrap_or_else(|()| panic!("nothing from pgfleet within {IO_TIMEOUT:?}"))
    }

    /// Whether the running query is still running after `wait`: no ErrorResponse, ReadyForQuery or end of
    /// stream arrived meanwhile (a RowDescription may).
    pub(crate) async fn still_running(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.frame_within(left).await {
                Err(()) => return true,
                Ok(Some((b'T', _))) => {}
                Ok(Some((kind, body))) => panic!(
                    "the query ended early: message '{}' {:?} {:?}",
                    kind as char,
                    error_field(&body, b'C'),
                    error_field(&body, b'M')
                ),
                Ok(None) => panic!("the query ended early: connection closed"),
            }
        }
    }

    /// Every message up to ReadyForQuery, which must arrive within `wait`.
    pub(crate) async fn until_ready(&mut self, wait: Duration) -> Vec<Msg> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let msg = self
                .frame_within(left)
                .await
                .unwrap_or_else(|()| panic!("no ReadyForQuery within {wait:?}; got {out:?}"))
                .expect("pgfleet closed the connection");
            let done = msg.0 == b'Z';
            out.push(msg);
            if done {
                return out;
            }
        }
    }

    /// Runs the startup (SCRAM as libpq does, or md5/trust as the server asks) up to ReadyForQuery and
    /// returns the BackendKeyData; `Err` carries the ErrorResponse body if pgfleet refused.
    pub(crate) async fn login(
        &mut self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<(i32, i32), Vec<u8>> {
        self.send(&encode_startup(&[("user", user), ("database", db)]))
            .await;
        let mut scram: Option<ScramSha256> = None;
        let mut key = None;
        loop {
            let (kind, body) = self
                .frame()
                .await
                .expect("pgfleet closed the connection during startup");
            match kind {
                b'R' => {
                    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    match code {
                        0 => {}
                        5 => {
                            let salt = [body[4], body[5], body[6], body[7]];
                            let hash = postgres_protocol::authentication::md5_hash(
                                user.as_bytes(),
                                password.as_bytes(),
                                salt,
                            );
                            let mut pw = hash.into_bytes();
                            pw.push(0);
                            self.send(&build(b'p', &pw)).await;
                        }
                        10 => {
                            let s = ScramSha256::new(password.as_bytes(), ChannelBinding::unrequested());
                            let mut msg = SCRAM_SHA_256.as_bytes().to_vec();
                            msg.push(0);
                            msg.extend_from_slice(&(s.message().len() as i32).to_be_bytes());
                            msg.extend_from_slice(s.message());
                            self.send(&build(b'p', &msg)).await;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().expect("SASLContinue after SASL");
                            s.update(&body[4..]).expect("server-first-message");
                            let reply = s.message().to_vec();
                            self.send(&build(b'p', &reply)).await;
                        }
                        12 => {
                            let s = scram.as_mut().expect("SASLFinal after SASL");
                            s.finish(&body[4..])
                                .expect("pgfleet proves it knows the password");
                        }
                        other => panic!("unexpected authentication request {other}"),
                    }
                }
                b'K' => {
                    key = Some((
                        i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                        i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                    ))
                }
                b'S' => {
                    let mut fields = body
                        .split(|b| *b == 0)
                        .map(|f| String::from_utf8_lossy(f).into_owned());
                    if let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                        self.params.push((name, value));
                    }
                }
                b'E' => return Err(body),
                b'Z' => return Ok(key.expect("BackendKeyData before ReadyForQuery")),
                _ => {}
            }
        }
    }

    /// [`Raw::login`] as the app user; a refusal fails the test.
    pub(crate) async fn login_app(&mut self) -> (i32, i32) {
        self.login(APP_USER, PASSWORD, APP_DB)
            .await
            .unwrap_or_else(|body| panic!("login refused: {:?}", error_field(&body, b'M')))
    }

    /// The first Authentication request pgfleet makes for `user` (0 ok/trust, 5 md5, 10 SASL).
    pub(crate) async fn first_auth_request(port: u16, user: &str) -> i32 {
        let mut raw = Raw::connect(port).await;
        raw.send(&encode_startup(&[("user", user), ("database", APP_DB)]))
            .await;
        let (kind, body) = raw.frame().await.expect("an answer to the startup packet");
        assert_eq!(kind, b'R', "expected an Authentication request for {user}");
        let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        if code == 10 {
            let mechanisms = String::from_utf8_lossy(&body[4..]).to_string();
            assert!(
                mechanisms.contains("SCRAM-SHA-256"),
                "mechanisms offered: {mechanisms:?}"
            );
        }
        code
    }

    /// Sends a simple Query and collects every message up to ReadyForQuery.
    pub(crate) async fn simple(&mut self, sql: &str) -> Vec<Msg> {
        self.send(&query(sql)).await;
        let mut out = Vec::new();
        loop {
            let msg = self
                .frame()
                .await
                .expect("pgfleet closed the connection during a query");
            let done = msg.0 == b'Z';
            out.push(msg);
            if done {
                return out;
            }
        }
    }

    /// Expects a FATAL with `code` and then the end of the connection; returns the message.
    pub(crate) async fn expect_fatal(&mut self, code: &str) -> String {
        let (kind, body) = self
            .frame()
            .await
            .expect("an ErrorResponse before the connection closes");
        assert_eq!(kind, b'E', "expected an ErrorResponse");
        assert_eq!(
            error_field(&body, b'S'),
            Some("FATAL"),
            "{:?}",
            error_field(&body, b'M')
        );
        assert_eq!(
            error_field(&body, b'C'),
            Some(code),
            "{:?}",
            error_field(&body, b'M')
        );
        let message = error_field(&body, b'M').unwrap_or("").to_owned();
        assert!(
            self.frame().await.is_none(),
            "the connection is closed after the FATAL"
        );
        message
    }

    /// Expects pgfleet to close the connection without sending a single byte (as PostgreSQL does with a
    /// startup packet it cannot trust).
    pub(crate) async fn expect_closed_without_a_word(&mut self) {
        let mut got = Vec::new();
        let read = tokio::time::timeout(IO_TIMEOUT, self.stream.read_to_end(&mut got)).await;
        // A reset counts as closed too: what matters is that nothing was sent.
        let _ = read.expect("the connection is closed in time");
        got.extend_from_slice(&self.buf);
        assert!(got.is_empty(), "no bytes before the close, got {got:?}");
    }
}

/// The first column of every DataRow in `msgs`, as text.
pub(crate) fn data_rows(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|(k, _)| *k == b'D')
        .map(|(_, body)| {
            let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]) as usize;
            String::from_utf8_lossy(&body[6..6 + len]).into_owned()
        })
        .collect()
}

/// The SQLSTATE of an ErrorResponse body ("" when it has none).
pub(crate) fn sqlstate(body: &[u8]) -> &str {
    error_field(body, b'C').unwrap_or("")
}

/// Sends a CancelRequest for (`pid`, `secret`) on a connection of its own and checks pgfleet answers nothing.
pub(crate) async fn send_cancel(port: u16, pid: i32, secret: i32) {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect for cancel");
    s.write_all(&encode_cancel(pid, secret))
        .await
        .expect("send CancelRequest");
    // pgfleet answers nothing and closes the socket once it has passed the cancel on (or ignored it).
    let mut b = [0u8; 16];
    let n = tokio::time::timeout(IO_TIMEOUT, s.read(&mut b))
        .await
        .expect("cancel socket closed in time");
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "a CancelRequest gets no reply bytes: {n:?}"
    );
}
