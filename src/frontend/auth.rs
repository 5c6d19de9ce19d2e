//! Client authentication: the exchange between a client's StartupMessage and AuthenticationOk.
//!
//! This module owns the choice of method for a user (`[[users]].auth`: SCRAM-SHA-256, md5 or trust), the
//! Authentication / password messages on the wire, PostgreSQL-style mock authentication for users that do not
//! exist, and the SQLSTATE and wording a failure is reported with. It never sends an ErrorResponse itself:
//! the caller decides, and builds one with `protocol::messages::ProxyError`. The SCRAM arithmetic lives in
//! `frontend::scram`.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use bytes::{Bytes, BytesMut};
use pgwire::error::PgWireError;
use pgwire::messages::Message;
use pgwire::messages::startup::{Authentication, PasswordMessageFamily};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::config::{AuthMethod, UserConfig};
use crate::frontend::scram::{self, ScramError, ScramSecret, ScramServer};

/// PostgreSQL's cap on one authentication message (PG_MAX_AUTH_TOKEN_LENGTH). Real SCRAM and md5 messages
/// are a few hundred bytes; the cap keeps an unauthenticated client from making us buffer more.
pub(crate) const MAX_AUTH_MESSAGE_SIZE: usize = 65535;

/// Derived SCRAM secrets kept at most this many; past it the cache starts over (passwords changed by many
/// reloads would otherwise accumulate).
const SECRET_CACHE_CAPACITY: usize = 1024;

/// Why a client was not let in.
///
/// `Display` is for the proxy's own log and may say more than the client should hear (for instance that a
/// user does not exist); send [`AuthError::message`] and [`AuthError::sqlstate`] to the client.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    /// The password (or SCRAM proof, or md5 digest) was wrong.
    #[error("password authentication failed for user \"{user}\"")]
    WrongPassword {
        /// The user name from the startup packet.
        user: String,
    },
    /// No `[[users]]` entry for this name; the client went through a mock exchange and is told the same as
    /// for a wrong password.
    #[error("password authentication failed for user \"{user}\": no such user is configured")]
    UnknownUser {
        /// The user name from the startup packet.
        user: String,
    },
    /// The client broke the protocol; the text is what PostgreSQL would say.
    #[error("protocol violation during authentication: {0}")]
    Protocol(String),
    /// The client went away mid-exchange, as psql does when it learns that it must prompt for a password.
    /// There is nobody left to send an error to.
    #[error("client closed the connection during authentication")]
    ClientClosed,
    /// Reading from or writing to the client failed.
    #[error("I/O error during authentication: {0}")]
    Io(#[from] std::io::Error),
    /// An Authentication message could not be encoded (a bug, not the client's doing).
    #[error("cannot encode authentication message: {0}")]
    Encode(#[from] PgWireError),
}

impl AuthError {
    /// The SQLSTATE to send the client.
    pub(crate) fn sqlstate(&self) -> &'static str {
        match self {
            // invalid_password: PostgreSQL uses it for unknown roles too, so as not to reveal which exist.
            AuthError::WrongPassword { .. } | AuthError::UnknownUser { .. } => "28P01",
            AuthError::Protocol(_) => "08P01",
            AuthError::ClientClosed | AuthError::Io(_) => "08006",
            AuthError::Encode(_) => "XX000",
        }
    }

    /// The message to send the client, worded as PostgreSQL words it.
    pub(crate) fn message(&self) -> String {
        match self {
            AuthError::WrongPassword { user } | AuthError::UnknownUser { user } => {
                format!("password authentication failed for user \"{user}\"")
            }
            AuthError::Protocol(message) => message.clone(),
            AuthError::ClientClosed => "unexpected EOF on client connection".to_owned(),
            AuthError::Io(err) => format!("could not receive data from client: {err}"),
            AuthError::Encode(_) => "internal error during authentication".to_owned(),
        }
    }
}

/// Authenticates one client whose StartupMessage named `user_name`; `user` is its `[[users]]` entry, if any.
///
/// On success AuthenticationOk has been sent and flushed; the caller continues with ParameterStatus,
/// BackendKeyData and ReadyForQuery. On failure nothing more has been sent. `max_message_size` bounds each
/// password message (further capped at [`MAX_AUTH_MESSAGE_SIZE`]). There is no timeout here: wrap the call
/// in one.
pub(crate) async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    user_name: &str,
    user: Option<&UserConfig>,
    max_message_size: usize,
) -> Result<(), AuthError> {
    let limit = max_message_size.min(MAX_AUTH_MESSAGE_SIZE);
    let (method, outcome) = match user {
        // PostgreSQL's default method is SCRAM, so an unknown user is walked through that.
        None => {
            let outcome = scram_exchange(stream, user_name, ScramSecret::mock(user_name), limit).await;
            let outcome = match outcome {
                Err(AuthError::WrongPassword { user }) => Err(AuthError::UnknownUser { user }),
                other => other,
            };
            ("scram-sha-256", outcome)
        }
        Some(user) => match user.auth {
            AuthMethod::Trust => ("trust", Ok(None)),
            AuthMethod::Md5 => (
                "md5",
                md5_exchange(stream, user_name, &user.password, limit).await,
            ),
            AuthMethod::ScramSha256 => {
                // An empty password never matches, as in PostgreSQL where a role without one gets mock auth.
                let secret = if user.password.is_empty() {
                    ScramSecret::mock(user_name)
                } else {
                    cached_secret(user_name, &user.password)
                };
                (
                    "scram-sha-256",
                    scram_exchange(stream, user_name, secret, limit).await,
                )
            }
        },
    };

    let result = match outcome {
        Ok(sasl_final) => {
            let mut messages = Vec::with_capacity(2);
            if let Some(data) = sasl_final {
                messages.push(Authentication::SASLFinal(data));
            }
            messages.push(Authentication::Ok);
            send(stream, &messages).await
        }
        Err(err) => Err(err),
    };
    match &result {
        Ok(()) => debug!(user = user_name, method, "client authenticated"),
        Err(err) => debug!(user = user_name, method, error = %err, "client authentication failed"),
    }
    result
}

/// Runs SASL with SCRAM-SHA-256 up to, not including, AuthenticationSASLFinal, whose data it returns so that
/// the caller can send it together with AuthenticationOk.
async fn scram_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    user_name: &str,
    secret: ScramSecret,
    limit: usize,
) -> Result<Option<Bytes>, AuthError> {
    let scram_error = |err: ScramError| match err {
        ScramError::WrongPassword => AuthError::WrongPassword {
            user: user_name.to_owned(),
        },
        other => AuthError::Protocol(other.to_string()),
    };

    send(stream, &[Authentication::SASL(vec![scram::MECHANISM.to_owned()])]).await?;
    let body = read_password_message(stream, limit, "SASL response").await?;
    let (mechanism, data) = parse_sasl_initial_response(&body)?;
    if mechanism != scram::MECHANISM.as_bytes() {
        return Err(AuthError::Protocol(
            "client selected an invalid SASL authentication mechanism".into(),
        ));
    }
    let data =
        data.ok_or_else(|| AuthError::Protocol("malformed SCRAM message: the message is empty".into()))?;

    let mut server = ScramServer::from_secret(secret);
    let server_first = server.server_first(data).map_err(scram_error)?;
    send(stream, &[Authentication::SASLContinue(Bytes::from(server_first))]).await?;

    let body = read_password_message(stream, limit, "SASL response").await?;
    let response = PasswordMessageFamily::Raw(body)
        .into_sasl_response()
        .map_err(|err| AuthError::Protocol(format!("invalid SASL response: {err}")))?;
    let server_final = server.server_final(&response.data).map_err(scram_error)?;
    Ok(Some(Bytes::from(server_final)))
}

/// AuthenticationMD5Password with a random salt; the client must answer
/// `"md5" + hex(md5(hex(md5(password + user)) + salt))`.
async fn md5_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    user_name: &str,
    password: &str,
    limit: usize,
) -> Result<Option<Bytes>, AuthError> {
    let salt: [u8; 4] = rand::random();
    send(stream, &[Authentication::MD5Password(salt.to_vec())]).await?;
    let body = read_password_message(stream, limit, "password response").await?;
    // Password's decoder stops at the first NUL and never panics, unlike the SASL ones.
    let answer = PasswordMessageFamily::Raw(body)
        .into_password()
        .map_err(|err| AuthError::Protocol(format!("invalid password packet: {err}")))?;

    let expected = md5_response(user_name, password, salt);
    // An empty configured password still reads the answer first, so the client cannot tell it apart.
    if password.is_empty() || !scram::constant_time_eq(expected.as_bytes(), answer.password.as_bytes()) {
        return Err(AuthError::WrongPassword {
            user: user_name.to_owned(),
        });
    }
    Ok(None)
}

fn md5_response(user_name: &str, password: &str, salt: [u8; 4]) -> String {
    postgres_protocol::authentication::md5_hash(user_name.as_bytes(), password.as_bytes(), salt)
}

/// The SCRAM secret for a configured user, derived once per (user, password) and then reused.
///
/// Deriving costs 4096 HMAC rounds, which would otherwise be paid on every connection (and would make a
/// known user measurably slower to answer than the mock exchange for an unknown one). Keeping the salt
/// stable also matches PostgreSQL, whose stored verifier has a fixed salt. The key holds a hash of the
/// password, not the password, so a changed password after a reload gets a fresh secret.
fn cached_secret(user_name: &str, password: &str) -> ScramSecret {
    /// (user name, SHA-256 of the password).
    type Key = (String, [u8; 32]);
    static CACHE: OnceLock<Mutex<HashMap<Key, ScramSecret>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (
        user_name.to_owned(),
        <[u8; 32]>::from(Sha256::digest(password.as_bytes())),
    );

    // A panic elsewhere while holding the lock cannot leave the map inconsistent: entries are whole values.
    if let Some(secret) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return secret.clone();
    }
    // Derived outside the lock so one slow derivation does not stall other users' logins.
    let secret = ScramSecret::new(password);
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    if map.len() >= SECRET_CACHE_CAPACITY {
        map.clear();
    }
    map.entry(key).or_insert(secret).clone()
}

/// The mechanism name and the optional data of a SASLInitialResponse body.
///
/// Parsed by hand because pgwire's decoder indexes past the end of a truncated body.
fn parse_sasl_initial_response(body: &[u8]) -> Result<(&[u8], Option<&[u8]>), AuthError> {
    let malformed = || AuthError::Protocol("invalid SASL initial response message format".into());
    let nul = body.iter().position(|&b| b == 0).ok_or_else(malformed)?;
    let mechanism = &body[..nul];
    let rest = &body[nul + 1..];
    let (len, data) = rest.split_first_chunk::<4>().ok_or_else(malformed)?;
    match i32::from_be_bytes(*len) {
        -1 if data.is_empty() => Ok((mechanism, None)),
        n if usize::try_from(n).is_ok_and(|n| n == data.len()) => Ok((mechanism, Some(data))),
        _ => Err(malformed()),
    }
}

/// Reads one message that must be a 'p' (password-family) message and returns its body.
async fn read_password_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: usize,
    expected: &str,
) -> Result<BytesMut, AuthError> {
    let mut header = [0u8; 5];
    stream.read_exact(&mut header).await.map_err(io_error)?;
    let [tag, len @ ..] = header;
    match tag {
        b'p' => {}
        // Terminate instead of an answer: the client gave up, just as if it had closed the socket.
        b'X' => return Err(AuthError::ClientClosed),
        _ => {
            return Err(AuthError::Protocol(format!(
                "expected {expected}, got message type {tag}"
            )));
        }
    }
    let body_len = usize::try_from(i32::from_be_bytes(len))
        .ok()
        .and_then(|n| n.checked_sub(4))
        .ok_or_else(|| AuthError::Protocol("invalid message length".into()))?;
    if body_len > limit {
        return Err(AuthError::Protocol(format!(
            "{expected} of {body_len} bytes exceeds the limit of {limit} bytes"
        )));
    }
    let mut body = BytesMut::zeroed(body_len);
    stream.read_exact(&mut body).await.map_err(io_error)?;
    Ok(body)
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, messages: &[Authentication]) -> Result<(), AuthError> {
    let mut buf = BytesMut::with_capacity(messages.iter().map(|m| 1 + m.message_length()).sum());
    for message in messages {
        message.encode(&mut buf)?;
    }
    stream.write_all(&buf).await.map_err(io_error)?;
    stream.flush().await.map_err(io_error)?;
    Ok(())
}

fn io_error(err: std::io::Error) -> AuthError {
    use std::io::ErrorKind;
    match err.kind() {
        ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => {
            AuthError::ClientClosed
        }
        _ => AuthError::Io(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwire::messages::DecodeContext;
    use postgres_protocol::authentication::md5_hash;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use tokio::io::DuplexStream;
    use tokio::task::JoinHandle;

    const LIMIT: usize = 1 << 20;

    fn user(name: &str, password: &str, auth: AuthMethod) -> UserConfig {
        UserConfig {
            name: name.to_owned(),
            password: password.to_owned(),
            auth,
            admin: false,
            max_connections: 0,
        }
    }

    /// Starts the server side on one end of a pipe; the test plays the client on the returned end.
    fn serve(user_name: &str, user: Option<UserConfig>) -> (DuplexStream, JoinHandle<Result<(), AuthError>>) {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let user_name = user_name.to_owned();
        let task =
            tokio::spawn(async move { authenticate(&mut server, &user_name, user.as_ref(), LIMIT).await });
        (client, task)
    }

    /// Reads one Authentication message, or None at end of stream.
    async fn read_auth(client: &mut DuplexStream) -> Option<Authentication> {
        let mut header = [0u8; 5];
        client.read_exact(&mut header).await.ok()?;
        assert_eq!(header[0], b'R', "expected an Authentication message");
        let len =
            usize::try_from(i32::from_be_bytes([header[1], header[2], header[3], header[4]])).expect("len");
        let mut frame = BytesMut::from(&header[..]);
        frame.resize(1 + len, 0);
        client.read_exact(&mut frame[5..]).await.expect("body");
        Some(
            Authentication::decode(&mut frame, &DecodeContext::default())
                .expect("decodes")
                .expect("complete"),
        )
    }

    async fn send_p(client: &mut DuplexStream, body: &[u8]) {
        let mut frame = vec![b'p'];
        frame.extend_from_slice(&i32::try_from(body.len() + 4).expect("len").to_be_bytes());
        frame.extend_from_slice(body);
        client.write_all(&frame).await.expect("write");
    }

    fn sasl_initial(mechanism: &str, data: &[u8]) -> Vec<u8> {
        let mut body = mechanism.as_bytes().to_vec();
        body.push(0);
        body.extend_from_slice(&i32::try_from(data.len()).expect("len").to_be_bytes());
        body.extend_from_slice(data);
        body
    }

    /// Plays a libpq-like SCRAM client; returns whether AuthenticationOk arrived after a verified SASLFinal.
    async fn scram_client(client: &mut DuplexStream, password: &str) -> bool {
        match read_auth(client).await {
            Some(Authentication::SASL(mechanisms)) => {
                assert_eq!(mechanisms, vec!["SCRAM-SHA-256".to_owned()])
            }
            other => panic!("expected AuthenticationSASL, got {other:?}"),
        }
        let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unrequested());
        send_p(client, &sasl_initial("SCRAM-SHA-256", scram.message())).await;
        let Some(Authentication::SASLContinue(data)) = read_auth(client).await else {
            panic!("expected AuthenticationSASLContinue")
        };
        scram.update(&data).expect("server-first accepted");
        send_p(client, scram.message()).await;
        match read_auth(client).await {
            Some(Authentication::SASLFinal(data)) => {
                scram.finish(&data).expect("server signature verified");
                assert_eq!(read_auth(client).await, Some(Authentication::Ok));
                true
            }
            None => false,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn scram_right_password() {
        let (mut client, server) = serve("app", Some(user("app", "s3cret", AuthMethod::ScramSha256)));
        assert!(scram_client(&mut client, "s3cret").await);
        server.await.expect("join").expect("authenticated");
    }

    #[tokio::test]
    async fn scram_reuses_the_cached_secret_across_connections() {
        for _ in 0..2 {
            let (mut client, server) = serve("cache", Some(user("cache", "pw", AuthMethod::ScramSha256)));
            assert!(scram_client(&mut client, "pw").await);
            server.await.expect("join").expect("authenticated");
        }
    }

    #[tokio::test]
    async fn scram_wrong_password() {
        let (mut client, server) = serve("app", Some(user("app", "s3cret", AuthMethod::ScramSha256)));
        let task = tokio::spawn(async move { scram_client(&mut client, "guess").await });
        let err = server.await.expect("join").expect_err("refused");
        assert!(matches!(err, AuthError::WrongPassword { .. }), "{err:?}");
        assert_eq!(err.sqlstate(), "28P01");
        assert_eq!(err.message(), "password authentication failed for user \"app\"");
        assert!(!task.await.expect("client"), "no SASLFinal after a wrong proof");
    }

    #[tokio::test]
    async fn unknown_user_goes_through_a_mock_exchange() {
        let (mut client, server) = serve("ghost", None);
        let task = tokio::spawn(async move { scram_client(&mut client, "whatever").await });
        let err = server.await.expect("join").expect_err("refused");
        assert!(matches!(err, AuthError::UnknownUser { .. }), "{err:?}");
        assert_eq!(err.sqlstate(), "28P01");
        assert_eq!(err.message(), "password authentication failed for user \"ghost\"");
        assert!(!task.await.expect("client"));
    }

    async fn md5_client(
        client: &mut DuplexStream,
        user_name: &str,
        password: &str,
    ) -> Option<Authentication> {
        let Some(Authentication::MD5Password(salt)) = read_auth(client).await else {
            panic!("expected AuthenticationMD5Password")
        };
        let salt: [u8; 4] = salt.try_into().expect("4-byte salt");
        let mut body = md5_hash(user_name.as_bytes(), password.as_bytes(), salt).into_bytes();
        body.push(0);
        send_p(client, &body).await;
        read_auth(client).await
    }

    #[tokio::test]
    async fn md5_right_password() {
        let (mut client, server) = serve("app", Some(user("app", "s3cret", AuthMethod::Md5)));
        assert_eq!(
            md5_client(&mut client, "app", "s3cret").await,
            Some(Authentication::Ok)
        );
        server.await.expect("join").expect("authenticated");
    }

    #[tokio::test]
    async fn md5_wrong_password() {
        let (mut client, server) = serve("app", Some(user("app", "s3cret", AuthMethod::Md5)));
        assert_eq!(md5_client(&mut client, "app", "guess").await, None);
        let err = server.await.expect("join").expect_err("refused");
        assert!(matches!(err, AuthError::WrongPassword { .. }), "{err:?}");
        assert_eq!(err.sqlstate(), "28P01");
    }

    #[tokio::test]
    async fn md5_empty_configured_password_never_matches() {
        let (mut client, server) = serve("app", Some(user("app", "", AuthMethod::Md5)));
        assert_eq!(md5_client(&mut client, "app", "").await, None);
        assert!(matches!(
            server.await.expect("join"),
            Err(AuthError::WrongPassword { .. })
        ));
    }

    #[tokio::test]
    async fn trust_sends_ok_at_once() {
        let (mut client, server) = serve("app", Some(user("app", "", AuthMethod::Trust)));
        assert_eq!(read_auth(&mut client).await, Some(Authentication::Ok));
        server.await.expect("join").expect("authenticated");
    }

    /// Starts a SCRAM exchange, answers it with this SASLInitialResponse, and returns the refusal.
    async fn refused_sasl_initial(mechanism: &str, data: &[u8]) -> AuthError {
        let (mut client, server) = serve("app", Some(user("app", "pw", AuthMethod::ScramSha256)));
        assert!(matches!(
            read_auth(&mut client).await,
            Some(Authentication::SASL(_))
        ));
        send_p(&mut client, &sasl_initial(mechanism, data)).await;
        server.await.expect("join").expect_err("refused")
    }

    #[tokio::test]
    async fn wrong_sasl_mechanism_is_a_protocol_error() {
        let err = refused_sasl_initial("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=abc").await;
        assert_eq!(err.sqlstate(), "08P01");
        assert_eq!(
            err.message(),
            "client selected an invalid SASL authentication mechanism"
        );
    }

    #[tokio::test]
    async fn channel_binding_is_a_protocol_error() {
        let err = refused_sasl_initial("SCRAM-SHA-256", b"p=tls-server-end-point,,n=,r=abc").await;
        assert_eq!(err.sqlstate(), "08P01");
        assert!(err.message().contains("channel binding"), "{}", err.message());
    }

    #[tokio::test]
    async fn truncated_sasl_initial_response_is_a_protocol_error() {
        let (mut client, server) = serve("app", Some(user("app", "pw", AuthMethod::ScramSha256)));
        assert!(matches!(
            read_auth(&mut client).await,
            Some(Authentication::SASL(_))
        ));
        send_p(&mut client, b"SCRAM-SHA-256\0\0\0").await;
        let err = server.await.expect("join").expect_err("refused");
        assert!(matches!(err, AuthError::Protocol(_)), "{err:?}");
    }

    #[tokio::test]
    async fn oversized_password_message_is_refused_before_reading_it() {
        let (client, mut server) = tokio::io::duplex(1024);
        let config = user("app", "pw", AuthMethod::Md5);
        let task = tokio::spawn(async move { authenticate(&mut server, "app", Some(&config), 100).await });
        let mut client = client;
        assert!(matches!(
            read_auth(&mut client).await,
            Some(Authentication::MD5Password(_))
        ));
        client.write_all(b"p\x00\x00\x01\x00").await.expect("write");
        let err = task.await.expect("join").expect_err("refused");
        assert_eq!(err.sqlstate(), "08P01");
        assert!(
            err.message().contains("exceeds the limit of 100 bytes"),
            "{}",
            err.message()
        );
    }

    #[tokio::test]
    async fn other_message_types_are_a_protocol_error() {
        let (mut client, server) = serve("app", Some(user("app", "pw", AuthMethod::Md5)));
        assert!(matches!(
            read_auth(&mut client).await,
            Some(Authentication::MD5Password(_))
        ));
        client
            .write_all(b"Q\x00\x00\x00\x0dSELECT 1\0")
            .await
            .expect("write");
        let err = server.await.expect("join").expect_err("refused");
        assert_eq!(err.message(), "expected password response, got message type 81");
    }

    #[tokio::test]
    async fn client_hanging_up_is_reported_as_closed() {
        let (mut client, server) = serve("app", Some(user("app", "pw", AuthMethod::ScramSha256)));
        assert!(matches!(
            read_auth(&mut client).await,
            Some(Authentication::SASL(_))
        ));
        drop(client);
        assert!(matches!(
            server.await.expect("join"),
            Err(AuthError::ClientClosed)
        ));
    }

    #[test]
    fn md5_response_is_postgres_formula() {
        // "md5" + hex(md5(hex(md5("s3cret" + "app")) + salt)), computed independently.
        assert_eq!(
            md5_response("app", "s3cret", [1, 2, 3, 4]),
            "md51460f94130eb931937bbd6439ee8ab57"
        );
    }
}
