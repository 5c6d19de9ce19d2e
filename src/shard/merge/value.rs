//! Values of the text result format, typed by their RowDescription OID: PostgreSQL's order for the types
//! merges sort on (ORDER BY, min, max), equality keys for GROUP BY and DISTINCT, and float output text.

use std::cmp::Ordering;

use super::numeric::Numeric;

/// Type OIDs of the built-in types merges understand.
pub(crate) mod oid {
    pub(crate) const BOOL: u32 = 16;
    pub(crate) const CHAR: u32 = 18;
    pub(crate) const NAME: u32 = 19;
    pub(crate) const INT8: u32 = 20;
    pub(crate) const INT2: u32 = 21;
    pub(crate) const INT4: u32 = 23;
    pub(crate) const TEXT: u32 = 25;
    pub(crate) const OID: u32 = 26;
    pub(crate) const FLOAT4: u32 = 700;
    pub(crate) const FLOAT8: u32 = 701;
    pub(crate) const BPCHAR: u32 = 1042;
    pub(crate) const VARCHAR: u32 = 1043;
    pub(crate) const DATE: u32 = 1082;
    pub(crate) const TIMESTAMP: u32 = 1114;
    pub(crate) const TIMESTAMPTZ: u32 = 1184;
    pub(crate) const NUMERIC: u32 = 1700;
    pub(crate) const UUID: u32 = 2950;
}

/// How values of one column compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Int,
    Float,
    Numeric,
    /// text and varchar: order depends on the collation, equality is bytewise (deterministic collations).
    Text,
    /// bpchar: as text, trailing spaces not significant.
    Bpchar,
    /// bool, "char", name, uuid: bytewise in every collation.
    Bytes,
    Date,
    Timestamp,
    TimestampTz,
}

impl Kind {
    /// The kind of a type OID, None for a type merges cannot compare.
    pub(crate) fn of(type_oid: u32) -> Option<Kind> {
        Some(match type_oid {
            oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => Kind::Int,
            oid::FLOAT4 | oid::FLOAT8 => Kind::Float,
            oid::NUMERIC => Kind::Numeric,
            oid::TEXT | oid::VARCHAR => Kind::Text,
            oid::BPCHAR => Kind::Bpchar,
            oid::BOOL | oid::CHAR | oid::NAME | oid::UUID => Kind::Bytes,
            oid::DATE => Kind::Date,
            oid::TIMESTAMP => Kind::Timestamp,
            oid::TIMESTAMPTZ => Kind::TimestampTz,
            _ => return None,
        })
    }

    /// Whether the order of these values follows the collation.
    pub(crate) fn collated(self) -> bool {
        matches!(self, Kind::Text | Kind::Bpchar)
    }
}

/// A value that is not in the text form this module reads (another DateStyle, extra_float_digits...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unreadable;

/// PostgreSQL's order of two non-NULL values of one kind.
pub(crate) fn compare(kind: Kind, a: &[u8], b: &[u8]) -> Result<Ordering, Unreadable> {
    Ok(match kind {
        Kind::Int => int(a)?.cmp(&int(b)?),
        Kind::Float => float_cmp(float(a)?, float(b)?),
        Kind::Numeric => num(a)?.cmp(&num(b)?),
        Kind::Text | Kind::Bytes => a.cmp(b),
        Kind::Bpchar => trim_spaces(a).cmp(trim_spaces(b)),
        Kind::Date => date(a)?.cmp(&date(b)?),
        Kind::Timestamp => timestamp(a, false)?.cmp(&timestamp(b, false)?),
        Kind::TimestampTz => timestamp(a, true)?.cmp(&timestamp(b, true)?),
    })
}

/// A key equal for values PostgreSQL's `=` finds equal (1.0 and 1.00, 0 and -0, 'a' and 'a ' as bpchar).
pub(crate) fn equality_key(kind: Kind, v: &[u8]) -> Result<Vec<u8>, Unreadable> {
    Ok(match kind {
        Kind::Numeric => num(v)?.canonical().into_bytes(),
        Kind::Float => {
            let f = float(v)?;
            if f.is_nan() {
                b"NaN".to_vec()
            } else if f == 0.0 {
                b"0".to_vec()
            } else {
                f.to_bits().to_be_bytes().to_vec()
            }
        }
        Kind::Bpchar => trim_spaces(v).to_vec(),
        Kind::Int => int(v)?.to_string().into_bytes(),
        Kind::Text | Kind::Bytes | Kind::Date | Kind::Timestamp | Kind::TimestampTz => v.to_vec(),
    })
}

fn trim_spaces(v: &[u8]) -> &[u8] {
    let end = v.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
    &v[..end]
}

pub(crate) fn int(v: &[u8]) -> Result<i128, Unreadable> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(Unreadable)
}

pub(crate) fn num(v: &[u8]) -> Result<Numeric, Unreadable> {
    Numeric::parse(v).ok_or(Unreadable)
}

/// float4/float8 text (`NaN`, `Infinity`, `-Infinity`, decimal or exponent form).
pub(crate) fn float(v: &[u8]) -> Result<f64, Unreadable> {
    match v {
        b"NaN" => Ok(f64::NAN),
        b"Infinity" => Ok(f64::INFINITY),
        b"-Infinity" => Ok(f64::NEG_INFINITY),
        _ => std::str::from_utf8(v)
            .ok()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit() || b"+-.e".contains(&b)))
            .and_then(|s| s.parse().ok())
            .ok_or(Unreadable),
    }
}

/// PostgreSQL's float order: NaN equal to itself and above everything, -0 equal to 0.
pub(crate) fn float_cmp(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// float8out's text (extra_float_digits >= 1, the default since PostgreSQL 12): the shortest digits that
/// read back exactly, in fixed notation for decimal exponents in [-4, 15) and as `d.ddde+XX` otherwise.
pub(crate) fn float8_text(v: f64) -> String {
    float_text(v, format!("{v:e}"), 15)
}

/// float4out's text: as [`float8_text`] with float4's shortest digits and fixed notation below 1e6.
pub(crate) fn float4_text(v: f32) -> String {
    float_text(f64::from(v), format!("{v:e}"), 6)
}

fn float_text(v: f64, sci: String, fixed_below: i32) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    if (-4..fixed_below).contains(&exp) {
        if exp < 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", exp.abs()));
    }
    out
}

/// An ISO date (`YYYY-MM-DD[ BC]`, `infinity`, `-infinity`) as days from 1970-01-01.
pub(crate) fn date(v: &[u8]) -> Result<i64, Unreadable> {
    match v {
        b"infinity" => return Ok(i64::MAX),
        b"-infinity" => return Ok(i64::MIN),
        _ => {}
    }
    let s = std::str::from_utf8(v).map_err(|_| Unreadable)?;
    let (s, bc) = match s.strip_suffix(" BC") {
        Some(s) => (s, true),
        None => (s, false),
    };
    ymd(s, bc)
}

fn ymd(s: &str, bc: bool) -> Result<i64, Unreadable> {
    let mut parts = s.splitn(3, '-');
    let mut next = || -> Result<i64, Unreadable> {
        let p = parts.next().ok_or(Unreadable)?;
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Unreadable);
        }
        p.parse().map_err(|_| Unreadable)
    };
    let (y, m, d) = (next()?, next()?, next()?);
    // Year 1 BC is astronomical year 0.
    let y = if bc { 1 - y } else { y };
    Ok(days_from_civil(y, m, d))
}

/// Days from 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// An ISO timestamp (`YYYY-MM-DD HH:MM:SS[.ffffff][±HH[:MM[:SS]]][ BC]`) as microseconds from the epoch,
/// in UTC when `with_zone`.
pub(crate) fn timestamp(v: &[u8], with_zone: bool) -> Result<i128, Unreadable> {
    match v {
        b"infinity" => return Ok(i128::MAX),
        b"-infinity" => return Ok(i128::MIN),
        _ => {}
    }
    let s = std::str::from_utf8(v).map_err(|_| Unreadable)?;
    let (s, bc) = match s.strip_suffix(" BC") {
        Some(s) => (s, true),
        None => (s, false),
    };
    let (day, time) = s.split_once(' ').ok_or(Unreadable)?;
    let days = ymd(day, bc)?;
    let (clock, zone) = if with_zone {
        let at = time.rfind(['+', '-']).ok_or(Unreadable)?;
        (&time[..at], Some(&time[at..]))
    } else {
        (time, None)
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let secs = clock_seconds(hms)?;
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Unreadable);
    }
    let micros: i128 = format!("{frac:0<6}").parse().map_err(|_| Unreadable)?;
    let offset = match zone {
        Some(z) => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            sign * clock_seconds(&z[1..])?
        }
        None => 0,
    };
    Ok((i128::from(days) * 86_400 + secs - offset) * 1_000_000 + micros)
}

/// `HH[:MM[:SS]]` as seconds.
fn clock_seconds(s: &str) -> Result<i128, Unreadable> {
    let mut total = 0i128;
    let mut n = 0;
    for part in s.split(':') {
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_digit()) || n == 3 {
            return Err(Unreadable);
        }
        total = total * 60 + part.parse::<i128>().map_err(|_| Unreadable)?;
        n += 1;
    }
    Ok(total * 60i128.pow(3 - n))
}
