//! Sessions signalling sessions. `pg_cancel_backend(<pid>)` and `pg_terminate_backend(<pid>)` whose pid
//! names a pgfleet client session (the pid it was issued, or the backend pid of a node connection it
//! holds) are answered here, as PostgreSQL would answer them, and act on that client session wherever its
//! request runs; any other pid goes to the primary unchanged. A session that another one terminated ends
//! with PostgreSQL's FATAL 57P01, whether it was waiting for its client or running a request.

use super::{Session, SessionError};
use crate::frontend::cancel::{CancelTarget, SessionHandle, cancel_on_node};
use crate::frontend::request::{End, Plan, Request};
use crate::frontend::signal_call::{self, Bound, Signal};
use crate::frontend::state::Statement;
use crate::protocol::TxStatus;
use crate::protocol::messages::{ProxyError, bind_names, parse_fields, ready_for_query, target_name};
use crate::router::classify::Target;

/// Why a signal is refused, in PostgreSQL's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// The target is a superuser's session and the caller is not a superuser.
    NoSuperuser,
    /// The caller has neither the target role's privileges nor pg_signal_backend's.
    NoPermission,
}

/// PostgreSQL's rule for signalling another backend: a superuser's session only by a superuser; others by
/// a role with the privileges of the target's role or of pg_signal_backend (superusers have both).
pub(crate) fn permission(
    target_super: bool,
    caller_super: bool,
    has_target_role: bool,
    has_signal_role: bool,
) -> Result<(), Denied> {
    if target_super {
        return if caller_super {
            Ok(())
        } else {
            Err(Denied::NoSuperuser)
        };
    }
    if caller_super || has_target_role || has_signal_role {
        Ok(())
    } else {
        Err(Denied::NoPermission)
    }
}

/// PostgreSQL's error for a refused signal, worded as the primary's major version words it (16 rewrote
/// these messages and added a DETAIL).
fn denied_error(signal: Signal, denied: Denied, major: Option<u32>) -> ProxyError {
    if major.is_some_and(|m| m < 16) {
        let message = match (signal, denied) {
            (Signal::Cancel, Denied::NoSuperuser) => "must be a superuser to cancel superuser query",
            (Signal::Cancel, Denied::NoPermission) => {
                "must be a member of the role whose query is being canceled or member of pg_signal_backend"
            }
            (Signal::Terminate, Denied::NoSuperuser) => "must be a superuser to terminate superuser process",
            (Signal::Terminate, Denied::NoPermission) => {
                "must be a member of the role whose process is being terminated or member of pg_signal_backend"
            }
        };
        return ProxyError::error("42501", message);
    }
    let (message, detail) = match (signal, denied) {
        (Signal::Cancel, Denied::NoSuperuser) => (
            "permission denied to cancel query",
            "Only roles with the SUPERUSER attribute may cancel queries of roles with the SUPERUSER attribute."
                .to_owned(),
        ),
        (Signal::Cancel, Denied::NoPermission) => (
            "permission denied to cancel query",
            "Only roles with privileges of the role whose query is being canceled or with privileges of the \
             \"pg_signal_backend\" role may cancel this query."
                .to_owned(),
        ),
        (Signal::Terminate, Denied::NoSuperuser) => (
            "permission denied to terminate process",
            "Only roles with the SUPERUSER attribute may terminate processes of roles with the SUPERUSER \
             attribute."
                .to_owned(),
        ),
        (Signal::Terminate, Denied::NoPermission) => (
            "permission denied to terminate process",
            "Only roles with privileges of the role whose process is being terminated or with privileges of \
             the \"pg_signal_backend\" role may terminate this process."
                .to_owned(),
        ),
    };
    ProxyError::error("42501", message).with_detail(detail)
}

/// The major version in a `server_version` such as `15.8 (Debian 15.8-1)` or `17beta1`.
fn major_version(text: &str) -> Option<u32> {
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    text[..digits].parse().ok()
}

/// What ended a session that another one terminated, in PostgreSQL's words.
fn terminated_fatal() -> ProxyError {
    ProxyError::fatal("57P01", "terminating connection due to administrator command")
}

/// A recognised call in an extended-protocol request, and how to answer its frames.
struct Extended {
    bound: Bound,
    types: Vec<u32>,
    result_format: i16,
    /// The Parse of the request, to remember as the client's statement.
    parse: Option<(String, bytes::Bytes)>,
}

impl Session {
    /// Runs a request, ending the session instead if another session terminates it meanwhile.
    pub(super) async fn dispatch_watched(&mut self, req: &Request, end: End) -> Result<(), SessionError> {
        let handle = self.key.handle();
        handle.begin_request();
        if let Some(entry) = &self.entry {
            entry.mark_active();
        }
        // Polled by hand rather than by `select!`: the select's loop over its branches would have the compiler
        // hoist the addresses the whole inlined request path uses out of it, into every poll's entry.
        let outcome = {
            let mut terminated = std::pin::pin!(handle.until_terminated());
            let mut work = std::pin::pin!(self.dispatch(req, end));
            std::future::poll_fn(|cx| {
                if terminated.as_mut().poll(cx).is_ready() {
                    return std::task::Poll::Ready(None);
                }
                work.as_mut().poll(cx).map(Some)
            })
            .await
        };
        handle.end_request();
        if let Some(entry) = &self.entry {
            entry.settle(|| match self.status() {
                TxStatus::Idle => "idle",
                _ => "idle in transaction",
            });
        }
        match outcome {
            Some(r) => r,
            None => self.end_terminated().await,
        }
    }

    /// Ends a session another one terminated: the request in flight, if any, is cancelled on its node, and
    /// every node connection is closed rather than given back, since a request or a replay may have been
    /// cut short on it (closing also rolls back an open transaction).
    pub(super) async fn end_terminated(&mut self) -> Result<(), SessionError> {
        if let Some(active) = self.key.active() {
            cancel_on_node(&self.shared.fleet, active).await;
        }
        for slot in self.conns.iter_mut() {
            drop(slot.take());
        }
        tracing::info!(pid = self.key.pid, "session terminated by pg_terminate_backend");
        let e = terminated_fatal();
        let _ = self.write_client(&e.encode()).await;
        Err(SessionError::Fatal(e.message))
    }

    /// Answers a `pg_cancel_backend` / `pg_terminate_backend` call whose pid names a client session; false
    /// when the request is anything else, and then it runs on a node as usual.
    pub(super) async fn answer_signal_call(&mut self, req: &Request, end: End) -> Result<bool, SessionError> {
        // Inside a transaction the call's answer depends on the transaction (an aborted one refuses it):
        // the node answers.
        if self.routing.tx_node.is_some() {
            return Ok(false);
        }
        let (bound, extended) = match (end, req.frames.as_slice()) {
            (End::Query, [q]) if q.kind == b'Q' => {
                let bytes = crate::protocol::messages::query_bytes(q.body()).unwrap_or_default();
                let Some(text) = self.reading.encoding.read(bytes) else {
                    return Ok(false);
                };
                let Some(call) = signal_call::parse(&text) else {
                    return Ok(false);
                };
                let Some(bound) = signal_call::bind(&call, &[], &[]) else {
                    return Ok(false);
                };
                (bound, None)
            }
            (End::Sync, _) => match self.extended_call(req) {
                Some(x) => (x.bound, Some(x)),
                None => return Ok(false),
            },
            _ => return Ok(false),
        };
        let fleet = &self.shared.fleet;
        let primary = fleet.likely_primary(self.shard).index();
        let nodes = fleet.nodes().len();
        let Some(target) = self.shared.cancels.resolve(bound.pid, Some(primary), nodes) else {
            return Ok(false);
        };
        let verdict = if target.pid == self.key.pid {
            Verdict::Myself
        } else {
            match self.may_signal(&target).await {
                Some(Ok(())) => Verdict::Allowed,
                Some(Err((denied, major))) => Verdict::Refused(denied_error(bound.signal, denied, major)),
                // The check could not be made: the primary answers the call itself.
                None => return Ok(false),
            }
        };
        let mut notices = Vec::new();
        let outcome: Result<bool, ProxyError> = match (verdict, bound.signal) {
            (Verdict::Refused(e), _) => Err(e),
            (Verdict::Myself, Signal::Cancel) => Err(ProxyError::error(
                "57014",
                "canceling statement due to user request",
            )),
            (Verdict::Myself, Signal::Terminate) => {
                // The caller's own statement is where the signal lands.
                tracing::info!(
                    pid = self.key.pid,
                    "session terminated itself with pg_terminate_backend"
                );
                let e = terminated_fatal();
                let _ = self.write_client(&e.encode()).await;
                return Err(SessionError::Fatal(e.message));
            }
            (Verdict::Allowed, Signal::Cancel) => {
                tracing::info!(
                    caller = self.key.pid,
                    target = target.pid,
                    "pg_cancel_backend of a client session"
                );
                if let CancelTarget::Node(active) = target.cancel() {
                    cancel_on_node(&self.shared.fleet, active).await;
                }
                Ok(true)
            }
            (Verdict::Allowed, Signal::Terminate) => {
                tracing::info!(
                    caller = self.key.pid,
                    target = target.pid,
                    "pg_terminate_backend of a client session"
                );
                target.terminate();
                Ok(self.wait_for_end(&target, bound, &mut notices).await)
            }
        };
        let out = match extended {
            None => simple_answer(bound.signal, &outcome, &notices),
            Some(x) => {
                if let Some((name, parse)) = &x.parse {
                    self.remember_statement(name, parse.clone());
                }
                extended_answer(req, &x, &outcome, &notices)
            }
        };
        self.write_client(&out).await?;
        Ok(true)
    }

    /// pg_terminate_backend with a timeout: waits for the target session to end, as PostgreSQL waits for
    /// the process; on timeout, PostgreSQL's warning and false.
    async fn wait_for_end(&self, target: &SessionHandle, bound: Bound, notices: &mut Vec<u8>) -> bool {
        if bound.timeout_ms <= 0 {
            return true;
        }
        let wait = std::time::Duration::from_millis(bound.timeout_ms.unsigned_abs());
        if tokio::time::timeout(wait, target.ended()).await.is_ok() {
            return true;
        }
        let unit = if bound.timeout_ms == 1 {
            "millisecond"
        } else {
            "milliseconds"
        };
        notices.extend_from_slice(&signal_call::warning(&format!(
            "backend with PID {} did not terminate within {} {unit}",
            bound.pid, bound.timeout_ms
        )));
        false
    }

    /// Whether this session may signal `target`: at once for the same role, else as the primary judges
    /// the roles. None when the primary could not be asked.
    /// With a refusal comes the primary's major version, which words it.
    async fn may_signal(&mut self, target: &SessionHandle) -> Option<Result<(), (Denied, Option<u32>)>> {
        // PostgreSQL judges the current role: a session that changed it (SET ROLE, SET SESSION
        // AUTHORIZATION) is judged by the primary, with its settings applied.
        let entries = self.settings.entries();
        let role_changed = entries.contains_key("role") || entries.contains_key("session_authorization");
        if target.user == self.user && !role_changed {
            return Some(Ok(()));
        }
        let primary = self.shared.fleet.primary(self.shard).ok()?;
        self.connect(primary).await.ok()?;
        let nothing = Plan::for_request(&Request::default(), &self.statements, &self.rules);
        if self.bring_up_to_date(primary, &nothing).await.is_err() {
            return None;
        }
        let role = crate::protocol::quote::quote_literal(&target.user);
        let sql = format!(
            "SELECT r.rolsuper, pg_catalog.pg_has_role(r.oid, 'USAGE'), \
             pg_catalog.pg_has_role('pg_signal_backend', 'USAGE'), \
             (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) \
             FROM pg_catalog.pg_roles r WHERE r.rolname = {role}"
        );
        let conn = self.conns[primary.index()].as_mut()?;
        conn.applied.unnamed = None;
        let major = conn.server_param("server_version").and_then(major_version);
        let limit = conn.io_timeout;
        let rows = match tokio::time::timeout(limit, conn.query_rows(&sql)).await {
            Ok(rows) => rows.ok().and_then(Result::ok),
            Err(_) => {
                // Cut short: what the node sends next is no longer known.
                conn.broken = true;
                None
            }
        };
        self.release_between_transactions(primary);
        let rows = rows?;
        let row = rows.first()?;
        let flag = |i: usize| row.get(i).and_then(|v| v.as_deref()) == Some("t");
        Some(permission(flag(0), flag(3), flag(1), flag(2)).map_err(|d| (d, major)))
    }

    /// A request `[Parse] Bind [Describe] Execute Sync` of a recognised call, with its values bound.
    fn extended_call(&self, req: &Request) -> Option<Extended> {
        let count = |kind: u8| req.frames.iter().filter(|f| f.kind == kind).count();
        if req.frames.len() > 6
            || count(b'B') != 1
            || count(b'E') != 1
            || count(b'S') != 1
            || count(b'P') > 1
            || req.frames.last()?.kind != b'S'
            || req
                .frames
                .iter()
                .any(|f| !matches!(f.kind, b'P' | b'B' | b'D' | b'E' | b'S'))
        {
            return None;
        }
        let bind = req.frames.iter().find(|f| f.kind == b'B')?;
        let (portal, statement) = bind_names(bind.body())?;
        let parse = req.frames.iter().find(|f| f.kind == b'P');
        let parse_body = match parse {
            Some(p) => {
                let (name, _) = parse_fields(p.body())?;
                if name != statement {
                    return None;
                }
                p.body()
            }
            None => self.statements.get(statement)?.parse.get(5..)?,
        };
        let (_, text) = parse_fields(parse_body)?;
        let call = signal_call::parse(text)?;
        let declared = signal_call::parse_param_types(parse_body)?;
        let types = signal_call::param_types(&call, &declared)?;
        // Every Describe names this request's statement or portal; Execute runs the portal.
        for f in &req.frames {
            match f.kind {
                b'D' => match target_name(f.body())? {
                    (b'S', name) if name == statement => {}
                    (b'P', name) if name == portal => {}
                    _ => return None,
                },
                b'E' if crate::protocol::messages::cstr(f.body(), 0)?.0 != portal => return None,
                _ => {}
            }
        }
        let (params, results) = signal_call::bind_params(bind.body())?;
        let bound = signal_call::bind(&call, &types, &params)?;
        Some(Extended {
            bound,
            types,
            result_format: signal_call::result_format(&results),
            parse: parse.map(|p| (statement.to_owned(), p.raw.clone())),
        })
    }

    /// Records a Parse answered here as the client's statement; a later Bind of it finds it, and a node
    /// that runs it is given it then.
    fn remember_statement(&mut self, name: &str, parse: bytes::Bytes) {
        self.statements.insert(
            name,
            Statement {
                parse,
                target: Target::Primary,
                rule: std::borrow::Cow::Borrowed("calls pg_cancel_backend() or pg_terminate_backend()"),
                pin: None,
                changes: Vec::new(),
                ends_last: false,
                id: 0,
            },
        );
    }
}

/// How a call is judged.
enum Verdict {
    Allowed,
    Refused(ProxyError),
    /// The caller signals itself.
    Myself,
}

/// The answer to a simple query: the one-row result or the error, then ReadyForQuery.
fn simple_answer(signal: Signal, outcome: &Result<bool, ProxyError>, notices: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match outcome {
        Ok(value) => {
            out.extend_from_slice(&signal_call::row_description(signal, 0));
            out.extend_from_slice(notices);
            out.extend_from_slice(&signal_call::result_row(*value, 0));
        }
        Err(e) => out.extend_from_slice(&e.encode()),
    }
    out.extend_from_slice(&ready_for_query(b'I'));
    out
}

/// The answer to each frame of an extended-protocol request, as PostgreSQL gives it: after an error,
/// nothing until ReadyForQuery.
fn extended_answer(
    req: &Request,
    x: &Extended,
    outcome: &Result<bool, ProxyError>,
    notices: &[u8],
) -> Vec<u8> {
    let signal = x.bound.signal;
    let mut out = Vec::new();
    let mut failed = false;
    for f in &req.frames {
        if failed && f.kind != b'S' {
            continue;
        }
        match f.kind {
            b'P' => out.extend_from_slice(&crate::protocol::frame::build(b'1', b"")),
            b'B' => out.extend_from_slice(&crate::protocol::frame::build(b'2', b"")),
            b'D' => match target_name(f.body()) {
                Some((b'S', _)) => {
                    out.extend_from_slice(&signal_call::parameter_description(&x.types));
                    out.extend_from_slice(&signal_call::row_description(signal, 0));
                }
                _ => out.extend_from_slice(&signal_call::row_description(signal, x.result_format)),
            },
            b'E' => match outcome {
                Ok(value) => {
                    out.extend_from_slice(notices);
                    out.extend_from_slice(&signal_call::result_row(*value, x.result_format));
                }
                Err(e) => {
                    out.extend_from_slice(&e.encode());
                    failed = true;
                }
            },
            b'S' => out.extend_from_slice(&ready_for_query(b'I')),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_permission_rule() {
        use Denied::*;
        // (target superuser, caller superuser, has the target's role, has pg_signal_backend)
        let table = [
            ((false, false, true, false), Ok(())),
            ((false, false, false, true), Ok(())),
            ((false, true, false, false), Ok(())),
            ((false, false, false, false), Err(NoPermission)),
            ((true, true, false, false), Ok(())),
            // A superuser's session: neither membership nor pg_signal_backend is enough.
            ((true, false, true, true), Err(NoSuperuser)),
        ];
        for ((ts, cs, member, signal), want) in table {
            assert_eq!(
                permission(ts, cs, member, signal),
                want,
                "{ts} {cs} {member} {signal}"
            );
        }
    }

    #[test]
    fn refusals_are_worded_as_the_primary_words_them() {
        for (version, major) in [
            ("15.8 (Debian 15.8-1.pgdg120+1)", Some(15)),
            ("16.4", Some(16)),
            ("17beta1", Some(17)),
            ("devel", None),
        ] {
            assert_eq!(major_version(version), major, "{version}");
        }
        let old = denied_error(Signal::Cancel, Denied::NoPermission, Some(15));
        assert_eq!(
            old.message,
            "must be a member of the role whose query is being canceled or member of pg_signal_backend"
        );
        let new = denied_error(Signal::Terminate, Denied::NoSuperuser, Some(16));
        assert_eq!(new.message, "permission denied to terminate process");
        // Unknown version: today's wording.
        let unknown = denied_error(Signal::Cancel, Denied::NoSuperuser, None);
        assert_eq!(unknown.message, "permission denied to cancel query");
    }
}
