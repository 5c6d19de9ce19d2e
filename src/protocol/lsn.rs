//! WAL positions (`Lsn`) and the PostgreSQL clock, as the server reports them in SQL (`pg_lsn` text) and
//! in the replication protocol (a big-endian `u64`; microseconds since 2000-01-01). One definition for the
//! health checks, the read-your-writes probes and forward mode, so that they agree on what a position means.

use std::fmt;
use std::str::FromStr;

/// A WAL position (PostgreSQL's `XLogRecPtr`), shown as PostgreSQL does: `16/B374D848`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `0/0`, PostgreSQL's invalid position: never a real commit.
    pub const ZERO: Lsn = Lsn(0);
    /// The highest position, for "ahead of anything a replica can have replayed".
    pub const MAX: Lsn = Lsn(u64::MAX);

    /// Bytes of WAL from `earlier` up to this position; zero when `earlier` is not behind.
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// An insert position (`pg_current_wal_insert_lsn()`) as the end of the WAL inserted so far, which is
    /// how replay positions count. They differ at a page start: when the last record ended at a page's end,
    /// the insert position is past the next page's header (24 bytes, 40 at a segment's start), where the
    /// next record will begin, while a replica that replayed that record reports the page boundary, and
    /// would never reach the insert position until another record came. Without the server's WAL geometry
    /// the position stays as it is: too far, never short.
    pub fn inserted_end(self, wal: Option<WalGeometry>) -> Lsn {
        let Some(wal) = wal else { return self };
        if wal.segment_size > 0 && self.0 % wal.segment_size == LONG_PAGE_HEADER {
            Lsn(self.0 - LONG_PAGE_HEADER)
        } else if wal.block_size > 0 && self.0 % wal.block_size == SHORT_PAGE_HEADER {
            Lsn(self.0 - SHORT_PAGE_HEADER)
        } else {
            self
        }
    }
}

/// A server's WAL page and segment sizes (`wal_block_size`, `wal_segment_size`), in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalGeometry {
    pub block_size: u64,
    pub segment_size: u64,
}

/// The sizes of a WAL page's header (`SizeOfXLogShortPHD`) and of the first page's of a segment
/// (`SizeOfXLogLongPHD`), fixed by PostgreSQL's page layout.
const SHORT_PAGE_HEADER: u64 = 24;
const LONG_PAGE_HEADER: u64 = 40;

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Text that PostgreSQL's `pg_lsn` input would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid input syntax for type pg_lsn: \"{0}\"")]
pub struct LsnSyntaxError(pub String);

impl FromStr for Lsn {
    type Err = LsnSyntaxError;

    /// Parses `X/Y` as PostgreSQL's `pg_lsn` input does: each half one to eight hex digits, nothing else
    /// (no sign, no spaces).
    fn from_str(text: &str) -> Result<Lsn, LsnSyntaxError> {
        let bad = || LsnSyntaxError(text.to_owned());
        let (high, low) = text.split_once('/').ok_or_else(bad)?;
        // from_str_radix accepts a leading '+', which pg_lsn input does not.
        let hex = |s: &str| !s.is_empty() && s.len() <= 8 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(high) || !hex(low) {
            return Err(bad());
        }
        let high = u64::from_str_radix(high, 16).map_err(|_| bad())?;
        let low = u64::from_str_radix(low, 16).map_err(|_| bad())?;
        Ok(Lsn((high << 32) | low))
    }
}

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 UTC).
pub(crate) const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// The current time in microseconds since 2000-01-01 UTC, PostgreSQL's clock in the replication protocol
/// (commit times, standby status updates).
pub(crate) fn pg_epoch_micros_now() -> i64 {
    let since_unix = match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(elapsed) => i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX),
        // A clock set before 1970 is wrong but not our failure: report it as it is.
        Err(before) => i64::try_from(before.duration().as_micros()).map_or(i64::MIN, |m| -m),
    };
    since_unix.saturating_sub(PG_EPOCH_OFFSET_MICROS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_positions_past_a_page_header_end_at_the_page_boundary() {
        let default = Some(WalGeometry {
            block_size: 8192,
            segment_size: 16 << 20,
        });
        let small = Some(WalGeometry {
            block_size: 8192,
            segment_size: 1 << 20,
        });
        let large = Some(WalGeometry {
            block_size: 16384,
            segment_size: 1 << 30,
        });
        let segment = 3 << 24; // the start of a 16 MB segment
        // (insert position, geometry, end of the WAL inserted)
        let cases = [
            (segment + 40, default, segment),               // past a segment's long header
            (segment + 8192 + 24, default, segment + 8192), // past a page's short header
            (segment + 8192 + 32, default, segment + 8192 + 32), // a record ended inside the page
            (segment + 8192 + 40, default, segment + 8192 + 40), // inside any other page
            (segment + 8192 + 24, None, segment + 8192 + 24), // no geometry: as it is
            (0xD0_0028, small, 0xD0_0000),                  // a 1 MB segment's start
            (0xD0_0028, default, 0xD0_0028),                // inside a 16 MB segment's page
            (segment + 16384 + 24, large, segment + 16384), // 16 kB pages
            (segment + 8192 + 24, large, segment + 8192 + 24), // inside a 16 kB page
        ];
        for (insert, wal, end) in cases {
            assert_eq!(Lsn(insert).inserted_end(wal), Lsn(end), "{insert:#x} {wal:?}");
        }
    }

    #[test]
    fn text_round_trip() {
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn::ZERO.to_string(), "0/0");
        assert_eq!("16/B374D848".parse(), Ok(Lsn(0x16_B374_D848)));
        assert_eq!("0/0".parse(), Ok(Lsn::ZERO));
        assert_eq!("ffffffff/FFFFFFFF".parse(), Ok(Lsn::MAX));
        for bad in [
            "",
            "/",
            "1/",
            "/1",
            "1/2/3",
            "g/1",
            "+1/2",
            "1/123456789",
            " 1/2",
            "nonsense",
        ] {
            assert_eq!(bad.parse::<Lsn>(), Err(LsnSyntaxError(bad.to_owned())), "{bad:?}");
        }
    }

    #[test]
    fn distance() {
        assert_eq!(Lsn(0x1_0000_0400).bytes_since(Lsn(0x1_0000_0100)), 0x300);
        assert_eq!(Lsn(5).bytes_since(Lsn(9)), 0);
    }

    #[test]
    fn clock_is_after_2020() {
        // 2020-01-01 is 631_152_000 s after 2000-01-01.
        assert!(pg_epoch_micros_now() > 631_152_000_000_000);
    }
}
