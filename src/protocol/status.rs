//! The transaction status a server reports in every ReadyForQuery (`I`, `T`, `E`), as a type rather than
//! a byte compared by hand.

/// Where a connection stands after its last ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TxStatus {
    /// `I`: no transaction open.
    #[default]
    Idle,
    /// `T`: inside a transaction block.
    InTransaction,
    /// `E`: inside a failed transaction block (every statement fails until it ends).
    Failed,
}

impl TxStatus {
    /// The status of a ReadyForQuery body; an unknown or missing byte reads as idle, as the proxy always
    /// has treated a malformed one.
    pub fn from_ready_body(body: &[u8]) -> TxStatus {
        body.first().copied().map_or(TxStatus::Idle, TxStatus::from)
    }

    /// The byte ReadyForQuery carries.
    pub fn byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }

    /// Whether a transaction block is open (failed or not).
    pub fn in_transaction(self) -> bool {
        self != TxStatus::Idle
    }
}

impl From<u8> for TxStatus {
    fn from(b: u8) -> TxStatus {
        match b {
            b'T' => TxStatus::InTransaction,
            b'E' => TxStatus::Failed,
            _ => TxStatus::Idle,
        }
    }
}

impl From<TxStatus> for u8 {
    fn from(s: TxStatus) -> u8 {
        s.byte()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip() {
        for s in [TxStatus::Idle, TxStatus::InTransaction, TxStatus::Failed] {
            assert_eq!(TxStatus::from(s.byte()), s);
        }
        assert_eq!(TxStatus::from_ready_body(b""), TxStatus::Idle);
        assert_eq!(TxStatus::from_ready_body(b"E"), TxStatus::Failed);
        assert!(TxStatus::Failed.in_transaction() && !TxStatus::Idle.in_transaction());
    }
}
