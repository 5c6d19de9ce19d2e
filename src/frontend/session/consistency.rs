//! The causal token of the consistency levels (docs/routing.md, "Consistency levels"): `SHOW
//! pgfleet.write_lsn` (the session's last commit position) and `SET pgfleet.read_after = '<lsn>'` (later
//! reads wait for that position), answered by pgfleet itself; and what the session needs to know of a
//! request's text to decide whether a position query may ride behind it.

use super::{Session, SessionError};
use std::borrow::Cow;

use crate::config::Consistency;
use crate::frontend::request::Request;
use crate::frontend::state::Statements;
use crate::protocol::encoding::ascii_view;
use crate::protocol::frame::build;
use crate::protocol::lsn::Lsn;
use crate::protocol::messages::{
    ProxyError, bind_names, parse_fields, parse_fields_bytes, parse_text_onward, query_bytes, query_text,
    ready_for_query,
};
use crate::router::split::{leading_words, split_statements, surely_one_statement};

/// The setting that holds a causal token for the session's reads.
pub(super) const READ_AFTER: &str = "pgfleet.read_after";
/// The setting that shows the session's last commit position.
const WRITE_LSN: &str = "pgfleet.write_lsn";

/// A statement about the causal token.
#[derive(Debug, PartialEq, Eq)]
enum TokenCommand<'a> {
    ShowWriteLsn,
    SetReadAfter(&'a str),
    ResetReadAfter,
}

/// Recognises the token statements: one statement, comments not allowed, any case, optional `;`.
fn token_command(text: &str) -> Option<TokenCommand<'_>> {
    let text = text.trim().trim_end_matches(';').trim_end();
    let (verb, rest) = text.split_once(|c: char| c.is_ascii_whitespace())?;
    let rest = rest.trim_start();
    let name_len = rest
        .find(|c: char| c.is_ascii_whitespace() || c == '=')
        .unwrap_or(rest.len());
    let (name, value) = rest.split_at(name_len);
    if verb.eq_ignore_ascii_case("show") && name.eq_ignore_ascii_case(WRITE_LSN) && value.trim().is_empty() {
        return Some(TokenCommand::ShowWriteLsn);
    }
    if !name.eq_ignore_ascii_case(READ_AFTER) {
        return None;
    }
    if verb.eq_ignore_ascii_case("reset") && value.trim().is_empty() {
        return Some(TokenCommand::ResetReadAfter);
    }
    if !verb.eq_ignore_ascii_case("set") {
        return None;
    }
    let value = value.trim_start();
    let value = if let Some(v) = value.strip_prefix('=') {
        v
    } else if value.len() > 2 && value[..2].eq_ignore_ascii_case("to") {
        &value[2..]
    } else {
        return None;
    };
    let value = value.trim();
    let value = value
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .unwrap_or(value);
    if value.eq_ignore_ascii_case("default") {
        return Some(TokenCommand::ResetReadAfter);
    }
    Some(TokenCommand::SetReadAfter(value))
}

/// Whether `text` may be a token statement: it starts with SHOW, SET or RESET and names a `pgfleet.`
/// setting. Runs on every query, so the first word is looked at before the rest of the text (an ordinary
/// query costs a few byte comparisons, not a scan of its text).
fn may_be_token(text: &[u8]) -> bool {
    let start = text
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(text.len());
    let text = &text[start..];
    let verb = |w: &[u8]| {
        text.len() > w.len() && text[..w.len()].eq_ignore_ascii_case(w) && text[w.len()].is_ascii_whitespace()
    };
    (verb(b"show") || verb(b"set") || verb(b"reset"))
        && text.windows(8).any(|w| w.eq_ignore_ascii_case(b"pgfleet."))
}

/// Whether an extended-protocol request holds a token statement (parsed in it, or bound from one parsed
/// before): pgfleet answers such a request itself ([`Session::answer_token_extended`]), since a node would
/// take `SET pgfleet.read_after` for a custom setting and do nothing.
pub(super) fn has_token_statement(req: &Request, statements: &Statements) -> bool {
    req.frames.iter().any(|f| match f.kind {
        b'P' => {
            // The text and what follows it, as a Query's body is looked at: a first word that is not SHOW, SET
            // or RESET settles it, and a false hit in the parameter types only costs the exact check.
            parse_text_onward(f.body()).is_some_and(may_be_token)
                && parse_fields(f.body()).is_some_and(|(_, text)| token_command(text).is_some())
        }
        // Only pgfleet itself records a token statement, under its own rule: no text to read again, and no
        // lookup at all in a session that never prepared one.
        b'B' => {
            statements.may_hold_answered_here()
                && bind_names(f.body())
                    .and_then(|(_, name)| statements.get(name))
                    .is_some_and(|s| s.rule == TOKEN_RULE)
        }
        _ => false,
    })
}

/// Whether a read may be led by a replay-position question (`forward::LeadState`), which means it may run
/// on a replica whose answer is then thrown away: a request ended by Sync or a simple Query, that creates
/// nothing the session must track (no named statement, no Close, DEALLOCATE, setting or pin) and binds the
/// unnamed statement only after parsing it itself (one parsed by an earlier request is not led), without COPY.
pub(super) fn may_lead(
    req: &Request,
    plan: &crate::frontend::request::Plan,
    end: crate::frontend::request::End,
) -> bool {
    use crate::frontend::request::End;
    if end == End::Open
        || plan.pin.is_some()
        || !plan.changes.is_empty()
        || !plan.closes.is_empty()
        || !plan.deallocates.is_empty()
        || plan.parses.iter().any(|(name, _)| !name.is_empty())
    {
        return false;
    }
    let mut parsed_unnamed = false;
    for f in &req.frames {
        match f.kind {
            b'Q' | b'D' | b'E' | b'S' | b'H' => {}
            b'P' => parsed_unnamed = true,
            b'B' => {
                let unnamed = bind_names(f.body()).is_some_and(|(_, stmt)| stmt.is_empty());
                if unnamed && !parsed_unnamed {
                    return false;
                }
            }
            _ => return false,
        }
    }
    req.frames.iter().all(|f| match f.kind {
        b'Q' => query_bytes(f.body()).is_some_and(|t| !mentions_copy(&ascii_view(t))),
        b'P' => parse_fields_bytes(f.body()).is_some_and(|(_, t)| !mentions_copy(&ascii_view(t))),
        _ => true,
    })
}

/// The rule recorded for a token statement a client prepared.
const TOKEN_RULE: &str = "causal token statement answered by pgfleet";

/// A causal token's value: a PostgreSQL LSN such as `0/3000060`, or the error PostgreSQL gives a setting's
/// bad value (22023), naming the setting.
pub(super) fn parse_read_after(value: &str) -> Result<Lsn, ProxyError> {
    value.trim().parse::<Lsn>().map_err(|_| {
        ProxyError::error(
            "22023",
            format!("invalid value for parameter \"{READ_AFTER}\": \"{value}\""),
        )
        .with_hint(format!(
            "Use a WAL position such as '0/3000060', as SHOW {WRITE_LSN} or pg_current_wal_lsn() gives it."
        ))
    })
}

/// Whether a request ends a transaction and opens none after it (its last transaction-control statement is
/// COMMIT, END, ROLLBACK, ABORT or PREPARE TRANSACTION): only then may a position query follow a request
/// sent inside a transaction, where it would otherwise run as part of it.
pub(super) fn may_end_transaction(req: &Request, statements: &Statements) -> bool {
    let mut ends = false;
    let mut look_at = |stmt: &str| {
        let mut words = leading_words(stmt);
        let is = |word: Option<&str>, any: &[&str]| {
            word.is_some_and(|w| any.iter().any(|k| w.eq_ignore_ascii_case(k)))
        };
        let first = words.next();
        if is(first, &["COMMIT", "END", "ROLLBACK", "ABORT"])
            || (is(first, &["PREPARE"]) && is(words.next(), &["TRANSACTION"]))
        {
            ends = true;
        } else if is(first, &["BEGIN", "START"]) {
            ends = false;
        }
    };
    for text in texts(req, statements) {
        // Asked of every statement of a transaction that writes: most texts are one statement, whose first
        // words are all there is to read.
        if surely_one_statement(&text) {
            look_at(&text);
        } else {
            split_statements(&text).into_iter().for_each(&mut look_at);
        }
    }
    ends
}

/// Whether a request may run COPY: a query sent behind it would reach the node in the middle of COPY FROM
/// STDIN, so none is.
pub(super) fn may_copy(req: &Request, statements: &Statements) -> bool {
    texts(req, statements).any(|t| mentions_copy(&t))
}

/// Whether `text` has the letters COPY in a row, in any case, anywhere (a conservative test, as a string
/// constant or a longer name counts too). Asked of most statements, so it searches for the first letter with
/// memchr instead of comparing every four-byte window.
fn mentions_copy(text: &str) -> bool {
    let bytes = text.as_bytes();
    memchr::memchr2_iter(b'c', b'C', bytes).any(|at| {
        bytes
            .get(at..at + 4)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"copy"))
    })
}

/// Whether a request names `synchronous_commit` anywhere in its texts (see `Session::note_commit_mode`).
pub(super) fn names_synchronous_commit(req: &Request, statements: &Statements) -> bool {
    texts(req, statements).any(|t| mentions_synchronous_commit(&t))
}

/// Whether `text` has the letters `synchronous_commit`, in any case, anywhere (a string constant or a quoted
/// name counts too). Asked of every request on the primary, so it looks around each underscore only.
fn mentions_synchronous_commit(text: &str) -> bool {
    const BEFORE: &[u8] = b"synchronous";
    const AFTER: &[u8] = b"commit";
    let bytes = text.as_bytes();
    memchr::memchr_iter(b'_', bytes).any(|at| {
        at.checked_sub(BEFORE.len())
            .and_then(|start| bytes.get(start..at))
            .is_some_and(|w| w.eq_ignore_ascii_case(BEFORE))
            && bytes
                .get(at + 1..at + 1 + AFTER.len())
                .is_some_and(|w| w.eq_ignore_ascii_case(AFTER))
    })
}

/// The SQL texts of a request: its Query strings, the statements it parses and those it binds; in any
/// client encoding, for the ASCII words searched here ([`ascii_view`]).
fn texts<'a>(req: &'a Request, statements: &'a Statements) -> impl Iterator<Item = Cow<'a, str>> {
    req.frames.iter().filter_map(|f| {
        let bytes = match f.kind {
            b'Q' => query_bytes(f.body()),
            b'P' => parse_fields_bytes(f.body()).map(|(_, q)| q),
            b'B' => {
                let (_, name) = bind_names(f.body())?;
                // The stored Parse is the whole frame: type byte and length before the body.
                let parse = statements.get(name)?.parse.get(5..)?;
                parse_fields_bytes(parse).map(|(_, q)| q)
            }
            _ => None,
        }?;
        Some(ascii_view(bytes))
    })
}

/// A one-column text result, as SHOW gives it.
fn show_reply(name: &str, value: &str) -> Vec<u8> {
    let mut out = show_description(name).to_vec();
    out.extend_from_slice(&show_row(value));
    out
}

/// The RowDescription of SHOW's one text column.
fn show_description(name: &str) -> bytes::Bytes {
    let mut desc = Vec::new();
    desc.extend_from_slice(&1i16.to_be_bytes());
    desc.extend_from_slice(name.as_bytes());
    desc.push(0);
    desc.extend_from_slice(&0i32.to_be_bytes()); // table
    desc.extend_from_slice(&0i16.to_be_bytes()); // column
    desc.extend_from_slice(&25i32.to_be_bytes()); // text
    desc.extend_from_slice(&(-1i16).to_be_bytes());
    desc.extend_from_slice(&(-1i32).to_be_bytes());
    desc.extend_from_slice(&0i16.to_be_bytes());
    build(b'T', &desc)
}

/// SHOW's one row and its CommandComplete.
fn show_row(value: &str) -> Vec<u8> {
    let mut row = Vec::new();
    row.extend_from_slice(&1i16.to_be_bytes());
    row.extend_from_slice(&(value.len() as i32).to_be_bytes());
    row.extend_from_slice(value.as_bytes());
    let mut out = build(b'D', &row).to_vec();
    out.extend_from_slice(&build(b'C', b"SHOW\0"));
    out
}

impl Session {
    /// Answers a simple Query about the causal token by itself; false when the query is something else.
    pub(super) async fn answer_token_command(
        &mut self,
        frame: &crate::protocol::Frame,
    ) -> Result<bool, SessionError> {
        // Almost every query is something else: its first word says so before the text is even decoded.
        if !may_be_token(frame.body()) {
            return Ok(false);
        }
        let text = query_text(frame.body()).unwrap_or("");
        let Some(command) = token_command(text) else {
            return Ok(false);
        };
        let mut out = match self.run_token(&command).await {
            Ok(Some(lsn)) => show_reply(WRITE_LSN, &lsn.to_string()),
            Ok(None) => command_complete(&command),
            Err(e) => e.encode().to_vec(),
        };
        out.extend_from_slice(&ready_for_query(self.status().byte()));
        self.write_client(&out).await?;
        Ok(true)
    }

    /// Carries out a token statement: the position SHOW answers, or nothing for SET / RESET.
    async fn run_token(&mut self, command: &TokenCommand<'_>) -> Result<Option<Lsn>, ProxyError> {
        match command {
            TokenCommand::ShowWriteLsn => Ok(Some(self.write_lsn().await)),
            TokenCommand::SetReadAfter(value) => {
                let lsn = parse_read_after(value)?;
                self.routing.read_after = Some(lsn).filter(|l| *l != Lsn::ZERO);
                Ok(None)
            }
            TokenCommand::ResetReadAfter => {
                self.routing.read_after = None;
                Ok(None)
            }
        }
    }

    /// Answers an extended-protocol request whose statements are token statements, frame by frame as
    /// PostgreSQL would: ParseComplete, BindComplete, the description, the result, CloseComplete and
    /// ReadyForQuery; after an error, frames up to the Sync are skipped. A request that mixes in any other
    /// statement, or is left open by a Flush, is refused with 0A000 (pgfleet would have to split it).
    pub(super) async fn answer_token_extended(&mut self, req: &Request) -> Result<(), SessionError> {
        let mixed = req.frames.iter().any(|f| match f.kind {
            b'P' => parse_fields(f.body()).is_none_or(|(_, q)| token_command(q).is_none()),
            b'B' => bind_names(f.body())
                .and_then(|(_, name)| self.statements.get(name))
                .and_then(|s| s.parse.get(5..))
                .and_then(parse_fields)
                .is_none_or(|(_, q)| token_command(q).is_none()),
            b'D' | b'E' | b'C' | b'H' | b'S' => false,
            _ => true,
        });
        if mixed || req.frames.last().is_none_or(|f| f.kind != b'S') {
            let e = ProxyError::error(
                "0A000",
                format!(
                    "pgfleet answers {WRITE_LSN} and {READ_AFTER} itself, only in a request of their own \
                     (Parse, Bind, Describe, Execute, Sync)"
                ),
            )
            .with_hint("Send the statement on its own, or as a simple query.");
            let mut out = e.encode().to_vec();
            out.extend_from_slice(&ready_for_query(self.status().byte()));
            self.write_client(&out).await?;
            return Ok(());
        }
        let mut out = Vec::new();
        // The statement the portal was bound from, by its text.
        let mut portal: Option<String> = None;
        let mut failed = false;
        for f in &req.frames {
            if failed && f.kind != b'S' {
                continue;
            }
            match f.kind {
                b'P' => {
                    if let Some((name, _)) = parse_fields(f.body()) {
                        let name = name.to_owned();
                        self.statements.insert_answered_here(
                            &name,
                            crate::frontend::state::Statement {
                                parse: f.raw.clone(),
                                target: crate::router::classify::Target::Primary,
                                rule: std::borrow::Cow::Borrowed(TOKEN_RULE),
                                pin: None,
                                changes: Vec::new(),
                                ends_last: false,
                                id: 0,
                            },
                        );
                    }
                    out.extend_from_slice(&build(b'1', b""));
                }
                b'B' => {
                    portal = bind_names(f.body())
                        .and_then(|(_, name)| self.statements.get(name))
                        .and_then(|s| s.parse.get(5..))
                        .and_then(parse_fields)
                        .map(|(_, q)| q.to_owned());
                    out.extend_from_slice(&build(b'2', b""));
                }
                b'D' => {
                    let body = f.body();
                    let text = if body.first() == Some(&b'S') {
                        // A statement's description starts with its (no) parameters.
                        out.extend_from_slice(&build(b't', &0i16.to_be_bytes()));
                        let name = body.get(1..).and_then(|n| n.split(|b| *b == 0).next());
                        name.and_then(|n| std::str::from_utf8(n).ok())
                            .and_then(|n| self.statements.get(n))
                            .and_then(|s| s.parse.get(5..))
                            .and_then(parse_fields)
                            .map(|(_, q)| q.to_owned())
                    } else {
                        portal.clone()
                    };
                    let shows = text
                        .as_deref()
                        .and_then(token_command)
                        .is_some_and(|c| c == TokenCommand::ShowWriteLsn);
                    if shows {
                        out.extend_from_slice(&show_description(WRITE_LSN));
                    } else {
                        out.extend_from_slice(&build(b'n', b""));
                    }
                }
                b'E' => {
                    let text = portal.clone().unwrap_or_default();
                    let Some(command) = token_command(&text) else {
                        continue;
                    };
                    match self.run_token(&command).await {
                        Ok(Some(lsn)) => out.extend_from_slice(&show_row(&lsn.to_string())),
                        Ok(None) => out.extend_from_slice(&command_complete(&command)),
                        Err(e) => {
                            out.extend_from_slice(&e.encode());
                            failed = true;
                        }
                    }
                }
                b'C' => {
                    if body_names_statement(f.body())
                        && let Some(name) = f.body().get(1..).and_then(|n| n.split(|b| *b == 0).next())
                        && let Ok(name) = std::str::from_utf8(name)
                    {
                        self.statements.remove(name);
                    }
                    out.extend_from_slice(&build(b'3', b""));
                }
                b'S' => {
                    failed = false;
                    out.extend_from_slice(&ready_for_query(self.status().byte()));
                }
                _ => {}
            }
        }
        self.write_client(&out).await?;
        Ok(())
    }

    /// The session's last commit position; at `consistency = "off"`, and after a commit whose position was
    /// not asked (a fleet of the primary alone), the primary's current position stands in (at or past any
    /// commit the session made).
    async fn write_lsn(&mut self) -> Lsn {
        if self.shared.config().routing.consistency() != Consistency::Off && !self.commit_untracked {
            return self.routing.committed.unwrap_or(Lsn::ZERO);
        }
        self.primary_position().await.unwrap_or(Lsn::ZERO)
    }
}

/// The CommandComplete of a SET or RESET token statement.
fn command_complete(command: &TokenCommand<'_>) -> Vec<u8> {
    let tag: &[u8] = match command {
        TokenCommand::ResetReadAfter => b"RESET\0",
        _ => b"SET\0",
    };
    build(b'C', tag).to_vec()
}

/// Whether a Close frame's body closes a statement (`S`) rather than a portal (`P`).
fn body_names_statement(body: &[u8]) -> bool {
    body.first() == Some(&b'S')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_statements() {
        use TokenCommand::*;
        assert_eq!(token_command("SHOW pgfleet.write_lsn"), Some(ShowWriteLsn));
        assert_eq!(token_command("  show PGFLEET.WRITE_LSN ; "), Some(ShowWriteLsn));
        assert_eq!(
            token_command("SET pgfleet.read_after = '0/3000060'"),
            Some(SetReadAfter("0/3000060"))
        );
        assert_eq!(
            token_command("set pgfleet.read_after to 0/16B3748;"),
            Some(SetReadAfter("0/16B3748"))
        );
        assert_eq!(
            token_command("SET pgfleet.read_after='x'"),
            Some(SetReadAfter("x"))
        );
        assert_eq!(token_command("RESET pgfleet.read_after"), Some(ResetReadAfter));
        assert_eq!(
            token_command("SET pgfleet.read_after = DEFAULT"),
            Some(ResetReadAfter)
        );
        assert_eq!(token_command("SHOW pgfleet.read_after_x"), None);
        assert_eq!(token_command("SELECT 'pgfleet.write_lsn'"), None);
        assert_eq!(token_command("SET pgfleet.read_afterwards = 1"), None);
        // The prefilter never turns away a statement the parser accepts, and stops ordinary queries at once.
        for text in [
            "SHOW pgfleet.write_lsn",
            "  show PGFLEET.WRITE_LSN ; ",
            "SET pgfleet.read_after = '0/3000060'",
            "set pgfleet.read_after to 0/16B3748;",
            "SET pgfleet.read_after='x'",
            "\tRESET pgfleet.read_after",
            "SET\npgfleet.read_after = DEFAULT",
        ] {
            assert!(token_command(text).is_some(), "{text}");
            assert!(may_be_token(text.as_bytes()), "{text}");
        }
        for text in [
            "SELECT 'pgfleet.write_lsn'",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            "SETTINGS pgfleet.x",
            "SHOW work_mem",
            "",
            "SET",
        ] {
            assert!(!may_be_token(text.as_bytes()), "{text}");
        }
        assert!(parse_read_after("0/3000060").is_ok());
        let e = parse_read_after("soon").expect_err("bad value");
        assert_eq!(e.code, "22023");
        assert!(e.message.contains("pgfleet.read_after"));
    }

    #[test]
    fn transaction_ends_and_copy() {
        let none = Statements::default();
        let req_of = |text: &str| {
            let mut r = Request::default();
            r.push(crate::protocol::Frame {
                kind: b'Q',
                raw: crate::protocol::messages::query(text),
            });
            r
        };
        assert!(may_end_transaction(&req_of("COMMIT"), &none));
        assert!(may_end_transaction(
            &req_of("insert into t values (1); commit"),
            &none
        ));
        assert!(may_end_transaction(&req_of("PREPARE TRANSACTION 'x'"), &none));
        assert!(may_end_transaction(&req_of("end"), &none));
        assert!(!may_end_transaction(&req_of("PREPARE s AS SELECT 1"), &none));
        assert!(!may_end_transaction(
            &req_of("COMMIT; BEGIN; INSERT INTO t VALUES (1)"),
            &none
        ));
        assert!(!may_end_transaction(&req_of("SELECT 'commit'"), &none));
        assert!(!may_end_transaction(&req_of("UPDATE t SET x = 1 -- end"), &none));
        // One statement with trailing semicolons, comments before it, or a `;` that splits nothing.
        assert!(may_end_transaction(&req_of("commit; ;\n"), &none));
        assert!(may_end_transaction(&req_of("/* done */ Rollback"), &none));
        assert!(may_end_transaction(&req_of("prepare   transaction 'x';"), &none));
        assert!(!may_end_transaction(&req_of("SELECT ';' AS commit"), &none));
        assert!(may_end_transaction(&req_of("SELECT ';'; END"), &none));
        assert!(!may_end_transaction(&req_of("END; START TRANSACTION"), &none));
        assert!(may_copy(&req_of("Copy t from stdin"), &none));
        assert!(!may_copy(&req_of("SELECT 1"), &none));
    }

    #[test]
    fn copy_is_found_in_any_case_at_any_place() {
        // (text, mentions COPY)
        let cases = [
            ("COPY t FROM STDIN", true),
            ("copy t to stdout", true),
            ("/* c */ cOpY t FROM STDIN", true),
            ("SELECT 1; COPY", true),
            ("SELECT 'copy'", true),
            ("SELECT * FROM copyright", true),
            ("SELECT cop", false),
            ("SELECT c, o, p, y FROM cc", false),
            ("c", false),
            ("", false),
            ("SELECT 'cöpy', 'c\u{f6}py' FROM t", false),
            ("SELECT abalance FROM pgbench_accounts WHERE aid = 1", false),
        ];
        for (text, copy) in cases {
            assert_eq!(mentions_copy(text), copy, "{text}");
        }
    }

    #[test]
    fn synchronous_commit_is_found_in_any_case_at_any_place() {
        // (text, names synchronous_commit)
        let cases = [
            ("SET synchronous_commit = off", true),
            ("SET LOCAL SYNCHRONOUS_COMMIT TO OFF", true),
            ("SELECT set_config('synchronous_commit', 'off', true)", true),
            ("set \"Synchronous_Commit\" = 'off'", true),
            (
                "BEGIN; SET LOCAL synchronous_commit = off; INSERT INTO t VALUES (1)",
                true,
            ),
            ("_commit", false),
            ("synchronous_", false),
            ("SET synchronous_standby_names = ''", false),
            ("SELECT asynchronous_commits FROM t", true),
            ("SELECT a_b_c FROM pgbench_accounts WHERE aid = 1", false),
            ("", false),
        ];
        for (text, names) in cases {
            assert_eq!(mentions_synchronous_commit(text), names, "{text}");
        }
    }
}
