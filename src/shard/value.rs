//! A shard key value as pgfleet reads it from a statement's literal or a Bind parameter, typed by the
//! column's [`ShardKeyType`] so that it hashes as PostgreSQL hashes the column's values.

use crate::config::ShardKeyType;

/// One value of a shard key column.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyValue {
    /// SQL NULL: PostgreSQL's hash partitioning places it on shard 0 (remainder 0).
    Null,
    /// smallint, integer or bigint.
    Int(i64),
    /// text or varchar, as its UTF-8 bytes.
    Text(String),
    /// uuid, its 16 bytes in order.
    Uuid([u8; 16]),
}

/// A literal or parameter that is not a value of the key column's type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyValueError {
    /// Not an integer in bigint's range.
    #[error("invalid input syntax for type bigint: \"{0}\"")]
    Integer(String),
    /// Not a uuid in one of the spellings PostgreSQL accepts.
    #[error("invalid input syntax for type uuid: \"{0}\"")]
    Uuid(String),
    /// A binary parameter of the wrong length.
    #[error("incorrect binary data format in bind parameter: {0} bytes for {1}")]
    BinaryLength(usize, &'static str),
}

impl KeyValue {
    /// The value of a literal's text (the inside of `'...'` with quotes undone, or a bare number) as a value
    /// of the key column, parsed the way PostgreSQL's input functions parse it.
    pub fn parse(text: &str, ty: ShardKeyType) -> Result<KeyValue, KeyValueError> {
        match ty {
            ShardKeyType::Integer => text
                .trim()
                .parse::<i64>()
                .map(KeyValue::Int)
                .map_err(|_| KeyValueError::Integer(text.to_owned())),
            ShardKeyType::Text => Ok(KeyValue::Text(text.to_owned())),
            ShardKeyType::Uuid => parse_uuid(text)
                .map(KeyValue::Uuid)
                .ok_or_else(|| KeyValueError::Uuid(text.to_owned())),
        }
    }

    /// The value of a Bind parameter sent in binary format (int2/int4/int8 by length, uuid as 16 bytes,
    /// text as its bytes).
    pub fn from_binary(bytes: &[u8], ty: ShardKeyType) -> Result<KeyValue, KeyValueError> {
        match ty {
            ShardKeyType::Integer => match bytes.len() {
                2 => Ok(KeyValue::Int(i16::from_be_bytes([bytes[0], bytes[1]]).into())),
                4 => Ok(KeyValue::Int(
                    i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]).into(),
                )),
                8 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(bytes);
                    Ok(KeyValue::Int(i64::from_be_bytes(b)))
                }
                n => Err(KeyValueError::BinaryLength(n, "an integer")),
            },
            ShardKeyType::Text => Ok(KeyValue::Text(String::from_utf8_lossy(bytes).into_owned())),
            ShardKeyType::Uuid => {
                let b: [u8; 16] = bytes
                    .try_into()
                    .map_err(|_| KeyValueError::BinaryLength(bytes.len(), "a uuid"))?;
                Ok(KeyValue::Uuid(b))
            }
        }
    }
}

/// PostgreSQL's uuid input: 32 hex digits, optionally in braces, with a hyphen allowed after any group of
/// four digits.
fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let t = text.trim();
    let t = match (t.strip_prefix('{'), t.ends_with('}')) {
        (Some(inner), true) => &inner[..inner.len() - 1],
        (None, false) => t,
        _ => return None,
    };
    let mut out = [0u8; 16];
    let mut digits = 0usize;
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '-' {
            // A hyphen may only follow a complete group of four digits, and not end the value.
            if digits == 0 || !digits.is_multiple_of(4) || digits == 32 || chars.peek().is_none() {
                return None;
            }
            continue;
        }
        let v = c.to_digit(16)? as u8;
        if digits >= 32 {
            return None;
        }
        out[digits / 2] |= if digits.is_multiple_of(2) { v << 4 } else { v };
        digits += 1;
    }
    (digits == 32).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_parse_as_the_column_type() {
        let uuid = [
            0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a, 0x11,
        ];
        let cases: &[(&str, ShardKeyType, Result<KeyValue, KeyValueError>)] = &[
            ("42", ShardKeyType::Integer, Ok(KeyValue::Int(42))),
            (" -7 ", ShardKeyType::Integer, Ok(KeyValue::Int(-7))),
            (
                "9223372036854775807",
                ShardKeyType::Integer,
                Ok(KeyValue::Int(i64::MAX)),
            ),
            (
                "9223372036854775808",
                ShardKeyType::Integer,
                Err(KeyValueError::Integer("9223372036854775808".into())),
            ),
            (
                "4.5",
                ShardKeyType::Integer,
                Err(KeyValueError::Integer("4.5".into())),
            ),
            (" a b ", ShardKeyType::Text, Ok(KeyValue::Text(" a b ".into()))),
            (
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                ShardKeyType::Uuid,
                Ok(KeyValue::Uuid(uuid)),
            ),
            (
                "{A0EEBC99-9C0B4EF8-BB6D6BB9-BD380A11}",
                ShardKeyType::Uuid,
                Ok(KeyValue::Uuid(uuid)),
            ),
            (
                "a0eebc999c0b4ef8bb6d6bb9bd380a11",
                ShardKeyType::Uuid,
                Ok(KeyValue::Uuid(uuid)),
            ),
            (
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
                ShardKeyType::Uuid,
                Err(KeyValueError::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1".into())),
            ),
            (
                "a0e-ebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                ShardKeyType::Uuid,
                Err(KeyValueError::Uuid(
                    "a0e-ebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into(),
                )),
            ),
        ];
        for (text, ty, expected) in cases {
            assert_eq!(&KeyValue::parse(text, *ty), expected, "{text} as {ty:?}");
        }
    }

    #[test]
    fn binary_parameters_decode_by_length() {
        assert_eq!(
            KeyValue::from_binary(&(-5i16).to_be_bytes(), ShardKeyType::Integer),
            Ok(KeyValue::Int(-5))
        );
        assert_eq!(
            KeyValue::from_binary(&70000i32.to_be_bytes(), ShardKeyType::Integer),
            Ok(KeyValue::Int(70000))
        );
        assert_eq!(
            KeyValue::from_binary(&(1i64 << 40).to_be_bytes(), ShardKeyType::Integer),
            Ok(KeyValue::Int(1 << 40))
        );
        assert_eq!(
            KeyValue::from_binary(&[1, 2, 3], ShardKeyType::Integer),
            Err(KeyValueError::BinaryLength(3, "an integer"))
        );
        assert_eq!(
            KeyValue::from_binary(b"bob", ShardKeyType::Text),
            Ok(KeyValue::Text("bob".into()))
        );
    }
}
