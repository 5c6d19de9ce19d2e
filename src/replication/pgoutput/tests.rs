//! Unit tests of `pgoutput`.

use super::*;

/// The decoders read from [`Bytes`] (values are slices of the message); the tests build plain buffers.
fn decode(data: &[u8]) -> Result<PgOutput, DecodeError> {
    super::decode(&Bytes::copy_from_slice(data))
}

fn decode_copy_data(body: &[u8]) -> Result<ReplicationMessage, DecodeError> {
    super::decode_copy_data(&Bytes::copy_from_slice(body))
}

/// Builds messages field by field, the way the walsender lays them out.
struct Msg(Vec<u8>);

impl Msg {
    fn tag(t: u8) -> Self {
        Msg(vec![t])
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn i16(mut self, v: i16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn str(mut self, s: &str) -> Self {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn text(self, s: &str) -> Self {
        let len = i32::try_from(s.len()).expect("short test text");
        self.u8(b't').i32(len).raw(s.as_bytes())
    }
}

fn begin() -> Vec<u8> {
    Msg::tag(b'B').u64(0x16_B374_D848).i64(7_000_000).u32(742).0
}

fn commit() -> Vec<u8> {
    Msg::tag(b'C').u8(0).u64(0x100).u64(0x130).i64(-5).0
}

fn origin() -> Vec<u8> {
    Msg::tag(b'O').u64(0x42).str("node_a").0
}

fn relation() -> Vec<u8> {
    Msg::tag(b'R')
        .u32(16384)
        .str("public")
        .str("Orders")
        .u8(b'd')
        .i16(2)
        .u8(1)
        .str("id")
        .u32(23)
        .i32(-1)
        .u8(0)
        .str("note")
        .u32(1043)
        .i32(104)
        .0
}

fn type_msg() -> Vec<u8> {
    Msg::tag(b'Y').u32(90000).str("public").str("mood").0
}

fn insert() -> Vec<u8> {
    Msg::tag(b'I')
        .u32(16384)
        .u8(b'N')
        .i16(3)
        .text("1")
        .u8(b'n')
        .text("héllo 'x'")
        .0
}

fn update_plain() -> Vec<u8> {
    Msg::tag(b'U').u32(16384).u8(b'N').i16(2).text("1").u8(b'u').0
}

fn update_key() -> Vec<u8> {
    Msg::tag(b'U')
        .u32(16384)
        .u8(b'K')
        .i16(2)
        .text("1")
        .u8(b'n')
        .u8(b'N')
        .i16(2)
        .text("2")
        .text("b")
        .0
}

fn update_full() -> Vec<u8> {
    Msg::tag(b'U')
        .u32(16384)
        .u8(b'O')
        .i16(2)
        .text("1")
        .u8(b'n')
        .u8(b'N')
        .i16(2)
        .text("1")
        .u8(b'u')
        .0
}

fn delete_key() -> Vec<u8> {
    Msg::tag(b'D').u32(16384).u8(b'K').i16(2).text("7").u8(b'n').0
}

fn delete_full() -> Vec<u8> {
    Msg::tag(b'D').u32(16384).u8(b'O').i16(2).text("7").text("x").0
}

fn truncate() -> Vec<u8> {
    Msg::tag(b'T').i32(2).u8(3).u32(16384).u32(16390).0
}

fn message() -> Vec<u8> {
    Msg::tag(b'M')
        .u8(1)
        .u64(0x99)
        .str("pgfleet")
        .i32(3)
        .raw(b"a\0b")
        .0
}

fn binary_insert() -> Vec<u8> {
    Msg::tag(b'I')
        .u32(5)
        .u8(b'N')
        .i16(1)
        .u8(b'b')
        .i32(2)
        .raw(&[0xde, 0xad])
        .0
}

fn keepalive() -> Vec<u8> {
    Msg::tag(b'k').u64(0x1_0000_0010).i64(123_456).u8(1).0
}

fn xlogdata() -> Vec<u8> {
    Msg::tag(b'w').u64(0x10).u64(0x20).i64(99).raw(&begin()).0
}

fn all_pgoutput() -> Vec<Vec<u8>> {
    vec![
        begin(),
        commit(),
        origin(),
        relation(),
        type_msg(),
        insert(),
        update_plain(),
        update_key(),
        update_full(),
        delete_key(),
        delete_full(),
        truncate(),
        message(),
        binary_insert(),
    ]
}

fn text(s: &str) -> Datum {
    Datum::Text(s.into())
}

#[test]
fn begin_and_commit() {
    assert_eq!(
        decode(&begin()),
        Ok(PgOutput::Begin {
            final_lsn: Lsn(0x16_B374_D848),
            commit_time: 7_000_000,
            xid: 742
        })
    );
    assert_eq!(
        decode(&commit()),
        Ok(PgOutput::Commit {
            flags: 0,
            commit_lsn: Lsn(0x100),
            end_lsn: Lsn(0x130),
            commit_time: -5
        })
    );
}

#[test]
fn origin_and_type() {
    assert_eq!(
        decode(&origin()),
        Ok(PgOutput::Origin {
            lsn: Lsn(0x42),
            name: "node_a".into()
        })
    );
    assert_eq!(
        decode(&type_msg()),
        Ok(PgOutput::Type {
            id: 90000,
            namespace: "public".into(),
            name: "mood".into()
        })
    );
}

#[test]
fn relation_message() {
    let expected = Relation {
        id: 16384,
        namespace: "public".into(),
        name: "Orders".into(),
        replica_identity: b'd',
        columns: vec![
            Column {
                key: true,
                name: "id".into(),
                type_oid: 23,
                type_modifier: -1,
            },
            Column {
                key: false,
                name: "note".into(),
                type_oid: 1043,
                type_modifier: 104,
            },
        ],
    };
    assert_eq!(decode(&relation()), Ok(PgOutput::Relation(expected)));
}

#[test]
fn relation_with_no_columns_and_reserved_flag_bits() {
    let msg = Msg::tag(b'R')
        .u32(1)
        .str("")
        .str("t")
        .u8(b'f')
        .i16(1)
        .u8(0x02)
        .str("c")
        .u32(25)
        .i32(-1)
        .0;
    let Ok(PgOutput::Relation(rel)) = decode(&msg) else {
        panic!("not a relation: {:?}", decode(&msg));
    };
    assert_eq!(rel.namespace, "");
    assert_eq!(rel.replica_identity, b'f');
    assert!(!rel.columns[0].key, "only bit 0 marks a key column");

    let empty = Msg::tag(b'R').u32(2).str("s").str("t").u8(b'n').i16(0).0;
    let Ok(PgOutput::Relation(rel)) = decode(&empty) else {
        panic!("not a relation");
    };
    assert!(rel.columns.is_empty());
}

#[test]
fn insert_with_null_and_text() {
    assert_eq!(
        decode(&insert()),
        Ok(PgOutput::Insert {
            relation: 16384,
            new: vec![text("1"), Datum::Null, text("héllo 'x'")]
        })
    );
    assert_eq!(
        decode(&binary_insert()),
        Ok(PgOutput::Insert {
            relation: 5,
            new: vec![Datum::Binary(Bytes::from_static(&[0xde, 0xad]))]
        })
    );
}

#[test]
fn empty_text_value_is_not_null() {
    let msg = Msg::tag(b'I').u32(1).u8(b'N').i16(1).text("").0;
    assert_eq!(
        decode(&msg),
        Ok(PgOutput::Insert {
            relation: 1,
            new: vec![text("")]
        })
    );
}

#[test]
fn update_without_old_tuple() {
    assert_eq!(
        decode(&update_plain()),
        Ok(PgOutput::Update {
            relation: 16384,
            old: None,
            key_only: false,
            new: vec![text("1"), Datum::UnchangedToast]
        })
    );
}

#[test]
fn update_with_old_key() {
    assert_eq!(
        decode(&update_key()),
        Ok(PgOutput::Update {
            relation: 16384,
            old: Some(vec![text("1"), Datum::Null]),
            key_only: true,
            new: vec![text("2"), text("b")]
        })
    );
}

#[test]
fn update_with_full_old_row() {
    assert_eq!(
        decode(&update_full()),
        Ok(PgOutput::Update {
            relation: 16384,
            old: Some(vec![text("1"), Datum::Null]),
            key_only: false,
            new: vec![text("1"), Datum::UnchangedToast]
        })
    );
}

#[test]
fn deletes() {
    assert_eq!(
        decode(&delete_key()),
        Ok(PgOutput::Delete {
            relation: 16384,
            old: vec![text("7"), Datum::Null],
            key_only: true
        })
    );
    assert_eq!(
        decode(&delete_full()),
        Ok(PgOutput::Delete {
            relation: 16384,
            old: vec![text("7"), text("x")],
            key_only: false
        })
    );
}

#[test]
fn truncate_options() {
    assert_eq!(
        decode(&truncate()),
        Ok(PgOutput::Truncate {
            cascade: true,
            restart_identity: true,
            relations: vec![16384, 16390]
        })
    );
    let restart_only = Msg::tag(b'T').i32(1).u8(2).u32(9).0;
    assert_eq!(
        decode(&restart_only),
        Ok(PgOutput::Truncate {
            cascade: false,
            restart_identity: true,
            relations: vec![9]
        })
    );
}

#[test]
fn logical_message() {
    assert_eq!(
        decode(&message()),
        Ok(PgOutput::Message {
            transactional: true,
            lsn: Lsn(0x99),
            prefix: "pgfleet".into(),
            content: Bytes::from_static(b"a\0b")
        })
    );
    let plain = Msg::tag(b'M').u8(0).u64(1).str("p").i32(0).0;
    assert_eq!(
        decode(&plain),
        Ok(PgOutput::Message {
            transactional: false,
            lsn: Lsn(1),
            prefix: "p".into(),
            content: Bytes::new()
        })
    );
}

#[test]
fn keepalive_envelope() {
    assert_eq!(
        decode_copy_data(&keepalive()),
        Ok(ReplicationMessage::PrimaryKeepalive {
            wal_end: Lsn(0x1_0000_0010),
            server_time: 123_456,
            reply_requested: true
        })
    );
    let no_reply = Msg::tag(b'k').u64(1).i64(2).u8(0).0;
    assert!(matches!(
        decode_copy_data(&no_reply),
        Ok(ReplicationMessage::PrimaryKeepalive {
            reply_requested: false,
            ..
        })
    ));
}

#[test]
fn xlogdata_envelope_carries_a_pgoutput_message() {
    let Ok(ReplicationMessage::XLogData {
        wal_start,
        wal_end,
        server_time,
        data,
    }) = decode_copy_data(&xlogdata())
    else {
        panic!("not XLogData");
    };
    assert_eq!((wal_start, wal_end, server_time), (Lsn(0x10), Lsn(0x20), 99));
    assert_eq!(&data[..], &begin()[..]);
    assert!(matches!(decode(&data), Ok(PgOutput::Begin { xid: 742, .. })));

    // An XLogData with an empty payload is well formed as an envelope.
    let empty = Msg::tag(b'w').u64(1).u64(2).i64(3).0;
    assert!(matches!(
        decode_copy_data(&empty),
        Ok(ReplicationMessage::XLogData { data, .. }) if data.is_empty()
    ));
}

#[test]
fn standby_status_update_layout() {
    let msg = standby_status_update(Lsn(0x0102_0304_0506_0708), Lsn(0x10), Lsn(0x20), -2, true);
    assert_eq!(msg.len(), 34);
    assert_eq!(msg[0], b'r');
    assert_eq!(&msg[1..9], &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(&msg[9..17], &0x10u64.to_be_bytes());
    assert_eq!(&msg[17..25], &0x20u64.to_be_bytes());
    assert_eq!(&msg[25..33], &(-2i64).to_be_bytes());
    assert_eq!(msg[33], 1);
    assert_eq!(standby_status_update(Lsn(0), Lsn(0), Lsn(0), 0, false)[33], 0);
}

#[test]
fn empty_and_unknown_types() {
    assert_eq!(decode(&[]), Err(DecodeError::Empty));
    assert_eq!(decode_copy_data(&[]), Err(DecodeError::Empty));
    assert_eq!(decode(b"P"), Err(DecodeError::UnknownMessage(b'P')));
    assert_eq!(decode_copy_data(b"x"), Err(DecodeError::UnknownCopyData(b'x')));
}

#[test]
fn every_truncation_of_every_message_is_an_error() {
    let mut messages = all_pgoutput();
    messages.push(keepalive());
    for msg in messages {
        let is_envelope = msg[0] == b'k';
        for cut in 0..msg.len() {
            let prefix = &msg[..cut];
            let result = if is_envelope {
                decode_copy_data(prefix).map(|_| ())
            } else {
                decode(prefix).map(|_| ())
            };
            assert!(result.is_err(), "prefix {prefix:?} of {msg:?} decoded");
        }
    }
    // XLogData's payload is open-ended, so only its header can be cut short.
    let xlog = xlogdata();
    for cut in 0..25 {
        assert!(decode_copy_data(&xlog[..cut]).is_err(), "cut {cut}");
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    let mut messages = all_pgoutput();
    messages.push(keepalive());
    for mut msg in messages {
        msg.push(0);
        let result = if msg[0] == b'k' {
            decode_copy_data(&msg).map(|_| ())
        } else {
            decode(&msg).map(|_| ())
        };
        assert!(
            matches!(result, Err(DecodeError::TrailingBytes { count: 1, .. })),
            "{msg:?}: {result:?}"
        );
    }
}

#[test]
fn malformed_fields() {
    let bad_kind = Msg::tag(b'I').u32(1).u8(b'N').i16(1).u8(b'x').0;
    assert!(matches!(
        decode(&bad_kind),
        Err(DecodeError::UnknownColumnKind { kind: b'x', .. })
    ));
    let negative_len = Msg::tag(b'I').u32(1).u8(b'N').i16(1).u8(b't').i32(-1).0;
    assert!(matches!(
        decode(&negative_len),
        Err(DecodeError::NegativeLength { value: -1, .. })
    ));
    let negative_cols = Msg::tag(b'I').u32(1).u8(b'N').i16(-3).0;
    assert!(matches!(
        decode(&negative_cols),
        Err(DecodeError::NegativeLength { .. })
    ));
    let huge_len = Msg::tag(b'I')
        .u32(1)
        .u8(b'N')
        .i16(1)
        .u8(b't')
        .i32(i32::MAX)
        .raw(b"ab")
        .0;
    assert!(matches!(decode(&huge_len), Err(DecodeError::Truncated { .. })));
    let huge_truncate = Msg::tag(b'T').i32(i32::MAX).u8(0).u32(1).0;
    assert!(matches!(
        decode(&huge_truncate),
        Err(DecodeError::Truncated { .. })
    ));
    let negative_truncate = Msg::tag(b'T').i32(-1).u8(0).0;
    assert!(matches!(
        decode(&negative_truncate),
        Err(DecodeError::NegativeLength { .. })
    ));
    let bad_utf8 = Msg::tag(b'I')
        .u32(1)
        .u8(b'N')
        .i16(1)
        .u8(b't')
        .i32(1)
        .raw(&[0xff])
        .0;
    assert!(matches!(decode(&bad_utf8), Err(DecodeError::InvalidUtf8 { .. })));
    let bad_name = Msg::tag(b'O').u64(1).raw(&[0xc3, 0x28, 0]).0;
    assert!(matches!(decode(&bad_name), Err(DecodeError::InvalidUtf8 { .. })));
    let unterminated = Msg::tag(b'Y').u32(1).str("ns").raw(b"name").0;
    assert!(matches!(
        decode(&unterminated),
        Err(DecodeError::UnterminatedString { .. })
    ));
    let insert_without_n = Msg::tag(b'I').u32(1).u8(b'K').i16(0).0;
    assert!(matches!(
        decode(&insert_without_n),
        Err(DecodeError::UnexpectedMarker { found: b'K', .. })
    ));
    let update_bad_marker = Msg::tag(b'U').u32(1).u8(b'X').i16(0).0;
    assert!(matches!(
        decode(&update_bad_marker),
        Err(DecodeError::UnexpectedMarker { found: b'X', .. })
    ));
    let update_two_olds = Msg::tag(b'U').u32(1).u8(b'K').i16(0).u8(b'O').i16(0).0;
    assert!(matches!(
        decode(&update_two_olds),
        Err(DecodeError::UnexpectedMarker { found: b'O', .. })
    ));
    let delete_with_new = Msg::tag(b'D').u32(1).u8(b'N').i16(0).0;
    assert!(matches!(
        decode(&delete_with_new),
        Err(DecodeError::UnexpectedMarker { found: b'N', .. })
    ));
}

#[test]
fn errors_render() {
    let err = decode(&insert()[..6]).expect_err("truncated");
    assert_eq!(
        err.to_string(),
        "Insert message truncated: needed 2 bytes for tuple column count, 0 left"
    );
    assert_eq!(
        DecodeError::UnknownMessage(b'S').to_string(),
        "unknown pgoutput message type 'S' (0x53)"
    );
}

/// Random bytes behind every message type byte, and random mutations of valid messages: whatever the
/// result, decoding must return rather than panic or allocate without bound.
#[test]
fn garbage_never_panics() {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        // xorshift64*: deterministic, so a failure reproduces.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let tags = b"BCORYIUDTMwkSE";
    for round in 0..20_000 {
        let len = usize::try_from(next() % 64).unwrap_or(0);
        let mut buf: Vec<u8> = (0..len).map(|_| next().to_be_bytes()[0]).collect();
        if let Some(first) = buf.first_mut() {
            *first = tags[round % tags.len()];
        }
        let _ = decode(&buf);
        let _ = decode_copy_data(&buf);
    }
    for msg in all_pgoutput() {
        for _ in 0..2_000 {
            let mut mutated = msg.clone();
            let flips = 1 + next() % 3;
            for _ in 0..flips {
                let at = usize::try_from(next() % mutated.len() as u64).unwrap_or(0);
                mutated[at] = next().to_be_bytes()[0];
            }
            let _ = decode(&mutated);
        }
    }
}

#[test]
fn row_values_are_slices_of_the_message() {
    // A bulk change decodes millions of values: they point into the message they came in, not into copies.
    let msg = Msg::tag(b'I')
        .u32(16384)
        .u8(b'N')
        .i16(2)
        .text("4711")
        .text("hello");
    let data = Bytes::from(msg.0);
    let Ok(PgOutput::Insert { new, .. }) = super::decode(&data) else {
        panic!("not an insert");
    };
    let within = data.as_ptr_range();
    for datum in &new {
        let Datum::Text(t) = datum else {
            panic!("not text: {datum:?}");
        };
        assert!(within.contains(&t.as_bytes().as_ptr()), "{t:?} was copied");
    }
    assert_eq!(new, vec![Datum::Text("4711".into()), Datum::Text("hello".into())]);
}

#[test]
fn streamed_blocks_and_their_ends_decode() {
    let start = Msg::tag(b'S').u32(741).u8(1).0;
    assert_eq!(
        decode(&start),
        Ok(PgOutput::StreamStart {
            xid: 741,
            first: true
        })
    );
    let later = Msg::tag(b'S').u32(741).u8(0).0;
    assert_eq!(
        decode(&later),
        Ok(PgOutput::StreamStart {
            xid: 741,
            first: false
        })
    );
    assert_eq!(decode(b"E"), Ok(PgOutput::StreamStop));
    let commit = Msg::tag(b'c')
        .u32(741)
        .u8(0)
        .u64(0x0000_0001_0000_0010)
        .u64(0x0000_0001_0000_0040)
        .i64(99)
        .0;
    assert_eq!(
        decode(&commit),
        Ok(PgOutput::StreamCommit {
            xid: 741,
            commit_lsn: Lsn(0x0000_0001_0000_0010),
            end_lsn: Lsn(0x0000_0001_0000_0040),
            commit_time: 99,
        })
    );
    let abort = Msg::tag(b'A').u32(741).u32(745).0;
    assert_eq!(
        decode(&abort),
        Ok(PgOutput::StreamAbort {
            xid: 741,
            subxid: 745
        })
    );
    assert!(matches!(
        decode(&Msg::tag(b'c').u32(741).u8(0).u64(1).0),
        Err(DecodeError::Truncated { .. })
    ));
}

#[test]
fn a_change_inside_a_block_carries_its_xid_first() {
    let insert = Msg::tag(b'I').u32(745).u32(16384).u8(b'N').i16(1).text("7").0;
    let (xid, change) = super::decode_streamed(&Bytes::from(insert)).expect("decodes");
    assert_eq!(xid, Some(745));
    assert_eq!(
        change,
        PgOutput::Insert {
            relation: 16384,
            new: vec![Datum::Text(Text(Bytes::from_static(b"7")))],
        }
    );
    let (xid, stop) = super::decode_streamed(&Bytes::from_static(b"E")).expect("decodes");
    assert_eq!((xid, stop), (None, PgOutput::StreamStop));
    // The origin of a transaction replicated from elsewhere comes inside its first block, without an xid.
    let origin = Msg::tag(b'O').u64(0x10).str("upstream").0;
    let (xid, origin) = super::decode_streamed(&Bytes::from(origin)).expect("decodes");
    assert_eq!(
        (xid, origin),
        (
            None,
            PgOutput::Origin {
                lsn: Lsn(0x10),
                name: "upstream".into()
            }
        )
    );
    // Without its xid the same bytes are not a change of relation 745.
    assert!(super::decode_streamed(&Bytes::from_static(b"I\0\0")).is_err());
}
