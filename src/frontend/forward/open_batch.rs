//! Statement names in a batch left open by Flush: a Bind or Describe that names a statement the node
//! connection lacks gets the session's Parse first, in the same batch, and a Parse that replaces a stale
//! statement gets its Close; the node's answers to these are kept from the client, and undone from the
//! connection's record when an error makes the node skip them.

use bytes::{Bytes, BytesMut};

use super::Flow;
use crate::cluster::NodeId;
use crate::frontend::request::Plan;
use crate::frontend::session::Session;

/// A message of an open batch whose answer (ParseComplete, CloseComplete, or none after an error) matters.
#[derive(Debug)]
pub(super) enum Sent {
    /// The client's own Parse or Close.
    Client,
    /// pgfleet prepared the session's statement of this name (with this id for the unnamed one).
    Parsed(String, u64),
    /// pgfleet closed a stale statement of this name before the client's Parse of it.
    Closed(String),
    /// Sync, or a simple Query: an error skips messages up to here.
    Sync,
}

impl Flow {
    /// Before a frame of an open batch: prepares here the session's statement a Bind or Describe names and
    /// this connection lacks, or closes a stale statement a Parse is about to replace (as
    /// `bring_up_to_date` does before a request).
    pub(super) fn prepare_for(
        &mut self,
        session: &mut Session,
        node: NodeId,
        plan: &Plan,
        frame: &crate::protocol::Frame,
        to_node: &mut BytesMut,
    ) {
        if !self.track {
            return;
        }
        let body = frame.body();
        let Some(conn) = session.conns[node.index()].as_mut() else {
            return;
        };
        match frame.kind {
            b'B' | b'D' => {
                let name = if frame.kind == b'B' {
                    crate::protocol::messages::bind_names(body).map(|(_, s)| s)
                } else {
                    crate::protocol::messages::target_name(body).and_then(|(k, n)| (k == b'S').then_some(n))
                };
                let Some(name) = name else { return };
                if plan.parsed(name) {
                    return;
                }
                let Some(stmt) = session.statements.get(name) else {
                    return;
                };
                let present = if name.is_empty() {
                    conn.applied.unnamed == Some(stmt.id)
                } else {
                    conn.applied.prepared.contains(name)
                };
                if present {
                    return;
                }
                to_node.extend_from_slice(&stmt.parse);
                if name.is_empty() {
                    conn.applied.unnamed = Some(stmt.id);
                } else {
                    conn.applied.prepared.insert(name.to_owned());
                }
                self.sent.push_back(Sent::Parsed(name.to_owned(), stmt.id));
            }
            b'P' => {
                let Some((name, _)) = crate::protocol::messages::parse_fields(body) else {
                    return;
                };
                let stale = session.shared_conns || session.statements.get(name).is_none();
                if name.is_empty() || plan.parsed(name) || !stale || !conn.applied.prepared.contains(name) {
                    return;
                }
                to_node.extend_from_slice(&crate::protocol::messages::close_statement(name));
                conn.applied.prepared.remove(name);
                self.sent.push_back(Sent::Closed(name.to_owned()));
            }
            _ => {}
        }
    }
}

/// Puts back the applied state of pgfleet's own messages that the node skipped after an error.
pub(super) fn undo(conn: &mut crate::backend::PooledConn, skipped: &mut Vec<Sent>) {
    for s in skipped.drain(..) {
        match s {
            Sent::Parsed(name, id) if name.is_empty() => {
                if conn.applied.unnamed == Some(id) {
                    conn.applied.unnamed = None;
                }
            }
            Sent::Parsed(name, _) => {
                conn.applied.prepared.remove(&name);
            }
            Sent::Closed(name) => {
                conn.applied.prepared.insert(name);
            }
            Sent::Client | Sent::Sync => {}
        }
    }
}

/// `block` without the byte ranges in `drops` (which it empties).
pub(super) fn without(block: Bytes, drops: &mut Vec<(usize, usize)>) -> Bytes {
    let mut out = BytesMut::with_capacity(block.len());
    let mut at = 0;
    for (start, end) in drops.drain(..) {
        out.extend_from_slice(&block[at..start]);
        at = end;
    }
    out.extend_from_slice(&block[at..]);
    out.freeze()
}
