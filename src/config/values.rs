//! Values written as text in the config file: durations, sizes, replica lag limits and `host:port`
//! addresses (a host that is a directory names a Unix-domain socket), with the serde deserializers the
//! sections use for them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Parses "250ms", "5s", "2m", "1h" or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as \"500ms\" or \"5s\""))?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "us" => value / 1_000_000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown duration unit `{other}` (use ms, s, m or h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Parses "64MB", "16kB", "1GB" or a bare number of bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size such as \"16MB\""))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1024,
        "mb" | "m" => 1024 * 1024,
        "gb" | "g" => 1024 * 1024 * 1024,
        other => return Err(format!("unknown size unit `{other}` (use B, kB, MB or GB)")),
    };
    Ok(value * mult)
}

/// A replica lag limit: bytes of WAL or time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LagLimit {
    /// At most this many bytes of WAL behind the primary.
    Bytes(u64),
    /// At most this far behind in time.
    Time(Duration),
}

pub(super) fn de_lag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<LagLimit>, D::Error> {
    let text = String::deserialize(d)?;
    if let Ok(size) = parse_size(&text) {
        return Ok(Some(LagLimit::Bytes(size)));
    }
    match parse_duration(&text) {
        Ok(t) => Ok(Some(LagLimit::Time(t))),
        Err(_) => Err(serde::de::Error::custom(format!(
            "`{text}` is neither a size (\"16MB\") nor a duration (\"2s\")"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrText {
    Num(u64),
    Text(String),
}

pub(super) fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match NumOrText::deserialize(d)? {
        NumOrText::Num(n) => Ok(Duration::from_secs(n)),
        NumOrText::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

pub(super) fn de_opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(|t| if t.is_zero() { None } else { Some(t) })
}

pub(super) fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match NumOrText::deserialize(d)? {
        NumOrText::Num(n) => Ok(n),
        NumOrText::Text(t) => parse_size(&t).map_err(serde::de::Error::custom),
    }
}

/// Splits "host:port" (or "[v6]:port", or "/socket/dir:port") into its parts.
pub fn split_host_port(address: &str) -> Result<(String, u16), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("`{address}` is not host:port (e.g. \"10.0.0.1:5432\")"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{port}` in `{address}` is not a port number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("`{address}` has no host"));
    }
    Ok((host.to_owned(), port))
}

/// The Unix-domain socket a node address names, if it does: as libpq reads `host` and `port`, a host that
/// starts with `/` is the directory holding the server's socket, `.s.PGSQL.<port>` in it
/// (`/run/postgresql:5432` is `/run/postgresql/.s.PGSQL.5432`). None for a TCP address or one that is not
/// `host:port` at all.
pub fn unix_socket_of(address: &str) -> Option<PathBuf> {
    let (dir, port) = split_host_port(address).ok()?;
    dir.starts_with('/').then(|| socket_file(Path::new(&dir), port))
}

/// The socket PostgreSQL (and pgfleet, with `listen.unix_socket_dir`) listens on in `dir` for `port`.
pub fn socket_file(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!(".s.PGSQL.{port}"))
}
