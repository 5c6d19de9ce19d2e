//! The decision at the end of the walk: the groups of co-located instances of each scope and their pins,
//! the shards the statement runs on, or the refusal of what would meet across shards.

use std::collections::BTreeSet;

use super::super::keys::Pin;
use super::super::{refuse, shards_text};
use super::{Attach, Walker};
use crate::protocol::messages::ProxyError;

/// What the walk decided.
pub(in crate::shard::plan) enum Decision {
    /// Run on these shards (or every shard when `None`), for this reason.
    Shards(Option<BTreeSet<crate::cluster::ShardId>>, String),
}

impl Walker<'_, '_> {
    /// The pin of an instance, including (for a derived table) that of the rows it stands for.
    pub(super) fn inst_pin(&mut self, i: usize) -> Option<Pin> {
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
    pub(super) fn groups(&mut self, scope: usize) -> Vec<(usize, Option<Pin>)> {
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
    pub(in crate::shard::plan) fn decide(&mut self) -> Result<Decision, ProxyError> {
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
        if (!unpinned.is_empty() || shards.len() > 1)
            && let Some(part) = self.scopes.iter().find(|sc| {
                sc.attach == Attach::Top
                    && sc.insts.is_empty()
                    && !sc.reads_written_rows
                    && !DML.contains(&sc.what.as_str())
            })
        {
            // Its rows do not come from a sharded table, so every shard would return them.
            return Err(refuse(
                format!(
                    "this statement runs on several shards, and its {} reads no sharded table: each shard would \
                     return its rows",
                    part.what
                ),
                "run that part as a statement of its own, or pin the statement to one shard with a condition on \
                 the shard key",
            ));
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

    pub(super) fn join_refusal(&self, groups: &[(usize, Option<Pin>)]) -> ProxyError {
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
        refuse(
            format!(
                "join of {} and {} is not on their shard keys {} and {}: their rows may be on different shards",
                a.label, b.label, a.key_display, b.key_display
            ),
            hint,
        )
    }

    pub(super) fn subquery_refusal(&self, s: usize) -> ProxyError {
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
        refuse(
            format!(
                "{} on {} is not tied to the shard of the outer query: it would see only one shard's rows of {}",
                self.scopes[s].what, inst.label, inst.label
            ),
            format!("{tie}, pin both to one shard, or run it as a statement of its own"),
        )
    }
}

/// Scopes that write rather than return rows.
const DML: &[&str] = &["UPDATE", "DELETE", "INSERT"];

/// "accounts.id = 42 -> shard 1".
fn reason(conds: &[String], shards: &BTreeSet<crate::cluster::ShardId>) -> String {
    let mut conds = conds.to_vec();
    conds.dedup();
    if shards.is_empty() {
        format!("{} matches no row: shard 0", conds.join(" AND "))
    } else {
        format!("{} -> {}", conds.join(" AND "), shards_text(shards))
    }
}
