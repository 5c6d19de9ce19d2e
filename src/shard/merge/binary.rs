//! Binary results of a query across shards. The merger works on the text format, so when a client asks for
//! binary columns (pgjdbc does for its named statements), the shards are asked for text and the merged rows
//! are encoded as PostgreSQL's `*send` functions would have sent them, for the types whose binary form is
//! fixed by their text (integers, floats, bool, numeric, text-like types, uuid, date, timestamp and
//! timestamptz in ISO DateStyle). Any other type asked in binary is refused rather than guessed.

use bytes::{BufMut, Bytes, BytesMut};

use super::numeric::Numeric;
use super::value;
use crate::protocol::frame::build;
use crate::protocol::messages::{BindParts, ProxyError};

/// PostgreSQL's type OIDs this module encodes.
mod oid {
    pub(super) const BOOL: u32 = 16;
    pub(super) const NAME: u32 = 19;
    pub(super) const INT8: u32 = 20;
    pub(super) const INT2: u32 = 21;
    pub(super) const INT4: u32 = 23;
    pub(super) const TEXT: u32 = 25;
    pub(super) const OID: u32 = 26;
    pub(super) const FLOAT4: u32 = 700;
    pub(super) const FLOAT8: u32 = 701;
    pub(super) const BPCHAR: u32 = 1042;
    pub(super) const VARCHAR: u32 = 1043;
    pub(super) const DATE: u32 = 1082;
    pub(super) const TIMESTAMP: u32 = 1114;
    pub(super) const TIMESTAMPTZ: u32 = 1184;
    pub(super) const NUMERIC: u32 = 1700;
    pub(super) const UUID: u32 = 2950;
}

/// The result format codes a Bind asks for (empty: all text), and the Bind asking for text only.
pub fn text_results(bind_body: &[u8]) -> Option<(Vec<i16>, Vec<u8>)> {
    let parts = BindParts::read(bind_body)?;
    let results = parts.result_formats()?;
    let mut text = bind_body.get(..bind_body.len() - parts.results.len())?.to_vec();
    text.extend_from_slice(&0i16.to_be_bytes());
    Some((results, text))
}

/// Whether any column is asked in binary.
pub fn wants_binary(results: &[i16]) -> bool {
    results.contains(&1)
}

/// Re-encodes a merged result (whole messages back to back, text format) in the result formats `results`
/// asked for: RowDescription says each column's format, DataRow carries binary values where asked.
pub fn encode(frames: &[u8], results: &[i16]) -> Result<Vec<u8>, ProxyError> {
    let mut out = Vec::with_capacity(frames.len());
    let mut types: Vec<u32> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut at = 0;
    while at + 5 <= frames.len() {
        let len =
            u32::from_be_bytes([frames[at + 1], frames[at + 2], frames[at + 3], frames[at + 4]]) as usize;
        let end = (at + 1 + len).min(frames.len());
        let (kind, body) = (frames[at], &frames[at + 5..end]);
        match kind {
            b'T' => {
                let (t, n, described) = describe(body, results).ok_or_else(malformed)?;
                types = t;
                names = n;
                out.extend_from_slice(&described);
            }
            b'D' => out.extend_from_slice(&row(body, &types, &names, results)?),
            _ => out.extend_from_slice(&frames[at..end]),
        }
        at = end;
    }
    Ok(out)
}

fn malformed() -> ProxyError {
    ProxyError::error("XX000", "pgfleet: a merged result could not be re-encoded")
}

/// The format of column `i` as `results` asks.
fn format(results: &[i16], i: usize) -> i16 {
    match results {
        [] => 0,
        [one] => *one,
        many => many.get(i).copied().unwrap_or(0),
    }
}

/// A RowDescription with the asked formats, and its columns' types and names.
fn describe(body: &[u8], results: &[i16]) -> Option<(Vec<u32>, Vec<String>, Bytes)> {
    let n = usize::try_from(i16::from_be_bytes(body.get(0..2)?.try_into().ok()?)).ok()?;
    let mut out = BytesMut::from(&body[..2]);
    let (mut types, mut names) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut at = 2;
    for i in 0..n {
        let name_end = at + body.get(at..)?.iter().position(|b| *b == 0)?;
        names.push(String::from_utf8_lossy(&body[at..name_end]).into_owned());
        let fixed = name_end + 1;
        // table oid (4), attnum (2), type oid (4), typlen (2), typmod (4), format (2)
        types.push(u32::from_be_bytes(
            body.get(fixed + 6..fixed + 10)?.try_into().ok()?,
        ));
        out.put_slice(body.get(at..fixed + 16)?);
        out.put_i16(format(results, i));
        at = fixed + 18;
    }
    Some((types, names, build(b'T', &out)))
}

/// A DataRow with each binary-asked column encoded.
fn row(body: &[u8], types: &[u32], names: &[String], results: &[i16]) -> Result<Bytes, ProxyError> {
    let n = usize::try_from(i16::from_be_bytes(
        body.get(0..2)
            .ok_or_else(malformed)?
            .try_into()
            .map_err(|_| malformed())?,
    ))
    .map_err(|_| malformed())?;
    let mut out = BytesMut::from(&body[..2]);
    let mut at = 2;
    for i in 0..n {
        let len = i32::from_be_bytes(
            body.get(at..at + 4)
                .ok_or_else(malformed)?
                .try_into()
                .map_err(|_| malformed())?,
        );
        at += 4;
        if len < 0 {
            out.put_i32(-1);
            continue;
        }
        let value = body.get(at..at + len as usize).ok_or_else(malformed)?;
        at += len as usize;
        if format(results, i) != 1 {
            out.put_i32(len);
            out.put_slice(value);
            continue;
        }
        let ty = types.get(i).copied().unwrap_or(0);
        let encoded = to_binary(ty, value).ok_or_else(|| {
            ProxyError::error(
                "0A000",
                format!(
                    "binary results (column \"{}\", type oid {ty}) are not merged across shards: pgfleet merges \
                     the text format",
                    names.get(i).map_or("?", String::as_str)
                ),
            )
            .with_hint("Request text results for this query (for JDBC, binaryTransfer=false), or add a WHERE on the shard key.")
        })?;
        out.put_i32(encoded.len() as i32);
        out.put_slice(&encoded);
    }
    Ok(build(b'D', &out))
}

/// The binary form of a text value of type `ty`, as PostgreSQL's send function gives it.
pub fn to_binary(ty: u32, text: &[u8]) -> Option<Vec<u8>> {
    let s = std::str::from_utf8(text).ok()?;
    Some(match ty {
        oid::BOOL => vec![u8::from(s == "t")],
        oid::INT2 => s.parse::<i16>().ok()?.to_be_bytes().to_vec(),
        oid::INT4 => s.parse::<i32>().ok()?.to_be_bytes().to_vec(),
        oid::INT8 => s.parse::<i64>().ok()?.to_be_bytes().to_vec(),
        oid::OID => s.parse::<u32>().ok()?.to_be_bytes().to_vec(),
        oid::FLOAT4 => (value::float(text).ok()? as f32).to_bits().to_be_bytes().to_vec(),
        oid::FLOAT8 => value::float(text).ok()?.to_bits().to_be_bytes().to_vec(),
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME => text.to_vec(),
        oid::UUID => uuid(s)?,
        oid::NUMERIC => Numeric::parse(text)?.send(),
        oid::DATE => date(text)?.to_be_bytes().to_vec(),
        oid::TIMESTAMP => timestamp(text, false)?.to_be_bytes().to_vec(),
        oid::TIMESTAMPTZ => timestamp(text, true)?.to_be_bytes().to_vec(),
        _ => return None,
    })
}

fn uuid(s: &str) -> Option<Vec<u8>> {
    let hex: Vec<u8> = s.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    (0..16)
        .map(|i| u8::from_str_radix(std::str::from_utf8(&hex[2 * i..2 * i + 2]).ok()?, 16).ok())
        .collect()
}

/// PostgreSQL's epoch, 2000-01-01, in days from 1970-01-01 (the merger's dates and timestamps count from
/// 1970, the binary forms from 2000).
const PG_EPOCH_DAYS: i64 = 10957;

/// date_send: days from 2000-01-01, infinities as the extreme values.
fn date(text: &[u8]) -> Option<i32> {
    match value::date(text).ok()? {
        i64::MAX => Some(i32::MAX),
        i64::MIN => Some(i32::MIN),
        days => i32::try_from(days - PG_EPOCH_DAYS).ok(),
    }
}

/// timestamp_send / timestamptz_send: microseconds from 2000-01-01 (UTC for timestamptz).
fn timestamp(text: &[u8], zoned: bool) -> Option<i64> {
    match value::timestamp(text, zoned).ok()? {
        i128::MAX => Some(i64::MAX),
        i128::MIN => Some(i64::MIN),
        micros => i64::try_from(micros - i128::from(PG_EPOCH_DAYS) * 86_400_000_000).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_encode_as_postgresql_sends_them() {
        let cases: &[(u32, &str, &[u8])] = &[
            (oid::INT4, "-2", &[0xff, 0xff, 0xff, 0xfe]),
            (oid::INT8, "5", &[0, 0, 0, 0, 0, 0, 0, 5]),
            (oid::INT2, "258", &[1, 2]),
            (oid::BOOL, "t", &[1]),
            (oid::TEXT, "héllo", "héllo".as_bytes()),
            (oid::FLOAT8, "1.5", &[0x3f, 0xf8, 0, 0, 0, 0, 0, 0]),
            (oid::FLOAT4, "1.5", &[0x3f, 0xc0, 0, 0]),
            // 12345.678: ndigits 3, weight 1, sign +, dscale 3, digits 1 2345 6780
            (
                oid::NUMERIC,
                "12345.678",
                &[0, 3, 0, 1, 0, 0, 0, 3, 0, 1, 0x09, 0x29, 0x1a, 0x7c],
            ),
            // -0.0001: ndigits 1, weight -1, sign -, dscale 4, digit 1
            (oid::NUMERIC, "-0.0001", &[0, 1, 0xff, 0xff, 0x40, 0, 0, 4, 0, 1]),
            // 0.00: no digits, weight 0, dscale 2
            (oid::NUMERIC, "0.00", &[0, 0, 0, 0, 0, 0, 0, 2]),
            // 10000: ndigits 1, weight 1, digit 1 (trailing zero group dropped)
            (oid::NUMERIC, "10000", &[0, 1, 0, 1, 0, 0, 0, 0, 0, 1]),
            (oid::NUMERIC, "NaN", &[0, 0, 0, 0, 0xc0, 0, 0, 0]),
            (oid::DATE, "2000-01-02", &[0, 0, 0, 1]),
            (oid::DATE, "infinity", &[0x7f, 0xff, 0xff, 0xff]),
            (oid::DATE, "1999-12-31", &[0xff, 0xff, 0xff, 0xff]),
            (
                oid::TIMESTAMP,
                "2000-01-01 00:00:01.5",
                &[0, 0, 0, 0, 0, 0x16, 0xe3, 0x60],
            ),
            (
                oid::TIMESTAMPTZ,
                "2000-01-01 01:00:01.5+01",
                &[0, 0, 0, 0, 0, 0x16, 0xe3, 0x60],
            ),
            (
                oid::UUID,
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                &[
                    0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a,
                    0x11,
                ],
            ),
        ];
        for (ty, text, expected) in cases {
            assert_eq!(
                to_binary(*ty, text.as_bytes()).as_deref(),
                Some(*expected),
                "{text} as {ty}"
            );
        }
        assert_eq!(to_binary(1186, b"1 day"), None, "interval is not encoded here");
    }
}
