//! The walk over a query's scopes: every FROM list (of a SELECT, a subquery, a derived table, a CTE, an
//! UPDATE or DELETE) is a scope; each sharded table named in it is an instance, tied to the other
//! instances of its scope by equalities of their keys (`a.id = t.account_id` in ON or WHERE) and pinned
//! to shards by key conditions. A scope below the statement's own must be attached to it: by a correlation
//! on the key (`WHERE t.account_id = a.id`), as a derived table or CTE whose rows split by key, or by
//! `a.id IN (SELECT t.account_id ...)`. Then each shard can run the statement on its own rows.
//! [`Walker::decide`] turns the result into shards, or into the refusal of what would meet across shards.

use std::collections::BTreeSet;

use sqlparser::ast::{
    Cte, Distinct, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, InTarget,
    JoinConstraint, JoinOperator, Query, Select, SelectItem, SelectItemQualifiedWildcardKind, SetExpr,
    SetOperator, Statement, TableFactor, TableWithJoins,
};

use super::keys::{Keys, Pin, conjuncts, key_equality, restriction};
use super::rules::{TableRef, fold, name_parts};
use super::{Ctx, refuse};
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
}

/// A name visible in a scope.
struct Entry {
    qual: String,
    inst: Option<usize>,
}

struct Frame {
    scope: usize,
    entries: Vec<Entry>,
}

/// A CTE in scope: its name, its query, and how many frames were open where it was defined.
struct CteDef<'q> {
    name: String,
    query: &'q Query,
    depth: usize,
    /// Recursive or data-modifying: it is not inlined where it is referenced.
    opaque: bool,
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

/// The aggregate functions PostgreSQL ships; a query using one without grouping by the key gives one row
/// per shard, not its result.
const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "xmlagg",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "bit_and",
    "bit_or",
    "bit_xor",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "mode",
    "percentile_cont",
    "percentile_disc",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "range_agg",
    "range_intersect_agg",
    "any_value",
    "json_agg_strict",
    "json_objectagg",
    "json_arrayagg",
];

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
        });
        let id = self.scopes.len() - 1;
        self.frames.push(Frame {
            scope: id,
            entries: Vec::new(),
        });
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

    fn current_scope(&self) -> usize {
        self.frames.last().map_or(0, |f| f.scope)
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
        if s.into.is_some() {
            self.select_into = true;
        }
        let mut ons = Vec::new();
        for twj in &s.from {
            self.from_item(twj, scope, &mut ons)?;
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

    /// One element of a FROM list with its joins; ON conditions are collected with whether they filter
    /// the scope's rows (inner joins) or only match them (outer joins).
    fn from_item(
        &mut self,
        twj: &'q TableWithJoins,
        scope: usize,
        ons: &mut Vec<(&'q Expr, bool)>,
    ) -> Result<(), ProxyError> {
        let first = self.insts.len();
        self.factor(&twj.relation, scope, false, ons)?;
        for join in &twj.joins {
            let before = self.insts.len();
            let (constraint, left_nullable, right_nullable) = match &join.join_operator {
                JoinOperator::Join(c) | JoinOperator::Inner(c) => (Some(c), false, false),
                JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (Some(c), false, true),
                JoinOperator::Right(c) | JoinOperator::RightOuter(c) => (Some(c), true, false),
                JoinOperator::FullOuter(c) => (Some(c), true, true),
                JoinOperator::CrossJoin(_) => (None, false, false),
                other => {
                    self.opaque(format!("join {other:?}"));
                    (None, false, false)
                }
            };
            self.factor(&join.relation, scope, right_nullable, ons)?;
            if left_nullable {
                for i in first..before {
                    self.insts[i].nullable = true;
                }
            }
            let inner = !left_nullable && !right_nullable;
            match constraint {
                Some(JoinConstraint::On(e)) => ons.push((e, inner)),
                Some(JoinConstraint::Using(cols)) => {
                    // USING (col) ties the instances on both sides whose key is that column.
                    for col in cols {
                        let name = name_parts(col).pop().unwrap_or_default();
                        let left: Vec<usize> = (first..before)
                            .filter(|i| self.insts[*i].key_cols.contains(&name))
                            .collect();
                        let right: Vec<usize> = (before..self.insts.len())
                            .filter(|i| self.insts[*i].key_cols.contains(&name))
                            .collect();
                        for &l in &left {
                            for &r in &right {
                                if self.insts[l].key_type == self.insts[r].key_type {
                                    self.tie(l, r);
                                }
                            }
                        }
                    }
                }
                Some(JoinConstraint::Natural) => self.opaque("NATURAL JOIN"),
                _ => {}
            }
        }
        Ok(())
    }

    fn factor(
        &mut self,
        tf: &'q TableFactor,
        scope: usize,
        nullable: bool,
        ons: &mut Vec<(&'q Expr, bool)>,
    ) -> Result<(), ProxyError> {
        match tf {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                let parts = name_parts(name);
                let last = parts.last().cloned().unwrap_or_default();
                let qual = alias.as_ref().map_or(last.clone(), |a| fold(&a.name));
                if let Some(args) = args {
                    // A set-returning function such as generate_series(...).
                    let mut flags = Flags::default();
                    for arg in &args.args {
                        self.function_arg(arg, &mut flags)?;
                    }
                    self.add_other(qual);
                    return Ok(());
                }
                if parts.len() == 1
                    && let Some(pos) = self.ctes.iter().rposition(|c| c.name == last)
                {
                    return self.cte_ref(pos, qual, scope, nullable);
                }
                let tref = self.ctx.rules.resolve_object(name);
                self.named(tref, last, qual, scope, nullable)
            }
            TableFactor::Derived { subquery, alias, .. } => {
                let qual = alias.as_ref().map(|a| fold(&a.name)).unwrap_or_default();
                let renames: Vec<String> = alias
                    .as_ref()
                    .map(|a| a.columns.iter().map(|c| fold(&c.name)).collect())
                    .unwrap_or_default();
                self.derived(subquery, qual, renames, scope, nullable)
            }
            TableFactor::NestedJoin { table_with_joins, .. } => self.from_item(table_with_joins, scope, ons),
            TableFactor::Function { args, alias, .. } => {
                let mut flags = Flags::default();
                for arg in args {
                    self.function_arg(arg, &mut flags)?;
                }
                self.add_other(alias.as_ref().map(|a| fold(&a.name)).unwrap_or_default());
                Ok(())
            }
            TableFactor::UNNEST {
                array_exprs, alias, ..
            } => {
                let mut flags = Flags::default();
                for e in array_exprs {
                    self.expr(e, &mut flags)?;
                }
                self.add_other(alias.as_ref().map(|a| fold(&a.name)).unwrap_or_default());
                Ok(())
            }
            other => {
                if super::utility::mentions_query(&other.to_string()) {
                    self.opaque("this FROM item");
                }
                self.add_other(String::new());
                Ok(())
            }
        }
    }

    /// A table name of a FROM list (or an UPDATE/DELETE target).
    fn named(
        &mut self,
        tref: TableRef,
        name: String,
        qual: String,
        scope: usize,
        nullable: bool,
    ) -> Result<(), ProxyError> {
        match tref {
            TableRef::Sharded(i) => {
                let t = &self.ctx.rules.tables[i];
                let inst = Inst {
                    label: t.display(),
                    key_cols: vec![t.column.clone()],
                    key_display: t.key_display(),
                    key_type: t.key_type,
                    scope,
                    nullable,
                    pin: None,
                    inner: None,
                };
                self.add_inst(inst, qual);
            }
            TableRef::Ambiguous(i) => {
                let t = &self.ctx.rules.tables[i];
                return Err(refuse(
                    format!(
                        "table name \"{name}\" is ambiguous on a sharded fleet: the sharded table {} or a \
                         table of that name in another schema",
                        t.display()
                    ),
                    format!("qualify it with its schema, e.g. {}", t.display()),
                ));
            }
            TableRef::Reference => self.add_other(qual),
        }
        Ok(())
    }

    fn cte_ref(&mut self, pos: usize, qual: String, scope: usize, nullable: bool) -> Result<(), ProxyError> {
        if self.ctes[pos].opaque {
            self.add_other(qual);
            return Ok(());
        }
        // The CTE's body sees the frames of where it was defined, not those of where it is used; each
        // reference is walked on its own so that two references are two instances.
        let depth = self.ctes[pos].depth;
        let query = self.ctes[pos].query;
        let saved_frames = self.frames.split_off(depth.min(self.frames.len()));
        let saved_ctes = self.ctes.split_off(pos);
        let walked = self.walk_derived(query, &format!("CTE {qual}"));
        self.ctes.extend(saved_ctes);
        self.frames.extend(saved_frames);
        let (out, had_sharded) = walked?;
        self.place_derived(out, had_sharded, qual, Vec::new(), scope, nullable);
        Ok(())
    }

    fn derived(
        &mut self,
        subquery: &'q Query,
        qual: String,
        renames: Vec<String>,
        scope: usize,
        nullable: bool,
    ) -> Result<(), ProxyError> {
        let (out, had_sharded) = self.walk_derived(subquery, &format!("subquery {qual}"))?;
        self.place_derived(out, had_sharded, qual, renames, scope, nullable);
        Ok(())
    }

    fn walk_derived(&mut self, q: &'q Query, what: &str) -> Result<(QueryOut, bool), ProxyError> {
        let before = self.insts.len();
        let out = self.query(q, Attach::No, what)?;
        Ok((out, self.insts.len() > before))
    }

    /// A derived table whose rows split by key stands in its outer scope as an instance of its own.
    fn place_derived(
        &mut self,
        out: QueryOut,
        had_sharded: bool,
        qual: String,
        renames: Vec<String>,
        scope: usize,
        nullable: bool,
    ) {
        let Some(inner) = out
            .scope
            .filter(|s| out.local && had_sharded && !self.scopes[*s].insts.is_empty())
        else {
            self.add_other(qual);
            return;
        };
        let first = self.scopes[inner].insts[0];
        let key_cols: Vec<String> = if renames.is_empty() {
            out.exposed.iter().map(|(n, _)| n.clone()).collect()
        } else {
            // `AS s(a, b)` renames output columns by position; the positions are only known without `*`.
            Vec::new()
        };
        let key_type = self.insts[first].key_type;
        let inst = Inst {
            label: format!("subquery {qual}"),
            key_display: format!("{qual}.{}", key_cols.first().cloned().unwrap_or_default()),
            key_cols,
            key_type,
            scope,
            nullable,
            pin: None,
            inner: Some(inner),
        };
        let id = self.add_inst(inst, qual);
        self.scopes[inner].attach = Attach::Derived(id);
    }

    /// The conjuncts of an ON or WHERE: key equalities tie instances (or attach this scope to an outer
    /// one), key conditions pin them when they filter the scope's rows, subqueries are walked.
    fn condition(
        &mut self,
        cond: &'q Expr,
        filters: bool,
        scope: usize,
        flags: &mut Flags,
    ) -> Result<(), ProxyError> {
        for c in conjuncts(cond) {
            if let Some((a, b)) = key_equality(c, self) {
                let (sa, sb) = (self.insts[a].scope, self.insts[b].scope);
                if sa == scope && sb == scope {
                    self.tie(a, b);
                } else if sa == scope && self.scopes[scope].attach == Attach::No {
                    self.scopes[scope].attach = Attach::Correlated(b);
                } else if sb == scope && self.scopes[scope].attach == Attach::No {
                    self.scopes[scope].attach = Attach::Correlated(a);
                }
                continue;
            }
            if filters
                && let Expr::In {
                    expr,
                    target: InTarget::Subquery(subquery),
                    negated: false,
                    ..
                } = c
            {
                self.semi_join(expr, subquery, scope)?;
                continue;
            }
            if filters {
                let mut needs = std::mem::take(&mut self.needs);
                let found = restriction(c, self, self.ctx, &mut needs);
                self.needs = needs;
                for (inst, pin) in found? {
                    if self.insts[inst].scope == scope {
                        let merged = match self.insts[inst].pin.take() {
                            Some(p) => p.and(pin),
                            None => pin,
                        };
                        self.insts[inst].pin = Some(merged);
                    }
                }
            }
            self.expr(c, flags)?;
        }
        Ok(())
    }

    /// `a.key IN (SELECT t.key FROM ...)`: the subquery's rows that match are on `a`'s shard.
    fn semi_join(&mut self, expr: &'q Expr, subquery: &'q Query, scope: usize) -> Result<(), ProxyError> {
        let outer = self
            .key_of(expr)
            .filter(|(i, _, _)| self.insts[*i].scope == scope);
        let out = self.query(subquery, Attach::No, "subquery")?;
        if let (Some((a, ty, _)), Some(sub)) = (outer, out.scope)
            && out.local
            && let [(_, k)] = out.exposed.as_slice()
            && self.insts[*k].key_type == ty
            && self.scopes[sub].attach == Attach::No
            && let SetExpr::Select(s) = subquery.body.as_ref()
            && s.projection.len() == 1
        {
            self.scopes[sub].attach = Attach::Correlated(a);
        }
        let mut flags = Flags::default();
        self.expr(expr, &mut flags)
    }

    fn function_arg(&mut self, arg: &'q FunctionArg, flags: &mut Flags) -> Result<(), ProxyError> {
        let e = match arg {
            FunctionArg::Named { arg, .. }
            | FunctionArg::ExprNamed { arg, .. }
            | FunctionArg::Unnamed(arg) => arg,
        };
        if let FunctionArgExpr::Expr(e) = e {
            self.expr(e, flags)?;
        }
        Ok(())
    }

    /// Walks an expression for the subqueries in it (and notes aggregates and window functions).
    fn expr(&mut self, e: &'q Expr, flags: &mut Flags) -> Result<(), ProxyError> {
        match e {
            Expr::Subquery(q) | Expr::Exists { subquery: q, .. } => {
                self.query(q, Attach::No, "subquery")?;
            }
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) | Expr::Value(_) | Expr::TypedString(_) => {}
            Expr::Wildcard(_) | Expr::QualifiedWildcard(..) => {}
            Expr::BinaryOp { left, right, .. }
            | Expr::AnyOp { left, right, .. }
            | Expr::AllOp { left, right, .. }
            | Expr::IsDistinctFrom(left, right)
            | Expr::IsNotDistinctFrom(left, right) => {
                self.expr(left, flags)?;
                self.expr(right, flags)?;
            }
            Expr::UnaryOp { expr, .. }
            | Expr::Nested(expr)
            | Expr::Cast { expr, .. }
            | Expr::Collate { expr, .. }
            | Expr::IsNull(expr)
            | Expr::IsNotNull(expr)
            | Expr::IsTrue(expr)
            | Expr::IsNotTrue(expr)
            | Expr::IsFalse(expr)
            | Expr::IsNotFalse(expr)
            | Expr::IsUnknown(expr)
            | Expr::IsNotUnknown(expr) => self.expr(expr, flags)?,
            Expr::In { expr, target, .. } => {
                self.expr(expr, flags)?;
                match target {
                    InTarget::Subquery(q) => {
                        self.query(q, Attach::No, "subquery")?;
                    }
                    InTarget::List(list) => {
                        for x in list {
                            self.expr(x, flags)?;
                        }
                    }
                    other => {
                        if super::utility::mentions_query(&other.to_string()) {
                            self.opaque("IN target");
                        }
                    }
                }
            }
            Expr::Between { expr, low, high, .. } => {
                self.expr(expr, flags)?;
                self.expr(low, flags)?;
                self.expr(high, flags)?;
            }
            Expr::Like { expr, pattern, .. }
            | Expr::ILike { expr, pattern, .. }
            | Expr::SimilarTo { expr, pattern, .. } => {
                self.expr(expr, flags)?;
                self.expr(pattern, flags)?;
            }
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                if let Some(o) = operand {
                    self.expr(o, flags)?;
                }
                for w in conditions {
                    self.expr(&w.condition, flags)?;
                    self.expr(&w.result, flags)?;
                }
                if let Some(x) = else_result {
                    self.expr(x, flags)?;
                }
            }
            Expr::Tuple(list) => {
                for x in list {
                    self.expr(x, flags)?;
                }
            }
            Expr::Array(a) => {
                for x in &a.elem {
                    self.expr(x, flags)?;
                }
            }
            Expr::Function(f) => {
                let name = name_parts(&f.name).pop().unwrap_or_default();
                if f.over.is_some() {
                    flags.window = true;
                } else if AGGREGATES.contains(&name.as_str())
                    || f.filter.is_some()
                    || !f.within_group.is_empty()
                {
                    flags.aggregate = true;
                }
                match &f.args {
                    FunctionArguments::None => {}
                    FunctionArguments::Subquery(q) => {
                        self.query(q, Attach::No, "subquery")?;
                    }
                    FunctionArguments::List(list) => {
                        for arg in &list.args {
                            self.function_arg(arg, flags)?;
                        }
                        if !list.clauses.is_empty()
                            && list
                                .clauses
                                .iter()
                                .any(|c| super::utility::mentions_query(&c.to_string()))
                        {
                            self.opaque("a subquery in function arguments");
                        }
                    }
                }
                if let Some(filter) = &f.filter {
                    self.expr(filter, flags)?;
                }
                if let Some(over) = &f.over
                    && super::utility::mentions_query(&over.to_string())
                {
                    self.opaque("a subquery in a window");
                }
            }
            other => {
                if super::utility::mentions_query(&other.to_string()) {
                    self.opaque("a subquery in this expression");
                }
            }
        }
        Ok(())
    }

    /// UPDATE or DELETE (at the top or in a data-modifying WITH).
    pub(super) fn dml(&mut self, stmt: &'q Statement, attach: Attach) -> Result<(), ProxyError> {
        match stmt {
            Statement::Update(u) => {
                let scope = self.new_scope(attach, "UPDATE");
                let mut ons = Vec::new();
                let before = self.insts.len();
                self.factor(&u.table.relation, scope, false, &mut ons)?;
                let target = (before < self.insts.len()).then_some(before);
                self.note_target(&u.table.relation, target);
                if let Some(t) = target {
                    for a in &u.assignments {
                        let cols: Vec<String> = match &a.target {
                            sqlparser::ast::AssignmentTarget::ColumnName(n) => {
                                vec![name_parts(n).pop().unwrap_or_default()]
                            }
                            sqlparser::ast::AssignmentTarget::Tuple(ns) => ns
                                .iter()
                                .map(|n| name_parts(n).pop().unwrap_or_default())
                                .collect(),
                        };
                        if cols.iter().any(|c| self.insts[t].key_cols.contains(c)) {
                            let inst = &self.insts[t];
                            return Err(super::refuse(
                                format!(
                                    "changing the shard key column {} would move the row to another shard",
                                    inst.key_display
                                ),
                                "delete the row and insert it with its new key instead",
                            ));
                        }
                    }
                }
                if let Some(from) = &u.from {
                    let list = match from {
                        sqlparser::ast::UpdateTableFromKind::BeforeSet(l)
                        | sqlparser::ast::UpdateTableFromKind::AfterSet(l) => l,
                    };
                    for twj in list {
                        self.from_item(twj, scope, &mut ons)?;
                    }
                }
                let mut flags = Flags::default();
                for (cond, inner) in &ons {
                    self.condition(cond, *inner, scope, &mut flags)?;
                }
                if let Some(w) = &u.selection {
                    self.condition(w, true, scope, &mut flags)?;
                }
                for a in &u.assignments {
                    self.expr(&a.value, &mut flags)?;
                }
                self.returning(u.returning.as_deref(), &mut flags)?;
                self.end_scope();
            }
            Statement::Delete(d) => {
                let scope = self.new_scope(attach, "DELETE");
                let mut ons = Vec::new();
                let tables = match &d.from {
                    sqlparser::ast::FromTable::WithFromKeyword(l)
                    | sqlparser::ast::FromTable::WithoutKeyword(l) => l,
                };
                for (n, twj) in tables.iter().enumerate() {
                    let before = self.insts.len();
                    self.from_item(twj, scope, &mut ons)?;
                    if n == 0 {
                        let target = (before < self.insts.len()).then_some(before);
                        self.note_target(&twj.relation, target);
                    }
                }
                for twj in d.using.iter().flatten() {
                    self.from_item(twj, scope, &mut ons)?;
                }
                let mut flags = Flags::default();
                for (cond, inner) in &ons {
                    self.condition(cond, *inner, scope, &mut flags)?;
                }
                if let Some(w) = &d.selection {
                    self.condition(w, true, scope, &mut flags)?;
                }
                self.returning(d.returning.as_deref(), &mut flags)?;
                self.end_scope();
            }
            _ => self.opaque("this statement"),
        }
        Ok(())
    }

    fn note_target(&mut self, relation: &TableFactor, sharded: Option<usize>) {
        if sharded.is_some() {
            self.sharded_writes = true;
        } else if let TableFactor::Table { name, .. } = relation {
            self.reference_writes.push(name.to_string());
        }
    }

    pub(super) fn returning(
        &mut self,
        items: Option<&'q [SelectItem]>,
        flags: &mut Flags,
    ) -> Result<(), ProxyError> {
        for item in items.unwrap_or_default() {
            if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item {
                self.expr(e, flags)?;
            }
        }
        Ok(())
    }

    /// Walks expressions that stand outside any FROM list (an INSERT's VALUES, ON CONFLICT, RETURNING).
    pub(super) fn loose_exprs(&mut self, exprs: &[&'q Expr]) -> Result<(), ProxyError> {
        self.new_scope(Attach::Top, "INSERT");
        let mut flags = Flags::default();
        for e in exprs {
            self.expr(e, &mut flags)?;
        }
        self.end_scope();
        Ok(())
    }

    /// Whether a sharded table (or a derived table over one) was found.
    pub(super) fn has_sharded(&self) -> bool {
        !self.insts.is_empty()
    }

    /// The instance of the top scope whose key is this output column of the query, if any.
    pub(super) fn top_key(
        &self,
        out: &QueryOut,
        position: usize,
        projection: &[SelectItem],
    ) -> Option<usize> {
        let item = projection.get(position)?;
        let e = match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
            _ => return None,
        };
        let scope = out.scope?;
        self.key_in_scope(e, scope)
    }

    fn key_in_scope(&self, e: &Expr, scope: usize) -> Option<usize> {
        let (name, qual) = match e {
            Expr::Identifier(id) => (fold(id), None),
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                (fold(&parts[parts.len() - 1]), Some(fold(&parts[parts.len() - 2])))
            }
            Expr::Nested(inner) => return self.key_in_scope(inner, scope),
            _ => return None,
        };
        let _ = qual;
        let mut found = self.scopes[scope]
            .insts
            .iter()
            .copied()
            .filter(|i| self.insts[*i].key_cols.contains(&name));
        let first = found.next();
        if found.next().is_some() { None } else { first }
    }
}

impl Keys for Walker<'_, '_> {
    fn key_of(&self, expr: &Expr) -> Option<(usize, ShardKeyType, String)> {
        let hit = |i: usize| Some((i, self.insts[i].key_type, self.insts[i].key_display.clone()));
        match expr {
            Expr::Nested(inner) => self.key_of(inner),
            Expr::Identifier(id) => {
                // An unqualified column is looked up in the innermost FROM list only: the columns of the
                // reference tables are unknown, and one of them of that name would take precedence over an
                // outer scope's.
                let name = fold(id);
                let frame = self.frames.last()?;
                let mut found = frame
                    .entries
                    .iter()
                    .filter_map(|e| e.inst)
                    .filter(|i| self.insts[*i].key_cols.contains(&name));
                let first = found.next()?;
                if found.next().is_some() { None } else { hit(first) }
            }
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                let name = fold(&parts[parts.len() - 1]);
                let qual = fold(&parts[parts.len() - 2]);
                for frame in self.frames.iter().rev() {
                    if let Some(entry) = frame.entries.iter().find(|e| e.qual == qual) {
                        let i = entry.inst?;
                        return if self.insts[i].key_cols.contains(&name) {
                            hit(i)
                        } else {
                            None
                        };
                    }
                }
                None
            }
            _ => None,
        }
    }

    fn null_pins(&self, inst: usize) -> bool {
        !self.insts[inst].nullable
    }
}

/// What the walk decided.
pub(super) enum Decision {
    /// Run on these shards (or every shard when `None`), for this reason.
    Shards(Option<BTreeSet<crate::cluster::ShardId>>, String),
}

impl Walker<'_, '_> {
    /// The pin of an instance, including (for a derived table) that of the rows it stands for.
    fn inst_pin(&mut self, i: usize) -> Option<Pin> {
        let own = self.insts[i].pin.clone();
        let inner = self.insts[i].inner.and_then(|s| {
            let groups = self.groups(s);
            match groups.as_slice() {
                [(_, pin)] => pin.clone(),
                _ => None,
            }
        });
        match (own, inner) {
            (Some(a), Some(b)) => Some(a.and(b)),
            (a, b) => a.or(b),
        }
    }

    /// The groups of co-located instances of a scope, with each group's pin.
    fn groups(&mut self, scope: usize) -> Vec<(usize, Option<Pin>)> {
        let mut out: Vec<(usize, Option<Pin>)> = Vec::new();
        for i in self.scopes[scope].insts.clone() {
            let root = self.root(i);
            let pin = self.inst_pin(i);
            match out.iter_mut().find(|(r, _)| *r == root) {
                Some((_, p)) => {
                    *p = match (p.take(), pin) {
                        (Some(a), Some(b)) => Some(a.and(b)),
                        (a, b) => a.or(b),
                    }
                }
                None => out.push((root, pin)),
            }
        }
        out
    }

    /// The shards the statement runs on, or the refusal of what would meet across shards.
    pub(super) fn decide(&mut self) -> Result<Decision, ProxyError> {
        let mut violation: Option<ProxyError> = None;
        let mut violation_unpinned = false;
        let mut all_pins: Vec<Option<Pin>> = Vec::new();
        let mut top_pins: Vec<(usize, Option<Pin>)> = Vec::new();
        for s in 0..self.scopes.len() {
            if self.scopes[s].insts.is_empty() {
                continue;
            }
            let groups = self.groups(s);
            // The first violation of a part that no condition pins names the problem best.
            let replace =
                violation.is_none() || (!violation_unpinned && groups.iter().any(|(_, p)| p.is_none()));
            if replace && groups.len() > 1 {
                violation = Some(self.join_refusal(&groups));
                violation_unpinned = groups.iter().any(|(_, p)| p.is_none());
            } else if replace && self.scopes[s].attach == Attach::No {
                violation = Some(self.subquery_refusal(s));
                violation_unpinned = groups.iter().any(|(_, p)| p.is_none());
            }
            for (root, pin) in &groups {
                all_pins.push(pin.clone());
                if self.scopes[s].attach == Attach::Top {
                    top_pins.push((*root, pin.clone()));
                }
            }
        }
        if let Some(refusal) = violation {
            // Rows that would meet across shards are all on one shard when every part is pinned there.
            let mut shards = BTreeSet::new();
            let mut conds = Vec::new();
            for pin in &all_pins {
                let Some(p) = pin else { return Err(refusal) };
                shards.extend(p.shards.iter().copied());
                conds.extend(p.conds.iter().cloned());
            }
            if shards.len() > 1 {
                return Err(refusal);
            }
            return Ok(Decision::Shards(Some(shards.clone()), reason(&conds, &shards)));
        }
        let mut shards = BTreeSet::new();
        let mut conds = Vec::new();
        let mut unpinned = Vec::new();
        for (root, pin) in top_pins {
            match pin {
                Some(p) => {
                    shards.extend(p.shards);
                    conds.extend(p.conds);
                }
                None => unpinned.push(self.insts[root].key_display.clone()),
            }
        }
        if !unpinned.is_empty() {
            unpinned.dedup();
            let params = if self.needs.is_empty() {
                String::new()
            } else {
                let list: Vec<String> = self.needs.iter().map(|n| format!("${n}")).collect();
                format!(" (until the value of {} is known)", list.join(", "))
            };
            return Ok(Decision::Shards(
                None,
                format!("no condition on {}{params}: every shard", unpinned.join(", ")),
            ));
        }
        let text = reason(&conds, &shards);
        Ok(Decision::Shards(Some(shards), text))
    }

    fn join_refusal(&self, groups: &[(usize, Option<Pin>)]) -> ProxyError {
        let a = &self.insts[groups[0].0];
        let b = &self.insts[groups[1].0];
        let hint = if a.key_type == b.key_type {
            format!(
                "join on the shard keys ({} = {}), or pin both to one shard with a condition on each key",
                a.key_display, b.key_display
            )
        } else {
            format!(
                "{} ({}) and {} ({}) are keys of different types, placed differently: pin both to one shard",
                a.key_display,
                a.key_type.as_str(),
                b.key_display,
                b.key_type.as_str()
            )
        };
        super::refuse(
            format!(
                "join of {} and {} is not on their shard keys {} and {}: their rows may be on different shards",
                a.label, b.label, a.key_display, b.key_display
            ),
            hint,
        )
    }

    fn subquery_refusal(&self, s: usize) -> ProxyError {
        let i = self.scopes[s].insts[0];
        let inst = &self.insts[i];
        let outer = self
            .insts
            .iter()
            .find(|x| self.scopes[x.scope].attach == Attach::Top)
            .map(|x| x.key_display.clone());
        let tie = match outer {
            Some(o) => format!(
                "add WHERE {} = {o} to it (a correlation on the shard key)",
                inst.key_display
            ),
            None => format!("add a condition pinning {} to one shard", inst.key_display),
        };
        super::refuse(
            format!(
                "{} on {} is not tied to the shard of the outer query: it would see only one shard's rows of {}",
                self.scopes[s].what, inst.label, inst.label
            ),
            format!("{tie}, pin both to one shard, or run it as a statement of its own"),
        )
    }
}

/// "accounts.id = 42 -> shard 1".
fn reason(conds: &[String], shards: &BTreeSet<crate::cluster::ShardId>) -> String {
    let mut conds = conds.to_vec();
    conds.dedup();
    if shards.is_empty() {
        format!("{} matches no row: shard 0", conds.join(" AND "))
    } else {
        format!("{} -> {}", conds.join(" AND "), super::shards_text(shards))
    }
}
