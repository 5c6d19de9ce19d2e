//! Sans-IO PostgreSQL wire protocol: framing (`frame`), the untyped startup packets (`startup`) and the few
//! messages the proxy reads or writes itself (`messages`), the client's text encoding (`encoding`), WAL positions (`lsn`) and the calls that ask for
//! them (`wal_call`), and the quoting of names and values in SQL pgfleet writes (`quote`). Nothing here touches
//! a socket.

pub mod encoding;
pub mod frame;
pub(crate) mod lsn;
pub mod messages;
pub(crate) mod quote;
pub mod startup;
pub(crate) mod status;
pub(crate) mod wal_call;

pub use frame::{Frame, FrameBuffer, FrameError};
pub use status::TxStatus;
