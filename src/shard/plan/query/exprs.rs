//! Conditions and expressions: key equalities and key conditions of ON and WHERE, subqueries inside
//! expressions, and UPDATE / DELETE.

use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, InTarget, Query, SelectItem, SetExpr, Statement,
    TableFactor,
};

use super::super::keys::{Keys, conjuncts, key_equality, restriction};
use super::super::refuse;
use super::super::rules::name_parts;
use super::{Attach, Flags, Walker};
use crate::protocol::messages::ProxyError;

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

impl<'q> Walker<'_, 'q> {
    pub(super) fn condition(
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
    pub(super) fn semi_join(
        &mut self,
        expr: &'q Expr,
        subquery: &'q Query,
        scope: usize,
    ) -> Result<(), ProxyError> {
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

    pub(super) fn function_arg(&mut self, arg: &'q FunctionArg, flags: &mut Flags) -> Result<(), ProxyError> {
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
    pub(super) fn expr(&mut self, e: &'q Expr, flags: &mut Flags) -> Result<(), ProxyError> {
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
                        if super::super::utility::mentions_query(&other.to_string()) {
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
                                .any(|c| super::super::utility::mentions_query(&c.to_string()))
                        {
                            self.opaque("a subquery in function arguments");
                        }
                    }
                }
                if let Some(filter) = &f.filter {
                    self.expr(filter, flags)?;
                }
                if let Some(over) = &f.over
                    && super::super::utility::mentions_query(&over.to_string())
                {
                    self.opaque("a subquery in a window");
                }
            }
            other => {
                if super::super::utility::mentions_query(&other.to_string()) {
                    self.opaque("a subquery in this expression");
                }
            }
        }
        Ok(())
    }

    /// UPDATE or DELETE (at the top or in a data-modifying WITH).
    pub(in crate::shard::plan) fn dml(
        &mut self,
        stmt: &'q Statement,
        attach: Attach,
    ) -> Result<(), ProxyError> {
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
                            return Err(refuse(
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
                        self.join_tree(twj, scope, &mut ons)?;
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
                    self.join_tree(twj, scope, &mut ons)?;
                    if n == 0 {
                        let target = (before < self.insts.len()).then_some(before);
                        self.note_target(&twj.relation, target);
                    }
                }
                for twj in d.using.iter().flatten() {
                    self.join_tree(twj, scope, &mut ons)?;
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

    pub(super) fn note_target(&mut self, relation: &TableFactor, sharded: Option<usize>) {
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
    pub(in crate::shard::plan) fn loose_exprs(&mut self, exprs: &[&'q Expr]) -> Result<(), ProxyError> {
        self.new_scope(Attach::Top, "INSERT");
        let mut flags = Flags::default();
        for e in exprs {
            self.expr(e, &mut flags)?;
        }
        self.end_scope();
        Ok(())
    }
}
