use super::*;

/// (case, options, key, input, what shards 0, 1 and 2 receive, rows)
type SplitCase = (
    &'static str,
    CopyOptions,
    KeyField,
    &'static str,
    [&'static str; 3],
    u64,
);
/// (statement, table name parts, column list, options)
type StatementCase = (
    &'static str,
    Vec<&'static str>,
    Option<Vec<&'static str>>,
    CopyOptions,
);
/// (statement, the key's index or the refusal's SQLSTATE and message)
type RefusalCase = (&'static str, Result<usize, (&'static str, &'static str)>);
use crate::shard::hash::shard_for;

/// A placement the expected outputs can be written by hand for: integers by value mod 3, text by its
/// length (in characters) mod 3, NULL on shard 0.
fn by_value(v: &KeyValue) -> ShardId {
    ShardId::new(match v {
        KeyValue::Null => 0,
        KeyValue::Int(i) => i.rem_euclid(3) as u32,
        KeyValue::Text(s) => (s.chars().count() % 3) as u32,
        KeyValue::Uuid(b) => u32::from(b[15] % 3),
    })
}

fn key(index: usize, key_type: ShardKeyType) -> KeyField {
    KeyField {
        index,
        column: "id".into(),
        key_type,
    }
}

/// Feeds `input` in the given chunks and returns what each of 3 shards received and the row count.
fn split(
    options: &CopyOptions,
    key: &KeyField,
    chunks: &[&[u8]],
) -> Result<([Vec<u8>; 3], u64), CopyDataError> {
    let place = by_value;
    let mut s = CopySplitter::new(options.clone(), key.clone(), 3, &place);
    let mut got: [Vec<u8>; 3] = Default::default();
    let mut rows = 0;
    let mut take = |r: RoutedRows| {
        assert_eq!(r.per_shard.len(), 3);
        for (i, bytes) in r.per_shard.into_iter().enumerate() {
            got[i].extend(bytes);
        }
        rows += r.rows;
    };
    for c in chunks {
        take(s.push(c)?);
    }
    take(s.finish()?);
    Ok((got, rows))
}

/// Every way to cut `input`: whole, at each single point, and one byte at a time.
fn cuts(input: &[u8]) -> Vec<Vec<&[u8]>> {
    let mut all = vec![vec![input]];
    for at in 1..input.len() {
        all.push(vec![&input[..at], &input[at..]]);
    }
    all.push(input.chunks(1).collect());
    all
}

fn with_header(mut o: CopyOptions) -> CopyOptions {
    o.header = true;
    o
}

#[test]
fn rows_go_whole_to_their_shard_however_the_data_is_cut() {
    let text = CopyOptions::text();
    let csv = CopyOptions::csv();
    let csv_semicolon = CopyOptions {
        delimiter: b';',
        null: b"NULL".to_vec(),
        ..CopyOptions::csv()
    };
    let int = ShardKeyType::Integer;
    let txt = ShardKeyType::Text;
    // (case, options, key, input, [shard 0, shard 1, shard 2], rows)
    let cases: Vec<SplitCase> = vec![
        (
            "text rows by integer key",
            text.clone(),
            key(0, int),
            "1\ta\n2\tb\n3\tc\n-4\td\n",
            ["3\tc\n", "1\ta\n", "2\tb\n-4\td\n"],
            4,
        ),
        (
            "key in the second field after an escaped tab",
            text.clone(),
            key(1, int),
            "a\\tb\t4\nx\t5\n",
            ["", "a\\tb\t4\n", "x\t5\n"],
            2,
        ),
        (
            "text NULL key and a literal \\\\N that is not NULL",
            text.clone(),
            key(0, txt),
            "\\N\tx\n\\\\N\ty\n",
            ["\\N\tx\n", "", "\\\\N\ty\n"],
            2,
        ),
        (
            "escapes decoded in the key: octal, hex, \\n, \\\\",
            text.clone(),
            key(0, txt),
            "\\101bc\t1\n\\x41\t2\n\\n\\\\\t3\n",
            ["\\101bc\t1\n", "\\x41\t2\n", "\\n\\\\\t3\n"],
            3,
        ),
        (
            "backslash before a line end continues the row",
            text.clone(),
            key(1, int),
            "x\\\ny\t7\n",
            ["", "x\\\ny\t7\n", ""],
            1,
        ),
        (
            "end-of-data marker stops the data",
            text.clone(),
            key(0, int),
            "1\n\\.\n5\n",
            ["", "1\n", ""],
            1,
        ),
        (
            "data before \\. on the last line is a row that keeps the marker",
            text.clone(),
            key(0, int),
            "1\n2\\.\n3\n",
            ["", "1\n", "2\\.\n"],
            2,
        ),
        (
            "CRLF end-of-data marker",
            text.clone(),
            key(0, int),
            "1\r\n\\.\r\n4\r\n",
            ["", "1\r\n", ""],
            1,
        ),
        (
            "CRLF line ends",
            text.clone(),
            key(0, int),
            "1\r\n2\r\n",
            ["", "1\r\n", "2\r\n"],
            2,
        ),
        (
            "CR line ends",
            text.clone(),
            key(0, int),
            "1\r2\r",
            ["", "1\r", "2\r"],
            2,
        ),
        (
            "a last line without its line end is a row",
            text.clone(),
            key(0, int),
            "1\n2",
            ["", "1\n", "2"],
            2,
        ),
        (
            "text header goes to every shard",
            with_header(text.clone()),
            key(0, int),
            "id\tname\n1\ta\n",
            ["id\tname\n", "id\tname\n1\ta\n", "id\tname\n"],
            1,
        ),
        (
            "csv quoted delimiter and newline before the key",
            csv.clone(),
            key(1, int),
            "\"a,\nb\",5\nc,6\n",
            ["c,6\n", "", "\"a,\nb\",5\n"],
            2,
        ),
        (
            "csv doubled quote inside the key",
            csv.clone(),
            key(0, txt),
            "\"x\"\"y\",1\n\"ab\",2\n",
            ["\"x\"\"y\",1\n", "", "\"ab\",2\n"],
            2,
        ),
        (
            "csv unquoted empty is NULL, quoted empty is the empty string",
            csv.clone(),
            key(0, txt),
            ",1\n\"\",2\n\"a\",3\n",
            [",1\n\"\",2\n", "\"a\",3\n", ""],
            3,
        ),
        (
            "csv custom delimiter and NULL spelling",
            csv_semicolon.clone(),
            key(1, int),
            "a;NULL\nb;4\n\"c;d\";8\n",
            ["a;NULL\n", "b;4\n", "\"c;d\";8\n"],
            3,
        ),
        (
            "csv \\. alone ends the data, \\.x at a line start is data",
            csv.clone(),
            key(1, int),
            "\\.x,1\n\\.\n2,2\n",
            ["", "\\.x,1\n", ""],
            1,
        ),
        (
            "csv \\. at the very end without a line end is data",
            csv.clone(),
            key(0, txt),
            "\\.",
            ["", "", "\\."],
            1,
        ),
        (
            "csv header with a quoted newline goes to every shard",
            with_header(csv.clone()),
            key(0, int),
            "\"i\nd\",n\n4,x\n",
            ["\"i\nd\",n\n", "\"i\nd\",n\n4,x\n", "\"i\nd\",n\n"],
            1,
        ),
        (
            "csv CRLF inside quotes is data",
            csv.clone(),
            key(1, int),
            "\"a\r\nb\",2\r\n",
            ["", "", "\"a\r\nb\",2\r\n"],
            1,
        ),
        (
            "csv with an escape other than the quote",
            CopyOptions {
                escape: b'\\',
                ..CopyOptions::csv()
            },
            key(0, txt),
            "\"a\\\"b\",1\n\"a\\\\\",2\n",
            ["\"a\\\"b\",1\n", "", "\"a\\\\\",2\n"],
            2,
        ),
        (
            "csv FORCE_NULL makes the quoted NULL spelling NULL",
            CopyOptions {
                force_null: vec!["id".into()],
                ..CopyOptions::csv()
            },
            key(0, int),
            "\"\",1\n",
            ["\"\",1\n", "", ""],
            1,
        ),
    ];
    for (name, options, key, input, expected, rows) in &cases {
        for chunks in cuts(input.as_bytes()) {
            let (got, n) =
                split(options, key, &chunks).unwrap_or_else(|e| panic!("{name}: {e} at line {}", e.line));
            let got: Vec<String> = got
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect();
            assert_eq!(got, expected, "{name}, cut into {} chunks", chunks.len());
            assert_eq!(n, *rows, "{name}");
        }
    }
}

#[test]
fn bad_data_fails_with_postgresqls_message() {
    let text = CopyOptions::text();
    let csv = CopyOptions::csv();
    let int = ShardKeyType::Integer;
    // (options, key, input, message, SQLSTATE, line)
    let cases: Vec<(CopyOptions, KeyField, &str, &str, &str, u64)> = vec![
        (
            text.clone(),
            key(0, int),
            "x\t1\n",
            "invalid input syntax for type bigint: \"x\"",
            "22P02",
            1,
        ),
        (
            text.clone(),
            key(0, int),
            "1\n99999999999999999999\n",
            "value \"99999999999999999999\" is out of range for type bigint",
            "22003",
            2,
        ),
        (
            csv.clone(),
            key(0, int),
            "\"\",1\n",
            "invalid input syntax for type bigint: \"\"",
            "22P02",
            1,
        ),
        (
            text.clone(),
            key(0, ShardKeyType::Uuid),
            "nope\n",
            "invalid input syntax for type uuid: \"nope\"",
            "22P02",
            1,
        ),
        (
            csv.clone(),
            key(0, int),
            "1\n\"abc,1\n",
            "unterminated CSV quoted field",
            "22P04",
            2,
        ),
        (
            text.clone(),
            key(2, int),
            "1\t2\n",
            "missing data for column \"id\"",
            "22P04",
            1,
        ),
        (
            text.clone(),
            key(0, int),
            "1\n2\r3\n",
            "literal carriage return found in data",
            "22P04",
            2,
        ),
        (
            csv.clone(),
            key(0, int),
            "1\r\n2\n",
            "unquoted newline found in data",
            "22P04",
            2,
        ),
        (
            text.clone(),
            key(0, int),
            "1\n\\.x\n",
            "end-of-copy marker corrupt",
            "22P04",
            2,
        ),
        (
            text.clone(),
            key(0, int),
            "1\n\\.",
            "end-of-copy marker corrupt",
            "22P04",
            2,
        ),
        (
            text.clone(),
            key(0, int),
            "1\r\n\\.\n",
            "end-of-copy marker does not match previous newline style",
            "22P04",
            2,
        ),
        (
            csv.clone(),
            key(0, int),
            "1\n\\.\r",
            "end-of-copy marker does not match previous newline style",
            "22P04",
            2,
        ),
        (
            text.clone(),
            key(0, ShardKeyType::Text),
            "\\xff\n",
            "invalid byte sequence for encoding \"UTF8\": 0xff",
            "22021",
            1,
        ),
    ];
    for (options, key, input, message, code, line) in &cases {
        for chunks in cuts(input.as_bytes()) {
            let err = split(options, key, &chunks).expect_err(input);
            assert_eq!(err.error.to_string(), *message, "{input:?}");
            assert_eq!(err.error.sqlstate(), *code, "{input:?}");
            assert_eq!(err.line, *line, "{input:?}");
        }
    }
    let place = by_value;
    let mut s = CopySplitter::new(text.clone(), key(0, int), 3, &place);
    assert!(s.push(b"1\nx\n2\n").is_err());
    assert_eq!(s.push(b"4\n").expect("after the error").rows, 0);
    assert_eq!(s.finish().expect("after the error").rows, 0);
    let e = split(&text, &key(0, int), &[b"1\nx\n"]).expect_err("bad key");
    let pe = e.to_proxy_error("accounts");
    assert_eq!(pe.code, "22P02");
    assert_eq!(pe.detail.as_deref(), Some("COPY accounts, line 2"));
}

#[test]
fn placement_is_a_parameter_and_shard_for_fits() {
    let place = |v: &KeyValue| shard_for(v, 4);
    let mut s = CopySplitter::new(CopyOptions::text(), key(0, ShardKeyType::Integer), 4, &place);
    let data: String = (-50i64..50).map(|i| format!("{i}\trow {i}\n")).collect();
    let mut got = s.push(data.as_bytes()).expect("valid");
    let tail = s.finish().expect("valid");
    assert_eq!(tail.rows, 0);
    for (i, extra) in tail.per_shard.into_iter().enumerate() {
        got.per_shard[i].extend(extra);
    }
    assert_eq!(got.rows, 100);
    for shard in 0..4u32 {
        let rows = String::from_utf8(got.for_shard(ShardId::new(shard)).to_vec()).expect("utf8");
        for row in rows.lines() {
            let k: i64 = row.split('\t').next().and_then(|f| f.parse().ok()).expect("key");
            assert_eq!(shard_for(&KeyValue::Int(k), 4).get(), shard, "{row}");
        }
    }
}

#[test]
fn copy_statements_give_columns_and_options() {
    let csv_header = CopyOptions {
        header: true,
        ..CopyOptions::csv()
    };
    // (statement, table, columns, options)
    let cases: Vec<StatementCase> = vec![
        (
            "COPY accounts (id, name) FROM STDIN",
            vec!["accounts"],
            Some(vec!["id", "name"]),
            CopyOptions::text(),
        ),
        (
            "copy public.Accounts (\"Name\", ID) from stdin with (format csv, header true, delimiter ';');",
            vec!["public", "accounts"],
            Some(vec!["Name", "id"]),
            CopyOptions {
                delimiter: b';',
                ..csv_header.clone()
            },
        ),
        (
            "COPY accounts (id) FROM STDIN WITH CSV HEADER DELIMITER AS ';' NULL AS 'NULL' QUOTE ''''",
            vec!["accounts"],
            Some(vec!["id"]),
            CopyOptions {
                delimiter: b';',
                null: b"NULL".to_vec(),
                quote: b'\'',
                escape: b'\'',
                ..csv_header.clone()
            },
        ),
        (
            "COPY accounts (id) FROM STDIN (FORMAT 'csv', HEADER match, FORCE_NULL (id), ESCAPE '\\')",
            vec!["accounts"],
            Some(vec!["id"]),
            CopyOptions {
                escape: b'\\',
                force_null: vec!["id".into()],
                ..csv_header.clone()
            },
        ),
        (
            "COPY accounts (id) FROM STDIN WITH DELIMITER E'\\t' NULL '' -- trailing comment",
            vec!["accounts"],
            Some(vec!["id"]),
            CopyOptions {
                null: Vec::new(),
                ..CopyOptions::text()
            },
        ),
        (
            "COPY accounts FROM STDIN (HEADER on) WHERE id > 0",
            vec!["accounts"],
            None,
            with_header(CopyOptions::text()),
        ),
    ];
    for (sql, table, columns, options) in cases {
        let stmt = parse_copy_from(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(stmt.table, table, "{sql}");
        assert_eq!(
            stmt.columns,
            columns.map(|c| c.into_iter().map(String::from).collect::<Vec<_>>()),
            "{sql}"
        );
        assert_eq!(stmt.options, options, "{sql}");
        assert_eq!(stmt.source, CopySource::Stdin, "{sql}");
    }
}

#[test]
fn copy_statements_that_cannot_be_split_say_why() {
    // (statement, Ok(key index) or Err((SQLSTATE, message)))
    let cases: Vec<RefusalCase> = vec![
        ("COPY accounts (name, id) FROM STDIN", Ok(1)),
        (
            "COPY accounts FROM STDIN",
            Err((
                "0A000",
                "COPY into sharded table \"accounts\" needs a column list naming its shard key \"id\"",
            )),
        ),
        (
            "COPY accounts (name) FROM STDIN",
            Err((
                "0A000",
                "COPY into sharded table \"accounts\" needs its shard key \"id\" in the column list",
            )),
        ),
        (
            "COPY accounts (id) FROM '/tmp/data.csv'",
            Err((
                "0A000",
                "COPY into sharded table \"accounts\" from a server-side file or program is not supported",
            )),
        ),
        (
            "COPY accounts (id) FROM STDIN (FORMAT binary)",
            Err((
                "0A000",
                "COPY into sharded table \"accounts\" in binary format is not supported",
            )),
        ),
        (
            "COPY BINARY accounts (id) FROM STDIN",
            Err((
                "0A000",
                "COPY into sharded table \"accounts\" in binary format is not supported",
            )),
        ),
        ("COPY accounts (id) FROM STDIN (ENCODING 'UTF-8')", Ok(0)),
        (
            "COPY accounts (id) FROM STDIN (ENCODING 'LATIN1')",
            Err((
                "0A000",
                "COPY into sharded table \"accounts\" with ENCODING 'LATIN1' is not supported",
            )),
        ),
        (
            "COPY accounts (id) FROM STDIN (DELIMITER ';;')",
            Err(("0A000", "COPY delimiter must be a single one-byte character")),
        ),
        (
            "COPY accounts (id) FROM STDIN (QUOTE '\"')",
            Err(("0A000", "COPY quote available only in CSV mode")),
        ),
        (
            "COPY accounts (id) FROM STDIN (FORMAT xml)",
            Err(("22023", "COPY format \"xml\" not recognized")),
        ),
        (
            "COPY accounts (id FROM STDIN",
            Err(("42601", "syntax error in COPY statement at or near \"from\"")),
        ),
    ];
    for (sql, expected) in cases {
        let got = parse_copy_from(sql).and_then(|s| s.key_index("accounts", "id"));
        let got = got.map_err(|e| (e.sqlstate(), e.to_string()));
        let expected = expected.map_err(|(c, m)| (c, m.to_owned()));
        assert_eq!(got, expected, "{sql}");
    }
    let e = parse_copy_from("COPY accounts FROM STDIN")
        .and_then(|s| s.key_index("accounts", "id"))
        .expect_err("no column list");
    let pe = e.to_proxy_error();
    assert_eq!(pe.code, "0A000");
    assert_eq!(
        pe.hint.as_deref(),
        Some("List the columns, the shard key among them: COPY accounts (id, ...) FROM STDIN.")
    );
    assert_eq!(
        parse_copy_from("COPY (SELECT 1) TO STDOUT"),
        Err(CopyStatementError::NotCopyFrom)
    );
    assert_eq!(
        parse_copy_from("COPY accounts TO STDOUT"),
        Err(CopyStatementError::NotCopyFrom)
    );
}
