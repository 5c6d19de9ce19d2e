//! The calls pgfleet answers itself instead of a node: `SELECT pg_cancel_backend(<pid>)` and
//! `SELECT pg_terminate_backend(<pid>[, <timeout>])`, in the forms drivers send them (a literal pid in a
//! simple query, or `$1` bound in the extended protocol, text or binary). This module reads them and
//! writes PostgreSQL's answer; what the call does to the target session is the session's business
//! (`session::signal`). Anything else, however close, is not recognised and runs on a node unchanged.

use crate::protocol::frame::build;
use crate::router::split::{Lexer, TokKind};

/// A statement longer than this is not one of the calls (the longest form, with comments, is far shorter);
/// it spares every other statement a scan.
const MAX_CALL_TEXT: usize = 512;

/// int4 and int8 type oids.
const INT4: u32 = 23;
const INT8: u32 = 20;
/// bool type oid.
const BOOL: u32 = 16;

/// Which signal a call sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// `pg_cancel_backend`: cancel the running query.
    Cancel,
    /// `pg_terminate_backend`: end the session.
    Terminate,
}

impl Signal {
    /// The function's name, which is also the name of its result column.
    pub(crate) fn function(self) -> &'static str {
        match self {
            Signal::Cancel => "pg_cancel_backend",
            Signal::Terminate => "pg_terminate_backend",
        }
    }
}

/// One argument as written: a literal or a `$n` parameter (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arg {
    /// An integer constant.
    Literal(i64),
    /// A parameter of the extended protocol.
    Param(usize),
}

/// A recognised call, before its parameters are bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Call {
    /// Cancel or terminate.
    pub signal: Signal,
    /// The target pid.
    pub pid: Arg,
    /// pg_terminate_backend's timeout in milliseconds, if given.
    pub timeout: Option<Arg>,
}

/// A call with its values: what to do to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bound {
    /// Cancel or terminate.
    pub signal: Signal,
    /// The target pid.
    pub pid: i32,
    /// Milliseconds to wait for the target to end (terminate only; 0: do not wait).
    pub timeout_ms: i64,
}

/// Reads `SELECT [pg_catalog.]pg_cancel_backend(<arg>)` or `SELECT [pg_catalog.]pg_terminate_backend(<arg>
/// [, <arg>])`, with an optional trailing `;` and comments anywhere.
pub(crate) fn parse(sql: &str) -> Option<Call> {
    if sql.len() > MAX_CALL_TEXT || !contains_ignore_case(sql.as_bytes(), b"_backend") {
        return None;
    }
    let toks: Vec<_> = Lexer::new(sql).filter(|t| t.kind != TokKind::Comment).collect();
    let mut at = 0;
    let word = |i: usize, w: &str| {
        toks.get(i)
            .is_some_and(|t| t.kind == TokKind::Word && t.text(sql).eq_ignore_ascii_case(w))
    };
    let punct = |i: usize, p: &str| {
        toks.get(i)
            .is_some_and(|t| t.kind == TokKind::Punct && t.text(sql) == p)
    };
    if !word(at, "select") {
        return None;
    }
    at += 1;
    if word(at, "pg_catalog") && punct(at + 1, ".") {
        at += 2;
    }
    let signal = if word(at, "pg_cancel_backend") {
        Signal::Cancel
    } else if word(at, "pg_terminate_backend") {
        Signal::Terminate
    } else {
        return None;
    };
    at += 1;
    if !punct(at, "(") {
        return None;
    }
    at += 1;
    let mut args = Vec::new();
    loop {
        let negative = toks
            .get(at)
            .is_some_and(|t| t.kind == TokKind::Op && t.text(sql) == "-");
        if negative {
            at += 1;
        }
        let tok = toks.get(at)?;
        let text = tok.text(sql);
        let arg = match tok.kind {
            TokKind::Number if text.bytes().all(|b| b.is_ascii_digit()) => {
                let value: i64 = text.parse().ok()?;
                Arg::Literal(if negative { -value } else { value })
            }
            TokKind::Param if !negative => Arg::Param(text.get(1..)?.parse().ok()?),
            _ => return None,
        };
        args.push(arg);
        at += 1;
        if punct(at, ",") {
            at += 1;
            continue;
        }
        break;
    }
    if !punct(at, ")") {
        return None;
    }
    at += 1;
    if punct(at, ";") {
        at += 1;
    }
    if at != toks.len() {
        return None;
    }
    let (pid, timeout) = match (signal, args.as_slice()) {
        (_, [pid]) => (*pid, None),
        (Signal::Terminate, [pid, timeout]) => (*pid, Some(*timeout)),
        _ => return None,
    };
    if matches!(pid, Arg::Literal(p) if i32::try_from(p).is_err()) {
        // PostgreSQL reads a larger constant as bigint, and there is no pg_cancel_backend(bigint).
        return None;
    }
    Some(Call { signal, pid, timeout })
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// The types PostgreSQL gives the call's parameters: the declared ones, and where a Parse left a
/// parameter unspecified, int4 for the pid and int8 for the timeout.
pub(crate) fn param_types(call: &Call, declared: &[u32]) -> Option<Vec<u32>> {
    let mut types = declared.to_vec();
    for (arg, natural) in [(Some(call.pid), INT4), (call.timeout, INT8)] {
        let Some(Arg::Param(n)) = arg else { continue };
        if n == 0 {
            return None;
        }
        if types.len() < n {
            types.resize(n, 0);
        }
        if types[n - 1] == 0 {
            types[n - 1] = natural;
        }
    }
    Some(types)
}

/// One bound parameter: its format code (0 text, 1 binary) and value (None for NULL).
pub(crate) type Param<'a> = (i16, Option<&'a [u8]>);

/// The call's values, given the parameter types and the Bind's parameters. None when a value is NULL, of a
/// type the call does not take as it is, or not an integer: the node then answers as PostgreSQL does.
pub(crate) fn bind(call: &Call, types: &[u32], params: &[Param<'_>]) -> Option<Bound> {
    if params.len() != types.len() {
        return None;
    }
    let value = |arg: Arg, allowed: &[u32]| -> Option<i64> {
        match arg {
            Arg::Literal(v) => Some(v),
            Arg::Param(n) => {
                let ty = *types.get(n.checked_sub(1)?)?;
                if !allowed.contains(&ty) {
                    return None;
                }
                let (format, bytes) = *params.get(n - 1)?;
                let bytes = bytes?;
                match (format, bytes.len(), ty) {
                    (0, _, _) => std::str::from_utf8(bytes).ok()?.trim().parse().ok(),
                    (1, 4, INT4) => Some(i64::from(i32::from_be_bytes(bytes.try_into().ok()?))),
                    (1, 8, INT8) => Some(i64::from_be_bytes(bytes.try_into().ok()?)),
                    _ => None,
                }
            }
        }
    };
    let pid = i32::try_from(value(call.pid, &[INT4])?).ok()?;
    let timeout_ms = match call.timeout {
        Some(arg) => value(arg, &[INT4, INT8])?,
        None => 0,
    };
    if timeout_ms < 0 {
        // PostgreSQL's own error ("timeout" must not be negative) comes from the node.
        return None;
    }
    Some(Bound {
        signal: call.signal,
        pid,
        timeout_ms,
    })
}

/// Format codes and values of a Bind body's parameters, and its result format codes.
pub(crate) fn bind_params(body: &[u8]) -> Option<(Vec<Param<'_>>, Vec<i16>)> {
    let (_, at) = crate::protocol::messages::cstr(body, 0)?;
    let (_, mut at) = crate::protocol::messages::cstr(body, at)?;
    let i16_at = |at: &mut usize| -> Option<i16> {
        let b = body.get(*at..*at + 2)?;
        *at += 2;
        Some(i16::from_be_bytes([b[0], b[1]]))
    };
    let nformats = usize::try_from(i16_at(&mut at)?).ok()?;
    let mut formats = Vec::with_capacity(nformats);
    for _ in 0..nformats {
        formats.push(i16_at(&mut at)?);
    }
    let nparams = usize::try_from(i16_at(&mut at)?).ok()?;
    let mut params = Vec::with_capacity(nparams);
    for i in 0..nparams {
        let len = body.get(at..at + 4)?;
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        at += 4;
        let format = match formats.as_slice() {
            [] => 0,
            [one] => *one,
            many => *many.get(i)?,
        };
        if len < 0 {
            params.push((format, None));
            continue;
        }
        let len = usize::try_from(len).ok()?;
        params.push((format, Some(body.get(at..at + len)?)));
        at += len;
    }
    let nresults = usize::try_from(i16_at(&mut at)?).ok()?;
    let mut results = Vec::with_capacity(nresults);
    for _ in 0..nresults {
        results.push(i16_at(&mut at)?);
    }
    Some((params, results))
}

/// The declared parameter types of a Parse body.
pub(crate) fn parse_param_types(body: &[u8]) -> Option<Vec<u32>> {
    let (_, at) = crate::protocol::messages::cstr(body, 0)?;
    let (_, mut at) = crate::protocol::messages::cstr(body, at)?;
    let n = body.get(at..at + 2)?;
    let n = usize::try_from(i16::from_be_bytes([n[0], n[1]])).ok()?;
    at += 2;
    let mut types = Vec::with_capacity(n);
    for _ in 0..n {
        let t = body.get(at..at + 4)?;
        types.push(u32::from_be_bytes([t[0], t[1], t[2], t[3]]));
        at += 4;
    }
    Some(types)
}

/// RowDescription of the call's one bool column, in text (0) or binary (1) format.
pub(crate) fn row_description(signal: Signal, format: i16) -> bytes::Bytes {
    let mut body = Vec::new();
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(signal.function().as_bytes());
    body.push(0);
    body.extend_from_slice(&0u32.to_be_bytes()); // no table
    body.extend_from_slice(&0i16.to_be_bytes()); // no column number
    body.extend_from_slice(&BOOL.to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes()); // typlen
    body.extend_from_slice(&(-1i32).to_be_bytes()); // typmod
    body.extend_from_slice(&format.to_be_bytes());
    build(b'T', &body)
}

/// ParameterDescription for the call's parameters.
pub(crate) fn parameter_description(types: &[u32]) -> bytes::Bytes {
    let mut body = Vec::new();
    body.extend_from_slice(&(types.len() as i16).to_be_bytes());
    for t in types {
        body.extend_from_slice(&t.to_be_bytes());
    }
    build(b't', &body)
}

/// The DataRow and CommandComplete of the call's answer.
pub(crate) fn result_row(value: bool, format: i16) -> Vec<u8> {
    let field: &[u8] = match (format, value) {
        (1, v) => &[v as u8],
        (_, true) => b"t",
        (_, false) => b"f",
    };
    let mut body = Vec::new();
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&(field.len() as i32).to_be_bytes());
    body.extend_from_slice(field);
    let mut out = build(b'D', &body).to_vec();
    out.extend_from_slice(&build(b'C', b"SELECT 1\0"));
    out
}

/// A NoticeResponse of severity WARNING, as PostgreSQL sends pg_terminate_backend's timeout warning.
pub(crate) fn warning(message: &str) -> bytes::Bytes {
    let mut body = Vec::new();
    for (code, value) in [
        (b'S', "WARNING"),
        (b'V', "WARNING"),
        (b'C', "01000"),
        (b'M', message),
    ] {
        body.push(code);
        body.extend(value.bytes().filter(|b| *b != 0));
        body.push(0);
    }
    body.push(0);
    build(b'N', &body)
}

/// The result format of the call's one column from a Bind's result format codes.
pub(crate) fn result_format(codes: &[i16]) -> i16 {
    codes.first().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognised_calls() {
        use Arg::*;
        use Signal::*;
        let c = |signal, pid, timeout| Some(Call { signal, pid, timeout });
        let table: &[(&str, Option<Call>)] = &[
            ("SELECT pg_cancel_backend(123)", c(Cancel, Literal(123), None)),
            ("select PG_CANCEL_BACKEND( 123 ) ;", c(Cancel, Literal(123), None)),
            (
                "/* x */ SELECT pg_catalog.pg_terminate_backend(5, 1000)",
                c(Terminate, Literal(5), Some(Literal(1000))),
            ),
            ("SELECT pg_terminate_backend($1)", c(Terminate, Param(1), None)),
            (
                "SELECT pg_terminate_backend($1, $2)",
                c(Terminate, Param(1), Some(Param(2))),
            ),
            ("SELECT pg_cancel_backend(-4)", c(Cancel, Literal(-4), None)),
            ("SELECT pg_cancel_backend($1) -- why\n", c(Cancel, Param(1), None)),
            // Everything else runs on a node as it is.
            ("SELECT pg_cancel_backend(pid) FROM pg_stat_activity", None),
            ("SELECT pg_cancel_backend(1) AS x", None),
            ("SELECT pg_cancel_backend(1), 2", None),
            ("SELECT pg_cancel_backend(1, 2)", None),
            ("SELECT pg_cancel_backend('1')", None),
            ("SELECT pg_cancel_backend(1.5)", None),
            ("SELECT pg_cancel_backend(3000000000)", None),
            ("SELECT pg_cancel_backend($1::int)", None),
            ("SELECT pg_cancel_backend(1); SELECT 2", None),
            ("SELECT other.pg_cancel_backend(1)", None),
            ("SELECT \"pg_cancel_backend\"(1)", None),
            ("SELECT pg_backend_pid()", None),
            ("SELECT 1", None),
        ];
        for (sql, want) in table {
            assert_eq!(parse(sql), *want, "{sql}");
        }
    }

    #[test]
    fn bound_values() {
        let call = parse("SELECT pg_terminate_backend($1, $2)").expect("call");
        let types = param_types(&call, &[]).expect("types");
        assert_eq!(types, vec![INT4, INT8]);
        let pid = 4_300_000i32.to_be_bytes();
        let timeout = 250i64.to_be_bytes();
        assert_eq!(
            bind(&call, &types, &[(1, Some(&pid)), (1, Some(&timeout))]),
            Some(Bound {
                signal: Signal::Terminate,
                pid: 4_300_000,
                timeout_ms: 250
            })
        );
        assert_eq!(
            bind(&call, &types, &[(0, Some(b"17")), (0, Some(b"0"))]).map(|b| b.pid),
            Some(17)
        );
        // NULL, a negative timeout, a wrong binary width, a bigint pid: the node answers.
        assert_eq!(bind(&call, &types, &[(0, None), (0, Some(b"0"))]), None);
        assert_eq!(bind(&call, &types, &[(0, Some(b"1")), (0, Some(b"-1"))]), None);
        assert_eq!(
            bind(&call, &types, &[(1, Some(&timeout)), (1, Some(&timeout))]),
            None
        );
        let cancel = parse("SELECT pg_cancel_backend($1)").expect("call");
        assert_eq!(bind(&cancel, &[INT8], &[(0, Some(b"5"))]), None);
        assert_eq!(bind(&cancel, &[INT4], &[(0, Some(b"x"))]), None);
        assert_eq!(bind(&cancel, &[INT4], &[]), None);
    }

    #[test]
    fn bind_bodies() {
        let mut body = b"portal\0stmt\0".to_vec();
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&2i16.to_be_bytes());
        body.extend_from_slice(&4i32.to_be_bytes());
        body.extend_from_slice(&7i32.to_be_bytes());
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        let (params, results) = bind_params(&body).expect("bind");
        assert_eq!(params, vec![(1, Some(&7i32.to_be_bytes()[..])), (1, None)]);
        assert_eq!(results, vec![1]);
        assert_eq!(bind_params(&body[..body.len() - 1]), None);
    }
}
