//! Names of pgfleet's distributed transactions: the instance id of the pgfleet process that runs them, the
//! transaction's base name (`pgfleet_<instance>_<coordinator shard>_<coordinator xid>_<nonce>`, the key of
//! its decision row) and the global transaction id each participant prepares under (the base plus
//! `_<shard>`). Everything recovery knows about a prepared transaction it finds on a shard comes from
//! parsing its gid.
//!
//! The random nonce makes a base unique even when the coordinator's transaction id is not: a coordinator
//! that crashes before its WAL reaches disk hands the same xid out again after restart, and without the
//! nonce a later transaction's decision row could be taken for the lost one's.

use std::fmt;

use crate::cluster::ShardId;

/// Every gid pgfleet prepares starts with this; recovery only touches those.
pub const GID_PREFIX: &str = "pgfleet_";

/// Longest instance id: a gid must fit PostgreSQL's 200 bytes with the prefix and four numbers (at most
/// 10 + 20 + 10 + 10 digits and four separators).
pub const INSTANCE_MAX_LEN: usize = 63;

/// Why a text is not an instance id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstanceIdError {
    /// Empty.
    #[error("pgfleet: the instance id is empty; it names this pgfleet process in its transaction ids")]
    Empty,
    /// Over [`INSTANCE_MAX_LEN`].
    #[error("pgfleet: the instance id \"{0}\" is longer than {INSTANCE_MAX_LEN} characters")]
    TooLong(String),
    /// A character outside `[a-z0-9_]`.
    #[error(
        "pgfleet: the instance id \"{0}\" may only hold lowercase letters, digits and underscores ([a-z0-9_])"
    )]
    BadCharacter(String),
}

/// Which pgfleet process runs a distributed transaction; part of its gid so that logs and
/// `pg_prepared_xacts` say who owns a prepared transaction. `[a-z0-9_]`, 1 to 63 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(String);

impl InstanceId {
    /// Checks `text` as an instance id.
    pub fn new(text: &str) -> Result<InstanceId, InstanceIdError> {
        if text.is_empty() {
            return Err(InstanceIdError::Empty);
        }
        if text.len() > INSTANCE_MAX_LEN {
            return Err(InstanceIdError::TooLong(text.to_owned()));
        }
        if !text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(InstanceIdError::BadCharacter(text.to_owned()));
        }
        Ok(InstanceId(text.to_owned()))
    }

    /// A default id from the host name and the listen port: lowercased, anything outside `[a-z0-9_]`
    /// replaced by `_`, the host cut so that the whole fits.
    pub fn from_host_port(host: &str, port: u16) -> InstanceId {
        let suffix = format!("_{port}");
        let mut host: String = host
            .chars()
            .map(|c| {
                let c = c.to_ascii_lowercase();
                if c.is_ascii_lowercase() || c.is_ascii_digit() {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if host.is_empty() {
            host.push_str("pgfleet");
        }
        host.truncate(INSTANCE_MAX_LEN - suffix.len());
        InstanceId(host + &suffix)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One distributed transaction: who runs it, its coordinator shard, the coordinator's transaction id
/// (`txid_current()`, epoch included) and a random nonce. Its text form is the key of the decision row.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GidBase {
    /// The pgfleet process that ran it.
    pub instance: InstanceId,
    /// The shard whose local transaction holds the decision.
    pub coordinator: ShardId,
    /// That local transaction's id.
    pub xid: u64,
    /// Random, so that a base never repeats even if the xid does.
    pub nonce: u32,
}

impl GidBase {
    /// The gid participant `shard` prepares under.
    pub fn gid(&self, shard: ShardId) -> Gid {
        Gid {
            base: self.clone(),
            participant: shard,
        }
    }
}

impl fmt::Display for GidBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{GID_PREFIX}{}_{}_{}_{}",
            self.instance,
            self.coordinator.get(),
            self.xid,
            self.nonce
        )
    }
}

/// A participant's prepared transaction: the distributed transaction plus the participant's shard.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gid {
    /// The distributed transaction.
    pub base: GidBase,
    /// The shard that prepared it.
    pub participant: ShardId,
}

impl Gid {
    /// Parses a gid pgfleet wrote; None for anything else, including texts that would print differently
    /// (leading zeros, a `+` sign), so that parsing and printing are exact inverses.
    pub fn parse(text: &str) -> Option<Gid> {
        let rest = text.strip_prefix(GID_PREFIX)?;
        // The instance may hold underscores; the four numbers after it do not.
        let mut parts = rest.rsplitn(5, '_');
        let participant = number::<u32>(parts.next()?)?;
        let nonce = number::<u32>(parts.next()?)?;
        let xid = number::<u64>(parts.next()?)?;
        let coordinator = number::<u32>(parts.next()?)?;
        let instance = InstanceId::new(parts.next()?).ok()?;
        let gid = Gid {
            base: GidBase {
                instance,
                coordinator: ShardId::new(coordinator),
                xid,
                nonce,
            },
            participant: ShardId::new(participant),
        };
        (gid.to_string() == text).then_some(gid)
    }
}

fn number<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.base, self.participant.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(instance: &str, coordinator: u32, xid: u64) -> GidBase {
        GidBase {
            instance: InstanceId::new(instance).expect("instance"),
            coordinator: ShardId::new(coordinator),
            xid,
            nonce: 7,
        }
    }

    #[test]
    fn gids_print_and_parse_back() {
        let cases = [
            (base("a", 0, 1), 1, "pgfleet_a_0_1_7_1"),
            (base("host_6432", 3, 771), 0, "pgfleet_host_6432_3_771_7_0"),
            (
                GidBase {
                    nonce: u32::MAX,
                    ..base(&"x_1".repeat(21), 4294967295, u64::MAX)
                },
                4294967295,
                "pgfleet_x_1x_1x_1x_1x_1x_1x_1x_1x_1x_1x_1x_1x_1x_1x_1x_1x_1x_1x_1x_1x_1_4294967295_18446744073709551615_4294967295_4294967295",
            ),
        ];
        for (base, shard, text) in cases {
            let gid = base.gid(ShardId::new(shard));
            assert_eq!(gid.to_string(), text);
            assert_eq!(Gid::parse(text), Some(gid.clone()), "{text}");
            assert!(text.len() <= 200);
        }
    }

    #[test]
    fn foreign_and_malformed_gids_are_not_parsed() {
        for text in [
            "",
            "pgfleet_",
            "pgfleet_a_0_1_1",
            "citus_1_2_3_4_5",
            "pgfleet__0_1_7_1",
            "pgfleet_A_0_1_7_1",
            "pgfleet_a_0_+1_7_1",
            "pgfleet_a_0_01_7_1",
            "pgfleet_a_-1_1_7_1",
            "pgfleet_a_0_1_7_4294967296",
            "pgfleet_a_0_1_4294967296_1",
            "pgfleet_a b_0_1_7_1",
            "pgfleet_a_0_1_7_1_",
        ] {
            assert_eq!(Gid::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn instance_ids_are_checked() {
        assert!(InstanceId::new("pgfleet_01").is_ok());
        assert_eq!(InstanceId::new(""), Err(InstanceIdError::Empty));
        assert!(matches!(
            InstanceId::new("Host"),
            Err(InstanceIdError::BadCharacter(_))
        ));
        assert!(matches!(
            InstanceId::new("a-b"),
            Err(InstanceIdError::BadCharacter(_))
        ));
        assert!(matches!(
            InstanceId::new(&"a".repeat(64)),
            Err(InstanceIdError::TooLong(_))
        ));
    }

    #[test]
    fn instance_ids_from_host_and_port() {
        let cases = [
            ("db-proxy.Example.com", 6432, "db_proxy_example_com_6432"),
            ("", 5432, "pgfleet_5432"),
            ("höst", 1, "h_st_1"),
        ];
        for (host, port, want) in cases {
            let id = InstanceId::from_host_port(host, port);
            assert_eq!(id.as_str(), want);
            assert_eq!(InstanceId::new(id.as_str()), Ok(id));
        }
        let long = InstanceId::from_host_port(&"h".repeat(100), 65535);
        assert_eq!(long.as_str().len(), INSTANCE_MAX_LEN);
        assert!(long.as_str().ends_with("_65535"));
    }
}
