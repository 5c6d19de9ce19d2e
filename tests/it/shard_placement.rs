//! Placement against a real server: `shard::hash::shard_for` must put every key on the shard whose number
//! is the remainder of the partition PostgreSQL's own `PARTITION BY HASH` puts it in, for every supported
//! key type and several moduli; and COPY data split by `shard::copy_rows` must load into those partitions
//! directly (each partition checks its constraint) with the same rows as the whole data loaded through the
//! partitioned table, and fail with the same message where one COPY of the whole data fails.

use std::collections::BTreeMap;

use futures_util::SinkExt;
use pgfleet::config::ShardKeyType;
use pgfleet::shard::copy_rows::{CopySplitter, KeyField, parse_copy_from};
use pgfleet::shard::hash::{HASH_PARTITION_SEED, shard_for, value_hash};
use pgfleet::shard::value::KeyValue;

use crate::support::cluster::{APP_DB, APP_USER, ClusterOptions, LocalCluster, PASSWORD};
use crate::support::cluster::{cluster_with_async, options};
use crate::support::proxy::connect;

const MODULI: [u32; 4] = [2, 3, 4, 7];

/// A fixed-seed generator (splitmix64), so that every run tests the same keys.
struct Keys(u64);

impl Keys {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// One key column type under test: its SQL type, its extended hash function, the key family pgfleet
/// knows it as, and its keys in PostgreSQL's text form (None for NULL).
struct KeyCase {
    sql_type: &'static str,
    hash_fn: &'static str,
    key_type: ShardKeyType,
    keys: Vec<Option<String>>,
}

fn integer_keys(min: i64, max: i64, rng: &mut Keys) -> Vec<Option<String>> {
    let mut keys: Vec<i64> = vec![0, 1, -1, min, min + 1, max, max - 1];
    for edge in [1i64 << 15, 1 << 31, 1 << 32, 1 << 62] {
        for v in [edge - 1, edge, edge + 1, -edge - 1, -edge, -edge + 1] {
            if (min..=max).contains(&v) {
                keys.push(v);
            }
        }
    }
    // Small values (the common ids), then values spread over the whole range.
    keys.extend(-2_000..2_000);
    let span = (max as i128 - min as i128 + 1) as u128;
    for _ in 0..8_000 {
        keys.push((min as i128 + (u128::from(rng.next()) % span) as i128) as i64);
    }
    let mut keys: Vec<Option<String>> = keys.into_iter().map(|k| Some(k.to_string())).collect();
    keys.push(None);
    keys
}

fn text_keys(rng: &mut Keys) -> Vec<Option<String>> {
    let alphabet: Vec<char> = "abcXYZ019 _-,\t\\\"'éüß中文字😀ĀΩ".chars().collect();
    let mut keys = vec![Some(String::new()), None];
    // Every length up to 40 bytes of ASCII, for each tail length of the 12-byte blocks.
    for n in 1..=40 {
        keys.push(Some("k".repeat(n)));
    }
    for i in 0..10_000u64 {
        let len = match i % 10 {
            0 => 1_000 + (rng.next() % 3_000) as usize,
            1..=3 => 1 + (rng.next() % 12) as usize,
            _ => 1 + (rng.next() % 60) as usize,
        };
        let s: String = (0..len)
            .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
            .collect();
        keys.push(Some(s));
    }
    keys.push(Some("user_42".into()));
    keys
}

fn uuid_keys(rng: &mut Keys) -> Vec<Option<String>> {
    let mut keys = vec![
        Some("00000000-0000-0000-0000-000000000000".to_owned()),
        Some("ffffffff-ffff-ffff-ffff-ffffffffffff".to_owned()),
        None,
    ];
    for _ in 0..10_000 {
        let (a, b) = (rng.next(), rng.next());
        let hex = format!("{a:016x}{b:016x}");
        keys.push(Some(format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )));
    }
    keys
}

fn cases() -> Vec<KeyCase> {
    let mut rng = Keys(14);
    let text = text_keys(&mut rng);
    vec![
        KeyCase {
            sql_type: "smallint",
            hash_fn: "hashint2extended",
            key_type: ShardKeyType::Integer,
            // Every smallint there is.
            keys: (i16::MIN..=i16::MAX)
                .map(|v| Some(v.to_string()))
                .chain([None])
                .collect(),
        },
        KeyCase {
            sql_type: "integer",
            hash_fn: "hashint4extended",
            key_type: ShardKeyType::Integer,
            keys: integer_keys(i32::MIN.into(), i32::MAX.into(), &mut rng),
        },
        KeyCase {
            sql_type: "bigint",
            hash_fn: "hashint8extended",
            key_type: ShardKeyType::Integer,
            keys: integer_keys(i64::MIN, i64::MAX, &mut rng),
        },
        KeyCase {
            sql_type: "text",
            hash_fn: "hashtextextended",
            key_type: ShardKeyType::Text,
            keys: text.clone(),
        },
        KeyCase {
            sql_type: "varchar",
            hash_fn: "hashtextextended",
            key_type: ShardKeyType::Text,
            keys: text,
        },
        KeyCase {
            sql_type: "uuid",
            hash_fn: "uuid_hash_extended",
            key_type: ShardKeyType::Uuid,
            keys: uuid_keys(&mut rng),
        },
    ]
}

fn key_value(text: Option<&str>, ty: ShardKeyType) -> KeyValue {
    match text {
        None => KeyValue::Null,
        Some(t) => KeyValue::parse(t, ty).unwrap_or_else(|e| panic!("{t:?}: {e}")),
    }
}

async fn plain_primary() -> LocalCluster {
    cluster_with_async(ClusterOptions {
        replicas: 0,
        ..options()
    })
    .await
}

/// Creates `name` hash-partitioned on `k` with `modulus` partitions `<name>_<remainder>`.
async fn create_partitioned(db: &tokio_postgres::Client, name: &str, columns: &str, modulus: u32) {
    let mut sql = format!("CREATE TABLE {name} ({columns}) PARTITION BY HASH (k);");
    for r in 0..modulus {
        sql.push_str(&format!(
            "CREATE TABLE {name}_{r} PARTITION OF {name} FOR VALUES WITH (MODULUS {modulus}, REMAINDER {r});"
        ));
    }
    db.batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_matches_postgresqls_hash_partitioning_for_10000_keys() {
    let cluster = plain_primary().await;
    let db = connect(&cluster.primary.dsn(APP_USER, PASSWORD, APP_DB)).await;
    for case in cases() {
        let ty = case.sql_type;
        assert!(case.keys.len() >= 10_000, "{ty}: {} keys", case.keys.len());

        // The type's hash function itself, all 64 bits, with the partitioning seed.
        let rows = db
            .query(
                &format!(
                    "SELECT k::text, {}(k, $2) FROM \
                     (SELECT CAST(t AS {ty}) AS k FROM unnest($1::text[]) AS u(t) WHERE t IS NOT NULL) s",
                    case.hash_fn
                ),
                &[&case.keys, &(HASH_PARTITION_SEED as i64)],
            )
            .await
            .unwrap_or_else(|e| panic!("{ty} hashes: {e}"));
        assert_eq!(rows.len(), case.keys.iter().flatten().count(), "{ty}");
        for row in &rows {
            let key = key_value(Some(row.get(0)), case.key_type);
            let theirs: i64 = row.get(1);
            assert_eq!(
                value_hash(&key, HASH_PARTITION_SEED),
                Some(theirs as u64),
                "{}({key:?})",
                case.hash_fn
            );
        }

        for modulus in MODULI {
            let table = format!("p_{ty}_{modulus}");
            create_partitioned(&db, &table, &format!("k {ty}"), modulus).await;
            db.execute(
                &format!("INSERT INTO {table} SELECT CAST(t AS {ty}) FROM unnest($1::text[]) AS u(t)"),
                &[&case.keys],
            )
            .await
            .unwrap_or_else(|e| panic!("{table}: {e}"));
            let rows = db
                .query(
                    &format!("SELECT k::text, tableoid::regclass::text FROM {table}"),
                    &[],
                )
                .await
                .unwrap_or_else(|e| panic!("{table}: {e}"));
            assert_eq!(rows.len(), case.keys.len(), "{table}");
            let mut per_partition: BTreeMap<u32, usize> = BTreeMap::new();
            for row in &rows {
                let key_text: Option<&str> = row.get(0);
                let partition: &str = row.get(1);
                let remainder: u32 = partition
                    .rsplit('_')
                    .next()
                    .and_then(|r| r.parse().ok())
                    .unwrap_or_else(|| panic!("partition name {partition}"));
                let key = key_value(key_text, case.key_type);
                assert_eq!(
                    shard_for(&key, modulus).get(),
                    remainder,
                    "{ty} key {key:?} with modulus {modulus}: PostgreSQL chose {partition}"
                );
                *per_partition.entry(remainder).or_default() += 1;
            }
            // Every partition got rows, so the check above covered every remainder.
            assert_eq!(
                per_partition.len(),
                modulus as usize,
                "{table}: {per_partition:?}"
            );
        }
    }
}

/// Sends `data` as one COPY FROM STDIN with `copy`.
async fn copy_in(db: &tokio_postgres::Client, copy: &str, data: Vec<u8>) -> u64 {
    let sink = db
        .copy_in::<_, bytes::Bytes>(copy)
        .await
        .unwrap_or_else(|e| panic!("{copy}: {e:?}"));
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from(data))
        .await
        .unwrap_or_else(|e| panic!("{copy}: {e:?}"));
    sink.finish().await.unwrap_or_else(|e| panic!("{copy}: {e:?}"))
}

/// The table's rows as text, sorted, for comparing two loads.
async fn contents(db: &tokio_postgres::Client, table: &str) -> Vec<String> {
    let rows = db
        .query(&format!("SELECT t::text FROM {table} t ORDER BY 1"), &[])
        .await
        .unwrap_or_else(|e| panic!("{table}: {e}"));
    rows.iter().map(|r| r.get(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_rows_split_by_shard_load_into_the_matching_partitions() {
    let cluster = plain_primary().await;
    let db = connect(&cluster.primary.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let modulus = 3u32;
    let mut rng = Keys(99);
    // Text format: escapes in the key and beside it, NULL keys, a backslash-newline inside a value.
    let mut text_data = String::new();
    for i in 0..3_000i64 {
        let key = match i % 50 {
            0 => "\\N".to_owned(),
            1 => format!("a\\tb{i}"),
            2 => format!("\\x41\\101{i}"),
            3 => format!("multi\\nline {i}"),
            _ => format!("user-{}", rng.next() % 100_000),
        };
        text_data.push_str(&format!("{i}\t{key}\tnote \\\\ {i}\\\nmore\n"));
    }
    // CSV with a header, quoted delimiters, quoted newlines and doubled quotes in the key.
    let mut csv_data = String::from("n,k,note\n");
    for i in 0..3_000i64 {
        let key = match i % 40 {
            0 => String::new(),
            1 => format!("\"x,\"\"{i}\"\"\ny\""),
            2 => "\"\"".to_owned(),
            _ => format!("{}", rng.next() % 1_000_000),
        };
        csv_data.push_str(&format!("{i},{key},\"n, {i}\"\n"));
    }
    let cases = [
        ("t", "COPY {} (n, k, note) FROM STDIN", text_data),
        (
            "c",
            "COPY {} (n, k, note) FROM STDIN WITH (FORMAT csv, HEADER true)",
            csv_data,
        ),
    ];
    for (name, copy, data) in cases {
        let whole = format!("copy_{name}_whole");
        let split = format!("copy_{name}_split");
        for table in [&whole, &split] {
            create_partitioned(&db, table, "n int, k text, note text", modulus).await;
        }
        // PostgreSQL routes the whole data through the partitioned table.
        let loaded = copy_in(&db, &copy.replace("{}", &whole), data.clone().into_bytes()).await;
        assert_eq!(loaded, 3_000, "{name}");

        // pgfleet splits it, in uneven chunks, and each part goes straight into its partition.
        let stmt = parse_copy_from(&copy.replace("{}", &split)).expect("parses");
        let index = stmt.key_index(&split, "k").expect("key listed");
        let place = |v: &KeyValue| shard_for(v, modulus);
        let key = KeyField {
            index,
            column: "k".into(),
            key_type: ShardKeyType::Text,
        };
        let mut splitter = CopySplitter::new(stmt.options.clone(), key, modulus, &place);
        let mut parts = vec![Vec::new(); modulus as usize];
        let mut rows = 0;
        for chunk in data.as_bytes().chunks(777) {
            let routed = splitter.push(chunk).expect("valid data");
            rows += routed.rows;
            for (part, bytes) in parts.iter_mut().zip(routed.per_shard) {
                part.extend(bytes);
            }
        }
        rows += splitter.finish().expect("complete").rows;
        assert_eq!(rows, 3_000, "{name}");
        let mut sent = 0;
        for (r, part) in parts.into_iter().enumerate() {
            // A partition checks its constraint: a row placed on the wrong shard fails the COPY.
            sent += copy_in(&db, &copy.replace("{}", &format!("{split}_{r}")), part).await;
        }
        assert_eq!(sent, 3_000, "{name}");
        for r in 0..modulus {
            assert_eq!(
                contents(&db, &format!("{whole}_{r}")).await,
                contents(&db, &format!("{split}_{r}")).await,
                "{name}: partition {r}"
            );
        }
    }
}

/// A COPY's outcome: the rows loaded, or PostgreSQL's (or pgfleet's) error message.
type Outcome = Result<u64, String>;

/// Runs one COPY FROM STDIN with `data`, returning the server's error message instead of panicking.
async fn try_copy_in(db: &tokio_postgres::Client, copy: &str, data: Vec<u8>) -> Outcome {
    let message = |e: tokio_postgres::Error| {
        e.as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_owned())
    };
    let sink = db.copy_in::<_, bytes::Bytes>(copy).await.map_err(message)?;
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from(data)).await.map_err(message)?;
    sink.finish().await.map_err(message)
}

/// Loads `data` the way sharded pgfleet will: split by `copy_rows` with `shard_for`, each part into the
/// partition of its shard; the splitter's error, or the first partition's, or the rows loaded.
async fn split_copy_in(
    db: &tokio_postgres::Client,
    copy: &str,
    table: &str,
    key_type: ShardKeyType,
    modulus: u32,
    data: &[u8],
) -> Outcome {
    let stmt = parse_copy_from(&copy.replace("{}", table)).expect("parses");
    let index = stmt.key_index(table, "k").expect("key listed");
    let place = |v: &KeyValue| shard_for(v, modulus);
    let key = KeyField {
        index,
        column: "k".into(),
        key_type,
    };
    let mut splitter = CopySplitter::new(stmt.options.clone(), key, modulus, &place);
    let mut parts = vec![Vec::new(); modulus as usize];
    // Cut into 3-byte chunks, so that rows, escapes, quotes and line ends straddle chunks.
    for chunk in data.chunks(3).map(Some).chain([None]) {
        let routed = match chunk {
            Some(c) => splitter.push(c),
            None => splitter.finish(),
        }
        .map_err(|e| e.error.to_string())?;
        for (part, bytes) in parts.iter_mut().zip(routed.per_shard) {
            part.extend(bytes);
        }
    }
    let mut loaded = 0;
    for (r, part) in parts.into_iter().enumerate() {
        loaded += try_copy_in(db, &copy.replace("{}", &format!("{table}_{r}")), part).await?;
    }
    Ok(loaded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_copy_loads_and_fails_like_one_copy() {
    let cluster = plain_primary().await;
    let db = connect(&cluster.primary.dsn(APP_USER, PASSWORD, APP_DB)).await;
    const TEXT: &str = "COPY {} (n, k, note) FROM STDIN";
    const CSV: &str = "COPY {} (n, k, note) FROM STDIN (FORMAT csv)";
    let (int, txt, uuid) = (ShardKeyType::Integer, ShardKeyType::Text, ShardKeyType::Uuid);
    // (statement, key type, data): each is loaded whole through a partitioned table and split into
    // the partitions of another; both must load the same rows or fail with the same message.
    let cases: &[(&str, ShardKeyType, &str)] = &[
        (TEXT, txt, "1\tabc\tx\n2\t\\N\ty\n3\t\\x41\\102\\n\tz\n"),
        (TEXT, txt, "1\ta\tx\n2\tb\ty\\.\n3\tc\tz\n"),
        (TEXT, txt, "1\ta\tx\n\\.\n2\tb\ty\n"),
        (TEXT, txt, "1\ta\tx\n\\."),
        (TEXT, txt, "1\ta\tx\r\n2\tb\ty\n"),
        (TEXT, txt, "1\ta\tx\n2\tb\r3\tc\tz\n"),
        (TEXT, txt, "1\ta\tx\r\n\\.\n"),
        (TEXT, txt, "1\ta\tx\r\n2\tb\ty\r\n\\.\r\n"),
        (TEXT, txt, "1\ta\tx\r2\tb\ty\r"),
        (TEXT, txt, "1\ta\\\nb\tx\n"),
        (TEXT, int, "1\tx\tn\n"),
        (TEXT, int, "1\t99999999999999999999\tn\n"),
        (TEXT, int, "1\t -42 \tn\n2\t+7\tm\n"),
        (TEXT, txt, "1\t\\xff\tn\n"),
        (TEXT, txt, "1\n"),
        (TEXT, txt, "1\tk\n"),
        (TEXT, uuid, "1\tnot-a-uuid\tn\n"),
        (TEXT, uuid, "1\t{A0EEBC99-9C0B4EF8-BB6D6BB9-BD380A11}\tn\n"),
        (TEXT, txt, "1\tk\tn"),
        (CSV, txt, "1,\"a,b\nc\",\"x\"\"y\"\n2,,z\n3,\"\",w\n"),
        (CSV, txt, "1,\"abc,2\n"),
        (CSV, txt, "1,k,n\r\n2,k,n\n"),
        (CSV, txt, "\\.\n1,a,b\n"),
        (
            "COPY {} (note, k, n) FROM STDIN (FORMAT csv)",
            txt,
            "\\.x,b,1\nx,\\.,2\n",
        ),
        (CSV, int, "1,\"\",n\n"),
        (CSV, int, "1,,n\n2,\" 5\",m\n"),
        (
            "COPY {} (n, k, note) FROM STDIN (FORMAT csv, FORCE_NULL (k), FORCE_NOT_NULL (note))",
            txt,
            "1,\"\",\n2,,\n",
        ),
        (
            "COPY {} (note, k, n) FROM STDIN WITH CSV HEADER DELIMITER ';' QUOTE '''' NULL 'NULL'",
            txt,
            "note;k;n\n'a;b';'it''s';1\nx;NULL;2\n",
        ),
        (
            "COPY {} (k, n) FROM STDIN (FORMAT csv, ESCAPE '\\')",
            txt,
            "\"a\\\"b\",1\n\"c\\\\\",2\n",
        ),
    ];
    let modulus = 3;
    for (i, (copy, key_type, data)) in cases.iter().enumerate() {
        let sql_type = match key_type {
            ShardKeyType::Integer => "bigint",
            ShardKeyType::Text => "text",
            ShardKeyType::Uuid => "uuid",
        };
        let (whole, split) = (format!("e{i}_whole"), format!("e{i}_split"));
        for table in [&whole, &split] {
            create_partitioned(&db, table, &format!("n int, k {sql_type}, note text"), modulus).await;
        }
        let expected = try_copy_in(&db, &copy.replace("{}", &whole), data.as_bytes().to_vec()).await;
        let got = split_copy_in(&db, copy, &split, *key_type, modulus, data.as_bytes()).await;
        assert_eq!(got, expected, "case {i}: {data:?}");
        if expected.is_ok() {
            for r in 0..modulus {
                assert_eq!(
                    contents(&db, &format!("{whole}_{r}")).await,
                    contents(&db, &format!("{split}_{r}")).await,
                    "case {i}: {data:?}, partition {r}"
                );
            }
        }
    }
}
