//! Sans-IO PostgreSQL wire protocol: framing (`frame`), the untyped startup packets (`startup`) and the few
//! messages the proxy reads or writes itself (`messages`). Nothing here touches a socket.

pub mod frame;
pub mod messages;
pub mod startup;
pub mod status;

pub use frame::{Frame, FrameBuffer, FrameError};
pub use status::TxStatus;
