//! The protocol messages a merge reads and writes: RowDescription fields and DataRow values in the text
//! format, and the client's RowDescription, DataRow and CommandComplete frames.

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::frame::build;

/// One field of a RowDescription.
#[derive(Debug, Clone)]
pub(super) struct Field {
    pub(super) name: String,
    pub(super) type_oid: u32,
    /// Format code: 0 text, 1 binary.
    pub(super) format: i16,
    /// The field's whole encoding, copied to the client's RowDescription unchanged.
    pub(super) raw: Vec<u8>,
}

/// A DataRow's values, NULL as None.
pub(super) type Row = Vec<Option<Bytes>>;

pub(super) fn parse_row_description(body: &[u8]) -> Option<Vec<Field>> {
    let n = i16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    let mut at = 2;
    let mut fields = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let start = at;
        let end = at + body.get(at..)?.iter().position(|&b| b == 0)?;
        let name = String::from_utf8_lossy(&body[at..end]).into_owned();
        at = end + 1;
        let fixed = body.get(at..at + 18)?;
        let type_oid = u32::from_be_bytes(fixed[6..10].try_into().ok()?);
        let format = i16::from_be_bytes(fixed[16..18].try_into().ok()?);
        at += 18;
        fields.push(Field {
            name,
            type_oid,
            format,
            raw: body[start..at].to_vec(),
        });
    }
    Some(fields)
}

pub(super) fn encode_field(name: &str, type_oid: u32, typlen: i16, typmod: i32) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_slice(name.as_bytes());
    b.put_u8(0);
    b.put_u32(0);
    b.put_i16(0);
    b.put_u32(type_oid);
    b.put_i16(typlen);
    b.put_i32(typmod);
    b.put_i16(0);
    b.to_vec()
}

pub(super) fn parse_data_row(body: &[u8], width: usize) -> Option<Row> {
    let n = i16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    if n < 0 || n as usize != width {
        return None;
    }
    let mut at = 2;
    let mut row = Vec::with_capacity(width);
    for _ in 0..n {
        let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if len < 0 {
            row.push(None);
        } else {
            let v = body.get(at..at + len as usize)?;
            row.push(Some(Bytes::copy_from_slice(v)));
            at += len as usize;
        }
    }
    Some(row)
}

pub(super) fn encode_row(row: &[Option<Bytes>]) -> Bytes {
    let mut body = BytesMut::new();
    body.put_i16(row.len() as i16);
    for v in row {
        match v {
            None => body.put_i32(-1),
            Some(v) => {
                body.put_i32(v.len() as i32);
                body.put_slice(v);
            }
        }
    }
    build(b'D', &body)
}

pub(super) fn command_complete(n: u64) -> Bytes {
    build(b'C', format!("SELECT {n}\0").as_bytes())
}
