//! Server side of SCRAM-SHA-256 (RFC 5802 / RFC 7677) the way PostgreSQL speaks it to its clients.
//!
//! This module owns the SASL exchange's cryptography and message grammar: deriving the salted secret from a
//! password, answering the client-first message, and verifying the client's proof. It knows nothing about
//! sockets or protocol frames; `frontend::auth` carries the messages.
//!
//! Channel binding is not offered: only `SCRAM-SHA-256` is advertised, so the gs2 headers `n,,` and `y,,` are
//! accepted and `p=...` is refused.

use std::fmt;
use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The only SASL mechanism the proxy advertises.
pub(crate) const MECHANISM: &str = "SCRAM-SHA-256";

/// PostgreSQL's default `scram_iterations`.
pub(crate) const ITERATIONS: u32 = 4096;

/// PostgreSQL's salt length (SCRAM_DEFAULT_SALT_LEN).
const SALT_LEN: usize = 16;

/// PostgreSQL's server nonce length before base64 (SCRAM_RAW_NONCE_LEN).
const SERVER_NONCE_LEN: usize = 18;

const KEY_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// Why a SCRAM exchange failed.
///
/// Everything except [`ScramError::WrongPassword`] is a protocol violation by the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ScramError {
    /// The message does not follow the SCRAM grammar; the text says where.
    #[error("malformed SCRAM message: {0}")]
    Malformed(String),
    /// The client asked for channel binding (`p=`), which the proxy never advertises.
    #[error(
        "malformed SCRAM message: the client selected SCRAM-SHA-256 without channel binding, \
         but the SCRAM message includes channel binding data"
    )]
    ChannelBindingUnsupported,
    /// The client sent an authorization identity (`a=`).
    #[error("client uses authorization identity, but it is not supported")]
    AuthzidUnsupported,
    /// The client requires a mandatory extension (`m=`).
    #[error("client requires an unsupported SCRAM extension")]
    UnsupportedExtension,
    /// The `c=` attribute of the final message does not repeat the gs2 header.
    #[error("SCRAM channel binding check failed")]
    ChannelBindingMismatch,
    /// The final message's nonce is not the one the server handed out.
    #[error("invalid SCRAM response: nonce does not match")]
    NonceMismatch,
    /// A message arrived when the exchange was not expecting it.
    #[error("SCRAM message received out of order")]
    OutOfOrder,
    /// The proof does not match the password (or the exchange was a mock one).
    #[error("password authentication failed")]
    WrongPassword,
}

/// What the server keeps about a password: enough to check a proof and sign the answer, never the password.
///
/// This is exactly what PostgreSQL stores in `pg_authid.rolpassword` for a SCRAM role. Deriving it costs
/// `iterations` HMAC rounds, so callers that authenticate the same user repeatedly may keep it and build each
/// [`ScramServer`] with [`ScramServer::from_secret`].
#[derive(Clone)]
pub(crate) struct ScramSecret {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: [u8; KEY_LEN],
    server_key: [u8; KEY_LEN],
    /// A mock secret for a user that does not exist (or has no password): every proof is refused.
    doomed: bool,
}

// Hand-written: the keys would let anyone who reads a log impersonate the server.
impl fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .field("doomed", &self.doomed)
            .finish_non_exhaustive()
    }
}

impl ScramSecret {
    /// Derives the secret for `password` with a fresh random salt and [`ITERATIONS`] rounds.
    pub(crate) fn new(password: &str) -> Self {
        if password.is_ascii() {
            // SASLprep maps nothing in ASCII: printable ASCII is left as is, and control characters make it
            // fail, in which case clients and PostgreSQL both fall back to the raw bytes. Either way the raw
            // bytes are what the client hashes.
            return Self::derive(password.as_bytes(), &rand::random::<[u8; SALT_LEN]>(), ITERATIONS);
        }
        // Outside ASCII the client SASLpreps (NFKC, space mapping, ...). The stringprep tables are only
        // reachable through postgres-protocol's verifier builder, which normalises exactly as libpq does.
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        match Self::from_verifier(&verifier) {
            Some(secret) => secret,
            // Only reachable if postgres-protocol changed its output format; raw bytes still serve every
            // password that SASLprep leaves unchanged.
            None => Self::derive(password.as_bytes(), &rand::random::<[u8; SALT_LEN]>(), ITERATIONS),
        }
    }

    /// A secret for a user that must not log in, used so that an unknown user goes through the same exchange
    /// as a known one (PostgreSQL's "mock authentication").
    ///
    /// The salt is derived from the user name and a per-process secret, so repeated attempts for the same name
    /// see the same salt, as they would for a real user, and the salt reveals nothing about whether the user
    /// exists.
    pub(crate) fn mock(user_name: &str) -> Self {
        static MOCK_NONCE: OnceLock<[u8; KEY_LEN]> = OnceLock::new();
        let nonce = MOCK_NONCE.get_or_init(rand::random);
        let digest = Sha256::new()
            .chain_update(user_name.as_bytes())
            .chain_update(nonce)
            .finalize();
        ScramSecret {
            salt: digest[..SALT_LEN].to_vec(),
            iterations: ITERATIONS,
            stored_key: rand::random(),
            server_key: rand::random(),
            doomed: true,
        }
    }

    fn derive(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        let salted = hi(password, salt, iterations);
        let client_key = hmac(&salted, &[b"Client Key"]);
        ScramSecret {
            salt: salt.to_vec(),
            iterations,
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, &[b"Server Key"]),
            doomed: false,
        }
    }

    /// Parses PostgreSQL's stored form `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    fn from_verifier(verifier: &str) -> Option<Self> {
        let rest = verifier.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        let iterations: u32 = iterations.parse().ok()?;
        if iterations == 0 {
            return None;
        }
        Some(ScramSecret {
            salt: BASE64.decode(salt).ok()?,
            iterations,
            stored_key: BASE64.decode(stored_key).ok()?.try_into().ok()?,
            server_key: BASE64.decode(server_key).ok()?.try_into().ok()?,
            doomed: false,
        })
    }
}

/// Where the exchange stands.
enum State {
    AwaitingClientFirst,
    AwaitingClientFinal {
        /// The gs2 header exactly as the client sent it; `c=` must repeat it.
        gs2_header: Vec<u8>,
        client_first_bare: Vec<u8>,
        server_first: Vec<u8>,
        /// Client nonce followed by server nonce.
        nonce: Vec<u8>,
    },
    Finished,
}

/// One server-side SCRAM-SHA-256 exchange: [`ScramServer::server_first`], then [`ScramServer::server_final`].
pub(crate) struct ScramServer {
    secret: ScramSecret,
    state: State,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::AwaitingClientFirst => "awaiting client-first",
            State::AwaitingClientFinal { .. } => "awaiting client-final",
            State::Finished => "finished",
        };
        f.debug_struct("ScramServer")
            .field("secret", &self.secret)
            .field("state", &state)
            .finish()
    }
}

impl ScramServer {
    /// Starts an exchange that accepts `password`, deriving its secret with a fresh random salt.
    #[cfg(test)]
    pub(crate) fn new(password: &str) -> Self {
        Self::from_secret(ScramSecret::new(password))
    }

    /// Starts an exchange against an already derived secret (real or [`ScramSecret::mock`]).
    pub(crate) fn from_secret(secret: ScramSecret) -> Self {
        ScramServer {
            secret,
            state: State::AwaitingClientFirst,
        }
    }

    /// Reads the client-first message (the data of SASLInitialResponse) and returns the server-first message
    /// (the data of AuthenticationSASLContinue).
    pub(crate) fn server_first(&mut self, client_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        let server_nonce = BASE64.encode(rand::random::<[u8; SERVER_NONCE_LEN]>());
        self.server_first_with_nonce(client_first, &server_nonce)
    }

    fn server_first_with_nonce(
        &mut self,
        client_first: &[u8],
        server_nonce: &str,
    ) -> Result<Vec<u8>, ScramError> {
        // Any failure ends the exchange; a client cannot retry within it.
        if !matches!(
            std::mem::replace(&mut self.state, State::Finished),
            State::AwaitingClientFirst
        ) {
            return Err(ScramError::OutOfOrder);
        }
        let parsed = parse_client_first(client_first)?;

        let mut nonce = parsed.client_nonce.to_vec();
        nonce.extend_from_slice(server_nonce.as_bytes());

        let mut server_first = b"r=".to_vec();
        server_first.extend_from_slice(&nonce);
        server_first.extend_from_slice(b",s=");
        server_first.extend_from_slice(BASE64.encode(&self.secret.salt).as_bytes());
        server_first.extend_from_slice(format!(",i={}", self.secret.iterations).as_bytes());

        self.state = State::AwaitingClientFinal {
            gs2_header: parsed.gs2_header.to_vec(),
            client_first_bare: parsed.bare.to_vec(),
            server_first: server_first.clone(),
            nonce,
        };
        Ok(server_first)
    }

    /// Reads the client-final message (the data of SASLResponse), verifies the proof, and returns the
    /// server-final message (the data of AuthenticationSASLFinal).
    pub(crate) fn server_final(&mut self, client_final: &[u8]) -> Result<Vec<u8>, ScramError> {
        let State::AwaitingClientFinal {
            gs2_header,
            client_first_bare,
            server_first,
            nonce,
        } = std::mem::replace(&mut self.state, State::Finished)
        else {
            return Err(ScramError::OutOfOrder);
        };

        // The proof is always the last attribute and base64 has no commas, so the last ",p=" starts it.
        let proof_at = find_last(client_final, b",p=")
            .ok_or_else(|| ScramError::Malformed("could not find proof in client-final-message".into()))?;
        let without_proof = &client_final[..proof_at];
        let proof = BASE64
            .decode(&client_final[proof_at + 3..])
            .map_err(|_| ScramError::Malformed("invalid base64 in proof".into()))?;
        let proof: [u8; KEY_LEN] = proof
            .try_into()
            .map_err(|_| ScramError::Malformed("proof has the wrong length".into()))?;

        let mut attrs = without_proof.split(|&b| b == b',');
        let binding = attribute(attrs.next(), b'c')?;
        let binding = BASE64
            .decode(binding)
            .map_err(|_| ScramError::Malformed("invalid base64 in channel-binding".into()))?;
        // Without channel binding the client only echoes its gs2 header ("biws" for "n,,").
        if binding != gs2_header {
            return Err(ScramError::ChannelBindingMismatch);
        }
        if attribute(attrs.next(), b'r')? != nonce.as_slice() {
            return Err(ScramError::NonceMismatch);
        }
        for extension in attrs {
            attribute(Some(extension), 0)?;
        }

        let mut auth_message = client_first_bare;
        auth_message.push(b',');
        auth_message.extend_from_slice(&server_first);
        auth_message.push(b',');
        auth_message.extend_from_slice(without_proof);

        let client_signature = hmac(&self.secret.stored_key, &[&auth_message]);
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(client_signature) {
            *k ^= s;
        }
        let candidate: [u8; KEY_LEN] = Sha256::digest(client_key).into();
        // Both checks run regardless of `doomed` so a mock exchange takes the same time as a real one.
        let matches = constant_time_eq(&candidate, &self.secret.stored_key);
        if !matches || self.secret.doomed {
            return Err(ScramError::WrongPassword);
        }

        let server_signature = hmac(&self.secret.server_key, &[&auth_message]);
        let mut server_final = b"v=".to_vec();
        server_final.extend_from_slice(BASE64.encode(server_signature).as_bytes());
        Ok(server_final)
    }
}

struct ClientFirst<'a> {
    gs2_header: &'a [u8],
    bare: &'a [u8],
    client_nonce: &'a [u8],
}

fn parse_client_first(msg: &[u8]) -> Result<ClientFirst<'_>, ScramError> {
    let (flag, rest) = split_comma(msg).ok_or_else(|| ScramError::Malformed("missing gs2 header".into()))?;
    match flag {
        b"n" | b"y" => {}
        _ if flag.starts_with(b"p=") => return Err(ScramError::ChannelBindingUnsupported),
        _ => return Err(ScramError::Malformed("unexpected channel-binding flag".into())),
    }
    let (authzid, bare) =
        split_comma(rest).ok_or_else(|| ScramError::Malformed("missing gs2 header".into()))?;
    if !authzid.is_empty() {
        return Err(if authzid.starts_with(b"a=") {
            ScramError::AuthzidUnsupported
        } else {
            ScramError::Malformed("unexpected attribute in gs2 header".into())
        });
    }
    let gs2_header = &msg[..msg.len() - bare.len()];

    let mut attrs = bare.split(|&b| b == b',');
    let first = attrs.next();
    if first.is_some_and(|a| a.starts_with(b"m=")) {
        return Err(ScramError::UnsupportedExtension);
    }
    // PostgreSQL ignores this user name (libpq sends it empty); the startup packet's user is authoritative.
    attribute(first, b'n')?;
    let client_nonce = attribute(attrs.next(), b'r')?;
    if client_nonce.is_empty()
        || !client_nonce
            .iter()
            .all(|&b| (0x21..=0x7e).contains(&b) && b != b',')
    {
        return Err(ScramError::Malformed("nonce is not printable".into()));
    }
    for extension in attrs {
        attribute(Some(extension), 0)?;
    }
    Ok(ClientFirst {
        gs2_header,
        bare,
        client_nonce,
    })
}

/// The value of `name=value`; `name` 0 accepts any single letter (extensions).
fn attribute(attr: Option<&[u8]>, name: u8) -> Result<&[u8], ScramError> {
    let missing = || {
        if name == 0 {
            ScramError::Malformed("invalid extension attribute".into())
        } else {
            ScramError::Malformed(format!("attribute \"{}\" expected", char::from(name)))
        }
    };
    match attr {
        Some([letter, b'=', value @ ..])
            if (name == 0 && letter.is_ascii_alphabetic()) || *letter == name =>
        {
            Ok(value)
        }
        _ => Err(missing()),
    }
}

fn split_comma(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = s.iter().position(|&b| b == b',')?;
    Some((&s[..at], &s[at + 1..]))
}

fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

fn keyed(key: &[u8]) -> HmacSha256 {
    match <HmacSha256 as KeyInit>::new_from_slice(key) {
        Ok(mac) => mac,
        // HMAC hashes long keys and pads short ones, so every length is valid; the crate's own `new` relies on it.
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut mac = keyed(key);
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with a single output block, which is RFC 5802's `Hi()`.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; KEY_LEN] {
    // Keying once and cloning avoids re-hashing the key in each of the thousands of rounds.
    let keyed = keyed(password);
    let mut mac = keyed.clone();
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut u: [u8; KEY_LEN] = mac.finalize().into_bytes().into();
    let mut out = u;
    for _ in 1..iterations {
        let mut mac = keyed.clone();
        mac.update(&u);
        u = mac.finalize().into_bytes().into();
        for (o, b) in out.iter_mut().zip(u) {
            *o ^= b;
        }
    }
    out
}

/// Compares without an early exit so the time taken does not say how many leading bytes matched.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// Runs a whole exchange with postgres-protocol's client; returns the server's verdict and whether the
    /// client accepted the server's signature.
    fn exchange(
        server: &mut ScramServer,
        client_password: &str,
        binding: ChannelBinding,
    ) -> Result<(), ScramError> {
        let mut client = ScramSha256::new(client_password.as_bytes(), binding);
        let server_first = server.server_first(client.message())?;
        client.update(&server_first).expect("client accepts server-first");
        let server_final = server.server_final(client.message())?;
        client
            .finish(&server_final)
            .expect("client verifies the server signature");
        Ok(())
    }

    #[test]
    fn right_password_succeeds_and_client_verifies_server() {
        let mut server = ScramServer::new("s3cret");
        exchange(&mut server, "s3cret", ChannelBinding::unrequested()).expect("authenticated");
    }

    #[test]
    fn wrong_password_fails() {
        let mut server = ScramServer::new("s3cret");
        assert_eq!(
            exchange(&mut server, "guess", ChannelBinding::unrequested()),
            Err(ScramError::WrongPassword)
        );
    }

    #[test]
    fn client_that_supports_binding_but_was_not_offered_it_is_accepted() {
        // ChannelBinding::unsupported() makes the client send "y,,".
        let mut server = ScramServer::new("pw");
        exchange(&mut server, "pw", ChannelBinding::unsupported()).expect("y,, accepted");
    }

    #[test]
    fn channel_binding_request_is_refused() {
        let mut server = ScramServer::new("pw");
        let mut client = ScramSha256::new(b"pw", ChannelBinding::tls_server_end_point(vec![1, 2, 3]));
        assert_eq!(
            server.server_first(client.message()),
            Err(ScramError::ChannelBindingUnsupported)
        );
        // The exchange is over after an error.
        client = ScramSha256::new(b"pw", ChannelBinding::unrequested());
        assert_eq!(server.server_first(client.message()), Err(ScramError::OutOfOrder));
    }

    #[test]
    fn non_ascii_passwords_are_saslprepped_like_libpq() {
        // U+00A0 is mapped to a space by SASLprep; the client normalises, so the server must too.
        let mut server = ScramServer::new("pä\u{a0}ss");
        exchange(&mut server, "pä\u{a0}ss", ChannelBinding::unrequested()).expect("authenticated");
        let mut server = ScramServer::new("pä\u{a0}ss");
        exchange(&mut server, "pä ss", ChannelBinding::unrequested()).expect("normalised forms are equal");
    }

    #[test]
    fn long_ascii_password_works() {
        let pw = "x".repeat(200);
        let mut server = ScramServer::new(&pw);
        exchange(&mut server, &pw, ChannelBinding::unrequested()).expect("authenticated");
    }

    #[test]
    fn mock_exchange_always_fails_and_keeps_its_salt() {
        let mut server = ScramServer::from_secret(ScramSecret::mock("nobody"));
        assert_eq!(
            exchange(&mut server, "anything", ChannelBinding::unrequested()),
            Err(ScramError::WrongPassword)
        );

        let first = |name: &str| {
            let client = ScramSha256::new(b"x", ChannelBinding::unrequested());
            let reply = ScramServer::from_secret(ScramSecret::mock(name))
                .server_first(client.message())
                .expect("server-first");
            let reply = String::from_utf8(reply).expect("utf8");
            reply.split(',').nth(1).expect("salt").to_owned()
        };
        assert_eq!(first("nobody"), first("nobody"));
        assert_ne!(first("nobody"), first("someone"));
    }

    #[test]
    fn server_first_has_postgres_shape() {
        let mut server = ScramServer::new("pw");
        let reply = server.server_first(b"n,,n=,r=abc").expect("server-first");
        let reply = String::from_utf8(reply).expect("utf8");
        let parts: Vec<&str> = reply.split(',').collect();
        assert_eq!(parts.len(), 3);
        assert!(parts[0].starts_with("r=abc") && parts[0].len() > "r=abc".len() + 20);
        assert_eq!(BASE64.decode(&parts[1][2..]).expect("salt").len(), SALT_LEN);
        assert_eq!(parts[2], "i=4096");
    }

    #[test]
    fn malformed_client_first_messages_are_rejected() {
        for (msg, want) in [
            (&b""[..], "missing gs2 header"),
            (b"x,,n=,r=abc", "unexpected channel-binding flag"),
            (b"n,a=bob,n=,r=abc", "authorization identity"),
            (b"n,,m=ext,n=,r=abc", "unsupported SCRAM extension"),
            (b"n,,r=abc", "attribute \"n\" expected"),
            (b"n,,n=", "attribute \"r\" expected"),
            (b"n,,n=,r=", "nonce is not printable"),
            (b"n,,n=,r=a\x01", "nonce is not printable"),
        ] {
            let err = ScramServer::new("pw").server_first(msg).expect_err("rejected");
            assert!(err.to_string().contains(want), "{msg:?}: {err}");
        }
    }

    #[test]
    fn malformed_or_mismatched_client_final_messages_are_rejected() {
        let start = || {
            let mut server = ScramServer::new("pw");
            let first = server.server_first(b"n,,n=,r=abc").expect("server-first");
            let nonce = String::from_utf8(first)
                .expect("utf8")
                .split(',')
                .next()
                .expect("r=")[2..]
                .to_owned();
            (server, nonce)
        };
        let proof = BASE64.encode([0u8; 32]);

        let (mut server, nonce) = start();
        let msg = format!("c=eSws,r={nonce},p={proof}");
        assert_eq!(
            server.server_final(msg.as_bytes()),
            Err(ScramError::ChannelBindingMismatch)
        );

        let (mut server, _) = start();
        let msg = format!("c=biws,r=abcdef,p={proof}");
        assert_eq!(
            server.server_final(msg.as_bytes()),
            Err(ScramError::NonceMismatch)
        );

        let (mut server, nonce) = start();
        let msg = format!("c=biws,r={nonce}");
        assert!(matches!(
            server.server_final(msg.as_bytes()),
            Err(ScramError::Malformed(_))
        ));

        let (mut server, nonce) = start();
        let msg = format!("c=biws,r={nonce},p=AAAA");
        assert!(matches!(
            server.server_final(msg.as_bytes()),
            Err(ScramError::Malformed(_))
        ));

        let (mut server, nonce) = start();
        let msg = format!("c=biws,r={nonce},p={proof}");
        assert_eq!(
            server.server_final(msg.as_bytes()),
            Err(ScramError::WrongPassword)
        );

        let mut server = ScramServer::new("pw");
        assert_eq!(
            server.server_final(b"c=biws,r=x,p=AAAA"),
            Err(ScramError::OutOfOrder)
        );
    }

    #[test]
    fn rfc7677_example_exchange() {
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        let mut server = ScramServer::from_secret(ScramSecret::derive(b"pencil", &salt, 4096));
        let first = server
            .server_first_with_nonce(
                b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
                "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            )
            .expect("server-first");
        assert_eq!(
            first,
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let last = server
            .server_final(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                  p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            )
            .expect("proof accepted");
        assert_eq!(last, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }

    #[test]
    fn pbkdf2_matches_rfc7914_vector() {
        // RFC 7914 section 11: PBKDF2-HMAC-SHA256("passwd", "salt", 1), first 32 bytes.
        let expected = [
            0x55, 0xac, 0x04, 0x6e, 0x56, 0xe3, 0x08, 0x9f, 0xec, 0x16, 0x91, 0xc2, 0x25, 0x44, 0xb6, 0x05,
            0xf9, 0x41, 0x85, 0x21, 0x6d, 0xde, 0x04, 0x65, 0xe6, 0x8b, 0x9d, 0x57, 0xc2, 0x0d, 0xac, 0xbc,
        ];
        assert_eq!(hi(b"passwd", b"salt", 1), expected);
    }

    #[test]
    fn debug_output_hides_keys() {
        let shown = format!("{:?}", ScramServer::new("pw"));
        assert!(
            !shown.contains("stored_key") && !shown.contains("salt"),
            "{shown}"
        );
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
