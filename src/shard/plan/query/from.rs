//! FROM lists: tables, derived tables, CTE references and joins become the instances and visible names of
//! a scope; and how a column reference is resolved to a key.

use sqlparser::ast::{Expr, JoinConstraint, JoinOperator, Query, SelectItem, TableFactor, TableWithJoins};

use super::super::keys::Keys;
use super::super::refuse;
use super::super::rules::{TableRef, fold, name_parts};
use super::{Attach, Flags, Inst, QueryOut, Walker};
use crate::config::ShardKeyType;
use crate::protocol::messages::ProxyError;

impl<'q> Walker<'_, 'q> {
    /// One element of a FROM list with its joins; ON conditions are collected with whether they filter
    /// the scope's rows (inner joins) or only match them (outer joins).
    pub(super) fn join_tree(
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

    pub(super) fn factor(
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
            TableFactor::NestedJoin { table_with_joins, .. } => self.join_tree(table_with_joins, scope, ons),
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
                if super::super::utility::mentions_query(&other.to_string()) {
                    self.opaque("this FROM item");
                }
                self.add_other(String::new());
                Ok(())
            }
        }
    }

    /// A table name of a FROM list (or an UPDATE/DELETE target).
    pub(super) fn named(
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

    pub(super) fn cte_ref(
        &mut self,
        pos: usize,
        qual: String,
        scope: usize,
        nullable: bool,
    ) -> Result<(), ProxyError> {
        if self.ctes[pos].modifying {
            self.scopes[scope].reads_written_rows = true;
        }
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

    pub(super) fn derived(
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

    pub(super) fn walk_derived(&mut self, q: &'q Query, what: &str) -> Result<(QueryOut, bool), ProxyError> {
        let before = self.insts.len();
        let out = self.query(q, Attach::No, what)?;
        Ok((out, self.insts.len() > before))
    }

    /// A derived table whose rows split by key stands in its outer scope as an instance of its own.
    pub(super) fn place_derived(
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
    /// Whether a sharded table (or a derived table over one) was found.
    pub(in crate::shard::plan) fn has_sharded(&self) -> bool {
        !self.insts.is_empty()
    }

    /// The instance of the top scope whose key is this output column of the query, if any.
    pub(in crate::shard::plan) fn top_key(
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

    pub(super) fn key_in_scope(&self, e: &Expr, scope: usize) -> Option<usize> {
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
        // A derived table's key column may be NULL for rows of any shard (an outer join inside it).
        !self.insts[inst].nullable && self.insts[inst].inner.is_none()
    }
}
