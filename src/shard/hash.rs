//! Placement: which shard a shard key value belongs to. The answer is, bit for bit, the partition
//! PostgreSQL's own hash partitioning picks: shard `i` of `n` holds exactly the rows that a table
//! `PARTITION BY HASH (key)` would put in its partition `FOR VALUES WITH (MODULUS n, REMAINDER i)`, so a
//! shard's contents can be checked with `satisfies_hash_partition` and moved with a partitioned table.
//!
//! What PostgreSQL computes for a one-column hash partition key: the type's extended hash support function
//! (`hashint8extended`, `hashtextextended`, `uuid_hash_extended`, ...) of the value with the fixed seed
//! `HASH_PARTITION_SEED`, folded into a row hash that starts at 0 with `hash_combine64`; a NULL skips the
//! fold and leaves the row hash at 0. The partition is the row hash modulo the modulus, as unsigned 64-bit.
//! The hash functions read the key bytes as little-endian words, so this matches servers on little-endian
//! machines (x86-64, ARM64), which is every platform pgfleet is built for.

use super::value::KeyValue;
use crate::cluster::ShardId;

/// PostgreSQL's seed for partition hashing (`HASH_PARTITION_SEED` in catalog/partition.h).
pub const HASH_PARTITION_SEED: u64 = 0x7A5B_2236_7996_DCFD;

/// The shard of `value` in a fleet of `shards` shards: the remainder PostgreSQL's hash partitioning gives
/// it for `MODULUS shards`. NULL goes to shard 0; with one shard (or none) everything is on shard 0.
pub fn shard_for(value: &KeyValue, shards: u32) -> ShardId {
    if shards <= 1 {
        return ShardId::new(0);
    }
    let remainder = row_hash(value) % u64::from(shards);
    // The remainder is below `shards`, a u32.
    ShardId::new(u32::try_from(remainder).unwrap_or(0))
}

/// The 64-bit row hash PostgreSQL computes for a one-column partition key holding `value`
/// (`compute_partition_hash_value`).
pub fn row_hash(value: &KeyValue) -> u64 {
    match value_hash(value, HASH_PARTITION_SEED) {
        Some(h) => hash_combine64(0, h),
        // NULLs are skipped: the row hash stays at its start value.
        None => 0,
    }
}

/// The type's extended hash support function of `value` with `seed`, or `None` for NULL.
pub fn value_hash(value: &KeyValue, seed: u64) -> Option<u64> {
    match value {
        KeyValue::Null => None,
        KeyValue::Int(v) => Some(hash_int8_extended(*v, seed)),
        // hashtextextended under a deterministic collation hashes the string's bytes; varchar uses text's
        // hash operator class.
        KeyValue::Text(s) => Some(hash_bytes_extended(s.as_bytes(), seed)),
        KeyValue::Uuid(b) => Some(hash_bytes_extended(b, seed)),
    }
}

/// `hashint8extended`: folds the high half into the low half so that an int8 hashes like the int4 or int2
/// of the same value (whose hash functions hash the sign-extended 32-bit value directly): for a value in
/// int4's range the high half is all zeros (non-negative) or all ones (negative, complemented to zeros).
pub fn hash_int8_extended(v: i64, seed: u64) -> u64 {
    let lo = v as u32;
    let hi = (v >> 32) as u32;
    let folded = lo ^ if v >= 0 { hi } else { !hi };
    hash_bytes_uint32_extended(folded, seed)
}

/// `hash_combine64`: mixes hash `b` into the running hash `a`.
pub fn hash_combine64(a: u64, b: u64) -> u64 {
    a ^ b
        .wrapping_add(0x49a0_f4dd_15e5_a8e3)
        .wrapping_add(a << 54)
        .wrapping_add(a >> 7)
}

/// The state of Bob Jenkins' lookup3 hash that PostgreSQL's `hash_bytes*` functions run.
struct State {
    a: u32,
    b: u32,
    c: u32,
}

impl State {
    /// Initial state for a key of `len` bytes, perturbed by `seed` when it is not zero (the seed counts as
    /// one extra 12-byte block: its high half, its low half, and four zero bytes).
    fn new(len: u32, seed: u64) -> State {
        let init = 0x9e37_79b9u32.wrapping_add(len).wrapping_add(3_923_095);
        let mut s = State {
            a: init,
            b: init,
            c: init,
        };
        if seed != 0 {
            s.a = s.a.wrapping_add((seed >> 32) as u32);
            s.b = s.b.wrapping_add(seed as u32);
            s.mix();
        }
        s
    }

    fn mix(&mut self) {
        let State { a, b, c } = self;
        *a = a.wrapping_sub(*c);
        *a ^= c.rotate_left(4);
        *c = c.wrapping_add(*b);
        *b = b.wrapping_sub(*a);
        *b ^= a.rotate_left(6);
        *a = a.wrapping_add(*c);
        *c = c.wrapping_sub(*b);
        *c ^= b.rotate_left(8);
        *b = b.wrapping_add(*a);
        *a = a.wrapping_sub(*c);
        *a ^= c.rotate_left(16);
        *c = c.wrapping_add(*b);
        *b = b.wrapping_sub(*a);
        *b ^= a.rotate_left(19);
        *a = a.wrapping_add(*c);
        *c = c.wrapping_sub(*b);
        *c ^= b.rotate_left(4);
        *b = b.wrapping_add(*a);
    }

    fn finish(&mut self) {
        let State { a, b, c } = self;
        *c ^= *b;
        *c = c.wrapping_sub(b.rotate_left(14));
        *a ^= *c;
        *a = a.wrapping_sub(c.rotate_left(11));
        *b ^= *a;
        *b = b.wrapping_sub(a.rotate_left(25));
        *c ^= *b;
        *c = c.wrapping_sub(b.rotate_left(16));
        *a ^= *c;
        *a = a.wrapping_sub(c.rotate_left(4));
        *b ^= *a;
        *b = b.wrapping_sub(a.rotate_left(14));
        *c ^= *b;
        *c = c.wrapping_sub(b.rotate_left(24));
    }

    /// The 64-bit result: `b` in the high half, `c` in the low half.
    fn result64(&self) -> u64 {
        (u64::from(self.b) << 32) | u64::from(self.c)
    }
}

/// Up to four bytes as a little-endian word, missing high bytes zero.
fn le_word(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .enumerate()
        .fold(0u32, |w, (i, &byte)| w | (u32::from(byte) << (8 * i)))
}

/// `hash_bytes_extended` (alias `hash_any_extended`) on a little-endian machine.
pub fn hash_bytes_extended(key: &[u8], seed: u64) -> u64 {
    // PostgreSQL passes the length as an int; keys here are far below 2 GiB, and the length only seeds the
    // state, where it wraps like the C code's uint32.
    let mut s = State::new(key.len() as u32, seed);
    let mut chunks = key.chunks_exact(12);
    for block in &mut chunks {
        s.a = s.a.wrapping_add(le_word(&block[0..4]));
        s.b = s.b.wrapping_add(le_word(&block[4..8]));
        s.c = s.c.wrapping_add(le_word(&block[8..12]));
        s.mix();
    }
    let tail = chunks.remainder();
    // The last 0..=11 bytes fill a, then b, then c from its second byte up: the lowest byte of c is
    // reserved for the length, which already went into the initial state.
    s.a = s.a.wrapping_add(le_word(&tail[..tail.len().min(4)]));
    if tail.len() > 4 {
        s.b = s.b.wrapping_add(le_word(&tail[4..tail.len().min(8)]));
    }
    if tail.len() > 8 {
        s.c = s.c.wrapping_add(le_word(&tail[8..]) << 8);
    }
    s.finish();
    s.result64()
}

/// `hash_bytes_uint32_extended` (alias `hash_uint32_extended`): the hash of one 32-bit word.
pub fn hash_bytes_uint32_extended(k: u32, seed: u64) -> u64 {
    let mut s = State::new(4, seed);
    s.a = s.a.wrapping_add(k);
    s.finish();
    s.result64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_and_single_shard_go_to_shard_zero() {
        let cases: &[(KeyValue, u32)] = &[
            (KeyValue::Null, 2),
            (KeyValue::Null, 7),
            (KeyValue::Int(12345), 1),
            (KeyValue::Text("anything".into()), 1),
            (KeyValue::Uuid([0xab; 16]), 1),
            (KeyValue::Int(12345), 0),
        ];
        for (value, shards) in cases {
            assert_eq!(
                shard_for(value, *shards),
                ShardId::new(0),
                "{value:?} of {shards}"
            );
        }
        assert_eq!(row_hash(&KeyValue::Null), 0);
    }

    /// int2 and int4 columns hash the sign-extended 32-bit value with `hash_uint32_extended`; int8 folds
    /// its halves. For every value in int4's range the two must agree, so a key read from an int8
    /// parameter lands where an int4 column's row is.
    #[test]
    fn integer_widths_agree_in_int4_range() {
        let values: &[i64] = &[
            0,
            1,
            -1,
            42,
            -42,
            i64::from(i16::MIN),
            i64::from(i16::MAX),
            i64::from(i32::MIN),
            i64::from(i32::MAX),
            123_456_789,
            -987_654_321,
        ];
        for &v in values {
            let as_int4 = hash_bytes_uint32_extended(v as i32 as u32, HASH_PARTITION_SEED);
            assert_eq!(hash_int8_extended(v, HASH_PARTITION_SEED), as_int4, "{v}");
        }
        // Outside int4's range the halves really are folded: 2^32 folds to 1.
        assert_eq!(
            hash_int8_extended(1 << 32, HASH_PARTITION_SEED),
            hash_int8_extended(1, HASH_PARTITION_SEED)
        );
    }

    /// `hash_bytes_uint32_extended(k)` is documented as `hash_bytes_extended` of k's four bytes: the two
    /// code paths must agree.
    #[test]
    fn word_hash_equals_bytes_hash_of_the_word() {
        for k in [0u32, 1, 0xdead_beef, u32::MAX] {
            for seed in [0, HASH_PARTITION_SEED, 1] {
                assert_eq!(
                    hash_bytes_uint32_extended(k, seed),
                    hash_bytes_extended(&k.to_le_bytes(), seed),
                    "{k:#x} seed {seed:#x}"
                );
            }
        }
    }

    #[test]
    fn every_tail_length_changes_the_hash() {
        // Keys of 0..=25 bytes exercise every tail length around the 12-byte blocks; each added byte must
        // reach the result (a byte dropped from the tail would make two lengths collide).
        let key: Vec<u8> = (1..=25).collect();
        let mut seen = std::collections::HashSet::new();
        for n in 0..=key.len() {
            assert!(
                seen.insert(hash_bytes_extended(&key[..n], HASH_PARTITION_SEED)),
                "{n}"
            );
        }
    }

    #[test]
    fn shards_are_below_the_count() {
        for shards in [2u32, 3, 4, 7, 1000] {
            for v in -500i64..500 {
                assert!(shard_for(&KeyValue::Int(v), shards).get() < shards);
            }
        }
    }
}
