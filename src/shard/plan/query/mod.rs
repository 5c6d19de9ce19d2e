//! The walk over a query's scopes: every FROM list (of a SELECT, a subquery, a derived table, a CTE, an
//! UPDATE or DELETE) is a scope; each sharded table named in it is an instance, tied to the other
//! instances of its scope by equalities of their keys (`a.id = t.account_id` in ON or WHERE) and pinned
//! to shards by key conditions. A scope below the statement's own must be attached to it: by a correlation
//! on the key (`WHERE t.account_id = a.id`), as a derived table or CTE whose rows split by key, or by
//! `a.id IN (SELECT t.account_id ...)`. Then each shard can run the statement on its own rows.
//! [`Walker::decide`] turns the result into shards, or into the refusal of what would meet across shards.

use std::collections::BTreeSet;

use sqlparser::ast::{
    Cte, Distinct, Expr, GroupByExpr, Query, Select, SelectItem, SelectItemQualifiedWildcardKind, SetExpr,
    SetOperator,
};

mod decide;
mod exprs;
mod from;

pub(super) use decide::Decision;

use super::Ctx;
use super::keys::{Keys, Pin};
use super::rules::{fold, name_parts};
use crate::config::ShardKeyType;
use crate::protocol::messages::ProxyError;

/// How a scope's rows relate to the statement's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Attach {
    /// The statement's own scope (or a UNION arm, or a data-modifying WITH): its rows are the result.
    Top,
    /// A derived table or CTE whose rows split by key, standing in its outer scope as this instance.
    Derived(usize),
    /// Evaluated per row of this outer instance, on its key: a correlated subquery or a semi-join.
    Correlated(usize),
    /// Nothing ties it to the outer rows' shard.
    No,
}

/// A sharded table named in a scope, or a derived table standing for the sharded rows of its own scope.
#[derive(Debug, Clone)]
pub(super) struct Inst {
    /// "accounts", or "subquery s".
    pub(super) label: String,
    /// The columns carrying the key (the key column; a derived table's output names of it).
    key_cols: Vec<String>,
    /// "accounts.id", for messages.
    pub(super) key_display: String,
    pub(super) key_type: ShardKeyType,
    scope: usize,
    /// On the nullable side of an outer join.
    nullable: bool,
    pin: Option<Pin>,
    /// A derived table: the scope it stands for.
    inner: Option<usize>,
}

/// One FROM list.
#[derive(Debug, Clone)]
struct Scope {
    attach: Attach,
    /// What it is, for messages: "subquery", "CTE x", "INTERSECT".
    what: String,
    insts: Vec<usize>,
    /// It reads the RETURNING rows of a data-modifying WITH, which come from the shards that ran it.
    reads_written_rows: bool,
}

/// A name visible in a scope.
struct Entry {
    qual: String,
    inst: Option<usize>,
}

struct Frame {
    entries: Vec<Entry>,
}

/// A CTE in scope: its name, its query, and how many frames were open where it was defined.
struct CteDef<'q> {
    name: String,
    query: &'q Query,
    depth: usize,
    /// Recursive or data-modifying: it is not inlined where it is referenced.
    opaque: bool,
    /// Data-modifying: its RETURNING rows are those of the shards it ran on.
    modifying: bool,
}

/// What the walk of a query found, for the scope that uses it.
pub(super) struct QueryOut {
    /// Its SELECT's scope, when its body is one SELECT.
    pub(super) scope: Option<usize>,
    /// Its rows are the union of what each shard returns for its own rows.
    pub(super) local: bool,
    /// Output column names carrying a key, with the instance the key belongs to.
    pub(super) exposed: Vec<(String, usize)>,
}

/// The scope walk of one statement.
pub(super) struct Walker<'c, 'q> {
    ctx: &'c Ctx<'c>,
    pub(super) insts: Vec<Inst>,
    scopes: Vec<Scope>,
    parent: Vec<usize>,
    frames: Vec<Frame>,
    ctes: Vec<CteDef<'q>>,
    /// Parameters a key condition needs.
    pub(super) needs: BTreeSet<usize>,
    /// Reference tables written (UPDATE/DELETE/INSERT targets that are not sharded).
    pub(super) reference_writes: Vec<String>,
    /// Sharded tables written.
    pub(super) sharded_writes: bool,
    /// A row-locking clause.
    pub(super) locks: bool,
    /// SELECT ... INTO.
    pub(super) select_into: bool,
    /// A construct the walk does not look into, which may hide a table.
    pub(super) opaque: Option<String>,
}

/// What expressions of one SELECT contain.
#[derive(Default)]
struct Flags {
    aggregate: bool,
    window: bool,
}

impl<'c, 'q> Walker<'c, 'q> {
    pub(super) fn new(ctx: &'c Ctx<'c>) -> Self {
        Walker {
            ctx,
            insts: Vec::new(),
            scopes: Vec::new(),
            parent: Vec::new(),
            frames: Vec::new(),
            ctes: Vec::new(),
            needs: BTreeSet::new(),
            reference_writes: Vec::new(),
            sharded_writes: false,
            locks: false,
            select_into: false,
            opaque: None,
        }
    }

    fn new_scope(&mut self, attach: Attach, what: &str) -> usize {
        self.scopes.push(Scope {
            attach,
            what: what.to_owned(),
            insts: Vec::new(),
            reads_written_rows: false,
        });
        let id = self.scopes.len() - 1;
        self.frames.push(Frame { entries: Vec::new() });
        id
    }

    fn end_scope(&mut self) {
        self.frames.pop();
    }

    fn opaque(&mut self, what: impl Into<String>) {
        if self.opaque.is_none() {
            self.opaque = Some(what.into());
        }
    }

    fn root(&mut self, mut i: usize) -> usize {
        while self.parent[i] != i {
            self.parent[i] = self.parent[self.parent[i]];
            i = self.parent[i];
        }
        i
    }

    fn tie(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.root(a), self.root(b));
        self.parent[ra] = rb;
    }

    fn add_inst(&mut self, inst: Inst, qual: String) -> usize {
        let id = self.insts.len();
        let scope = inst.scope;
        self.insts.push(inst);
        self.parent.push(id);
        self.scopes[scope].insts.push(id);
        if let Some(frame) = self.frames.last_mut() {
            frame.entries.push(Entry { qual, inst: Some(id) });
        }
        id
    }

    fn add_other(&mut self, qual: String) {
        if let Some(frame) = self.frames.last_mut() {
            frame.entries.push(Entry { qual, inst: None });
        }
    }

    /// A whole query: its WITH, its body, its ORDER BY.
    pub(super) fn query(&mut self, q: &'q Query, attach: Attach, what: &str) -> Result<QueryOut, ProxyError> {
        let ctes_before = self.ctes.len();
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                self.define_cte(cte, with.recursive)?;
            }
        }
        if !q.locks.is_empty() {
            self.locks = true;
        }
        let limited = q.limit_clause.is_some() || q.fetch.is_some();
        let mut out = self.set_expr(&q.body, attach, what)?;
        if let Some(order) = &q.order_by
            && super::utility::mentions_query(&order.to_string())
        {
            self.opaque("a subquery in ORDER BY");
        }
        let limits = [
            q.limit_clause.as_ref().map(|l| l.to_string()),
            q.fetch.as_ref().map(|f| f.to_string()),
        ];
        if limits.iter().flatten().any(|l| super::utility::mentions_query(l)) {
            self.opaque("a subquery in LIMIT");
        }
        self.ctes.truncate(ctes_before);
        out.local &= !limited;
        Ok(out)
    }

    fn define_cte(&mut self, cte: &'q Cte, recursive: bool) -> Result<(), ProxyError> {
        let name = fold(&cte.alias.name);
        let modifying = matches!(
            cte.query.body.as_ref(),
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_)
        );
        if modifying {
            // A data-modifying WITH runs whether or not it is referenced: its effects are part of the
            // statement's, wherever its rows go.
            self.query(&cte.query, Attach::Top, &format!("WITH {name}"))?;
        } else if recursive {
            self.query(&cte.query, Attach::No, &format!("recursive CTE {name}"))?;
        }
        self.ctes.push(CteDef {
            name,
            query: &cte.query,
            depth: self.frames.len(),
            opaque: modifying || recursive,
            modifying,
        });
        Ok(())
    }

    fn set_expr(&mut self, body: &'q SetExpr, attach: Attach, what: &str) -> Result<QueryOut, ProxyError> {
        match body {
            SetExpr::Select(s) => self.select(s, attach, what),
            SetExpr::Query(q) => self.query(q, attach, what),
            SetExpr::SetOperation { left, op, right, .. } => {
                // The arms of UNION each give their own rows, so each may run where its rows are; the rows
                // of INTERSECT and EXCEPT arms meet, so their sharded rows must be on one shard.
                let (arm, label) = match op {
                    SetOperator::Union => (attach, "UNION arm".to_owned()),
                    other => (Attach::No, other.to_string()),
                };
                for side in [left, right] {
                    let side_attach = match side.as_ref() {
                        SetExpr::Query(q) if q.limit_clause.is_some() || q.fetch.is_some() => Attach::No,
                        _ => arm,
                    };
                    self.set_expr(side, side_attach, &label)?;
                }
                Ok(QueryOut {
                    scope: None,
                    local: false,
                    exposed: Vec::new(),
                })
            }
            SetExpr::Values(values) => {
                self.new_scope(attach, what);
                let mut flags = Flags::default();
                for row in &values.rows {
                    for e in row.iter() {
                        self.expr(e, &mut flags)?;
                    }
                }
                self.end_scope();
                Ok(QueryOut {
                    scope: None,
                    local: true,
                    exposed: Vec::new(),
                })
            }
            SetExpr::Update(stmt) | SetExpr::Delete(stmt) => {
                self.dml(stmt, attach)?;
                Ok(QueryOut {
                    scope: None,
                    local: false,
                    exposed: Vec::new(),
                })
            }
            SetExpr::Insert(_) => {
                self.opaque("INSERT inside WITH");
                Ok(QueryOut {
                    scope: None,
                    local: false,
                    exposed: Vec::new(),
                })
            }
            SetExpr::Merge(_) => {
                self.opaque("MERGE inside WITH");
                Ok(QueryOut {
                    scope: None,
                    local: false,
                    exposed: Vec::new(),
                })
            }
            SetExpr::Table(t) => {
                let scope = self.new_scope(attach, what);
                if let Some(name) = &t.table_name {
                    let schema = t.schema_name.as_ref().map(fold);
                    let table = fold(name);
                    let tref = self.ctx.rules.resolve(schema.as_deref(), &table);
                    self.named(tref, table.clone(), table, scope, false)?;
                }
                self.end_scope();
                Ok(QueryOut {
                    scope: Some(scope),
                    local: true,
                    exposed: Vec::new(),
                })
            }
        }
    }

    fn select(&mut self, s: &'q Select, attach: Attach, what: &str) -> Result<QueryOut, ProxyError> {
        let scope = self.new_scope(attach, what);
        // Clauses the walk does not look into must not hide a query.
        let distinct_on = matches!(&s.distinct, Some(Distinct::On(_)))
            && s.distinct
                .as_ref()
                .is_some_and(|d| super::utility::mentions_query(&d.to_string()));
        let windows = s
            .named_window
            .iter()
            .any(|w| super::utility::mentions_query(&w.to_string()));
        if distinct_on
            || windows
            || s.qualify.is_some()
            || s.prewhere.is_some()
            || !s.lateral_views.is_empty()
        {
            self.opaque("a clause of this SELECT");
        }
        if s.into.is_some() {
            self.select_into = true;
        }
        let mut ons = Vec::new();
        for twj in &s.from {
            self.join_tree(twj, scope, &mut ons)?;
        }
        let mut flags = Flags::default();
        for (cond, inner) in &ons {
            self.condition(cond, *inner, scope, &mut flags)?;
        }
        if let Some(w) = &s.selection {
            self.condition(w, true, scope, &mut flags)?;
        }
        let mut proj_flags = Flags::default();
        for item in &s.projection {
            match item {
                SelectItem::UnnamedExpr(e)
                | SelectItem::ExprWithAlias { expr: e, .. }
                | SelectItem::ExprWithAliases { expr: e, .. } => self.expr(e, &mut proj_flags)?,
                SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::Expr(e), _) => {
                    self.expr(e, &mut proj_flags)?
                }
                _ => {}
            }
        }
        let mut having_flags = Flags::default();
        if let Some(h) = &s.having {
            self.expr(h, &mut having_flags)?;
        }
        let mut grouped_by_key = false;
        let mut grouped = false;
        match &s.group_by {
            GroupByExpr::Expressions(list, _) => {
                for e in list {
                    grouped = true;
                    grouped_by_key |= self
                        .key_of(e)
                        .is_some_and(|(i, _, _)| self.insts[i].scope == scope);
                    self.expr(e, &mut flags)?;
                }
            }
            GroupByExpr::All(_) => grouped = true,
        }
        let exposed = self.exposed(&s.projection, scope);
        let distinct_ok = match &s.distinct {
            None | Some(Distinct::All) => true,
            Some(Distinct::Distinct) => !exposed.is_empty(),
            Some(Distinct::On(list)) => list.iter().any(|e| self.key_of(e).is_some()),
        };
        let aggregates = proj_flags.aggregate || having_flags.aggregate || s.having.is_some();
        let local = distinct_ok && !proj_flags.window && if grouped { grouped_by_key } else { !aggregates };
        self.end_scope();
        Ok(QueryOut {
            scope: Some(scope),
            local,
            exposed,
        })
    }

    /// Output columns of a SELECT that carry one of its scope's keys.
    fn exposed(&self, projection: &[SelectItem], scope: usize) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        let local = |i: usize| self.insts[i].scope == scope;
        for item in projection {
            match item {
                SelectItem::UnnamedExpr(e) => {
                    if let Some((i, _, _)) = self.key_of(e).filter(|(i, _, _)| local(*i)) {
                        let name = match e {
                            Expr::Identifier(id) => fold(id),
                            Expr::CompoundIdentifier(parts) => parts.last().map(fold).unwrap_or_default(),
                            _ => continue,
                        };
                        out.push((name, i));
                    }
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    if let Some((i, _, _)) = self.key_of(expr).filter(|(i, _, _)| local(*i)) {
                        out.push((fold(alias), i));
                    }
                }
                SelectItem::Wildcard(_) => {
                    for &i in &self.scopes[scope].insts {
                        for c in &self.insts[i].key_cols {
                            out.push((c.clone(), i));
                        }
                    }
                }
                SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(name), _) => {
                    let qual = name_parts(name).pop().unwrap_or_default();
                    if let Some(frame) = self.frames.last() {
                        for e in frame.entries.iter().filter(|e| e.qual == qual) {
                            if let Some(i) = e.inst {
                                for c in &self.insts[i].key_cols {
                                    out.push((c.clone(), i));
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        out
    }
}
