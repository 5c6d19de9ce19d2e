//! Shard key values in a statement: literals (with casts to the key's type) and parameters turned into
//! [`KeyValue`]s and shards, and the conditions that restrict a key to a set of shards (`key = v`,
//! `v = key`, `key IN (...)`, `key = ANY (ARRAY[...])`, `key IS NULL`, their AND and OR).

use std::collections::{BTreeMap, BTreeSet};

use sqlparser::ast::{BinaryOperator, DataType, Expr, InTarget, UnaryOperator, Value};

use super::{Ctx, ParamValue, Params};
use crate::cluster::ShardId;
use crate::config::ShardKeyType;
use crate::protocol::messages::ProxyError;
use crate::shard::value::KeyValue;

/// What an operand compared with a key column is.
pub(super) enum Operand {
    /// A constant of the key's type, with its text for SHOW ROUTE.
    Value(KeyValue, String),
    /// A parameter whose value is not known yet.
    Unknown(usize),
    /// Anything else (a column, a function, a constant of another type): it does not pin the key.
    Other,
}

/// The SQLSTATE PostgreSQL gives a literal that is not a value of the column's type.
const INVALID_TEXT: &str = "22P02";

/// The key's value in `expr`, if `expr` is a constant or a parameter of the key's type.
pub(super) fn operand(expr: &Expr, ty: ShardKeyType, ctx: &Ctx<'_>) -> Result<Operand, ProxyError> {
    match expr {
        Expr::Nested(inner) => operand(inner, ty, ctx),
        Expr::Cast { expr, data_type, .. } if cast_keeps(data_type, ty) => operand(expr, ty, ctx),
        Expr::TypedString(t) if cast_keeps(&t.data_type, ty) => match string_of(&t.value.value) {
            Some(s) => parsed(&s, ty).map(|v| Operand::Value(v, quote(&s))),
            None => Ok(Operand::Other),
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr: inner,
        } => match (inner.as_ref(), ty) {
            (Expr::Value(v), ShardKeyType::Integer) => match &v.value {
                Value::Number(n, _) => Ok(integer(&format!("-{n}"))),
                _ => Ok(Operand::Other),
            },
            _ => Ok(Operand::Other),
        },
        Expr::Value(v) => match &v.value {
            Value::Null => Ok(Operand::Value(KeyValue::Null, "NULL".into())),
            // A bare number is numeric or an integer type: against an integer key it pins only when it is
            // an integer (PostgreSQL compares `id = 4.5` numerically and matches nothing); against a text
            // or uuid key PostgreSQL reports the missing operator itself.
            Value::Number(n, _) if ty == ShardKeyType::Integer => Ok(integer(n)),
            Value::Placeholder(p) => param(p, ty, ctx),
            other => match string_of(other) {
                Some(s) => parsed(&s, ty).map(|v| Operand::Value(v, quote(&s))),
                None => Ok(Operand::Other),
            },
        },
        _ => Ok(Operand::Other),
    }
}

fn integer(text: &str) -> Operand {
    match text.parse::<i64>() {
        Ok(n) => Operand::Value(KeyValue::Int(n), text.to_owned()),
        Err(_) => Operand::Other,
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The text of a string constant, quotes and escapes undone.
fn string_of(v: &Value) -> Option<String> {
    match v {
        Value::SingleQuotedString(s)
        | Value::EscapedStringLiteral(s)
        | Value::UnicodeStringLiteral(s)
        | Value::NationalStringLiteral(s) => Some(s.clone()),
        Value::DollarQuotedString(d) => Some(d.value.clone()),
        _ => None,
    }
}

fn parsed(text: &str, ty: ShardKeyType) -> Result<KeyValue, ProxyError> {
    KeyValue::parse(text, ty).map_err(|e| ProxyError::error(INVALID_TEXT, e.to_string()))
}

/// Whether a cast to `data_type` leaves a value of the key's type unchanged. A cast to another type
/// (numeric, `varchar(5)`, `char`) may change the value or the comparison, so it does not pin.
fn cast_keeps(data_type: &DataType, ty: ShardKeyType) -> bool {
    let name = data_type.to_string().to_ascii_lowercase();
    match ty {
        ShardKeyType::Integer => matches!(
            name.as_str(),
            "smallint" | "int" | "integer" | "bigint" | "int2" | "int4" | "int8"
        ),
        ShardKeyType::Text => matches!(name.as_str(), "text" | "varchar" | "character varying"),
        ShardKeyType::Uuid => name == "uuid",
    }
}

/// `$n`: its value from the Bind, or unknown at Parse time.
fn param(placeholder: &str, ty: ShardKeyType, ctx: &Ctx<'_>) -> Result<Operand, ProxyError> {
    let Some(n) = placeholder
        .strip_prefix('$')
        .and_then(|d| d.parse::<usize>().ok())
        .filter(|n| *n >= 1)
    else {
        return Ok(Operand::Other);
    };
    let values = match ctx.params {
        Params::Unknown => return Ok(Operand::Unknown(n)),
        Params::Known(values) => values,
    };
    let Some(value) = values.get(n - 1) else {
        return Err(ProxyError::error(
            "08P01",
            format!(
                "bind message supplies {} parameters, but the statement uses ${n}",
                values.len()
            ),
        ));
    };
    match value {
        ParamValue::Null => Ok(Operand::Value(KeyValue::Null, format!("${n} (NULL)"))),
        ParamValue::Text(bytes) => {
            let text = String::from_utf8_lossy(bytes);
            parsed(&text, ty).map(|v| Operand::Value(v, format!("${n} ({})", quote(&text))))
        }
        ParamValue::Binary(bytes) => KeyValue::from_binary(bytes, ty)
            .map(|v| Operand::Value(v.clone(), format!("${n} ({})", show(&v))))
            .map_err(|e| ProxyError::error("22P03", e.to_string())),
    }
}

/// A key value as SHOW ROUTE writes it.
pub(super) fn show(v: &KeyValue) -> String {
    match v {
        KeyValue::Null => "NULL".into(),
        KeyValue::Int(n) => n.to_string(),
        KeyValue::Text(t) => quote(t),
        KeyValue::Uuid(b) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!(
                "'{}-{}-{}-{}-{}'",
                &hex[0..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            )
        }
    }
}

/// The shard of one key value. NULL is on shard 0, as PostgreSQL's hash partitioning puts it in the
/// partition of remainder 0.
pub(super) fn shard_of(value: &KeyValue, ctx: &Ctx<'_>) -> ShardId {
    match value {
        KeyValue::Null => ShardId::new(0),
        v => ctx.placement.shard_for(v),
    }
}

/// A key restricted to some shards by a condition, with the condition's text for SHOW ROUTE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pin {
    pub(super) shards: BTreeSet<ShardId>,
    pub(super) conds: Vec<String>,
}

impl Pin {
    pub(super) fn and(self, other: Pin) -> Pin {
        let mut conds = self.conds;
        conds.extend(other.conds);
        Pin {
            shards: self.shards.intersection(&other.shards).copied().collect(),
            conds,
        }
    }

    fn or(self, other: Pin) -> Pin {
        let mut shards = self.shards;
        shards.extend(other.shards);
        Pin {
            shards,
            conds: vec![format!(
                "({} OR {})",
                self.conds.join(" AND "),
                other.conds.join(" AND ")
            )],
        }
    }
}

/// Restrictions of key columns, by the instance of the table the column belongs to.
pub(super) type Restriction = BTreeMap<usize, Pin>;

/// How the condition reader sees key columns.
pub(super) trait Keys {
    /// The table instance whose key column `expr` is, with the key's type and its name for messages.
    fn key_of(&self, expr: &Expr) -> Option<(usize, ShardKeyType, String)>;
    /// Whether `key IS NULL` on that instance restricts the rows of the scope (it does not on the nullable
    /// side of an outer join, where a missing match reads as NULL).
    fn null_pins(&self, inst: usize) -> bool;
}

/// What `cond` says about the keys: for each table instance it restricts, the shards its rows can be on.
/// `needs` collects the parameters a restriction would need.
pub(super) fn restriction(
    cond: &Expr,
    keys: &dyn Keys,
    ctx: &Ctx<'_>,
    needs: &mut BTreeSet<usize>,
) -> Result<Restriction, ProxyError> {
    let mut out = Restriction::new();
    match cond {
        Expr::Nested(inner) => return restriction(inner, keys, ctx, needs),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            out = restriction(left, keys, ctx, needs)?;
            for (inst, pin) in restriction(right, keys, ctx, needs)? {
                let merged = match out.remove(&inst) {
                    Some(p) => p.and(pin),
                    None => pin,
                };
                out.insert(inst, merged);
            }
        }
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Or,
            right,
        } => {
            let mut l = restriction(left, keys, ctx, needs)?;
            for (inst, pin) in restriction(right, keys, ctx, needs)? {
                if let Some(p) = l.remove(&inst) {
                    out.insert(inst, p.or(pin));
                }
            }
        }
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => {
            let sides = match (keys.key_of(left), keys.key_of(right)) {
                (Some(k), None) => Some((k, right)),
                (None, Some(k)) => Some((k, left)),
                _ => None,
            };
            if let Some(((inst, ty, name), other)) = sides
                && let Some(pin) = pin_values(&name, &[other.as_ref()], ty, ctx, needs)?
            {
                out.insert(inst, pin);
            }
        }
        Expr::In {
            expr,
            target: InTarget::List(list),
            negated: false,
            ..
        } => {
            if let Some((inst, ty, name)) = keys.key_of(expr) {
                let items: Vec<&Expr> = list.iter().collect();
                if let Some(pin) = pin_values(&name, &items, ty, ctx, needs)? {
                    out.insert(inst, pin);
                }
            }
        }
        Expr::AnyOp {
            left,
            compare_op: BinaryOperator::Eq,
            right,
            ..
        } => {
            if let (Some((inst, ty, name)), Expr::Array(array)) = (keys.key_of(left), right.as_ref()) {
                let items: Vec<&Expr> = array.elem.iter().collect();
                if let Some(pin) = pin_values(&name, &items, ty, ctx, needs)? {
                    out.insert(inst, pin);
                }
            }
        }
        Expr::IsNull(inner) => {
            if let Some((inst, _, name)) = keys.key_of(inner)
                && keys.null_pins(inst)
            {
                out.insert(
                    inst,
                    Pin {
                        shards: BTreeSet::from([ShardId::new(0)]),
                        conds: vec![format!("{name} IS NULL")],
                    },
                );
            }
        }
        _ => {}
    }
    Ok(out)
}

/// The pin of `key = item` for one item, or `key IN (items)`; `None` when an item is not a constant.
fn pin_values(
    name: &str,
    items: &[&Expr],
    ty: ShardKeyType,
    ctx: &Ctx<'_>,
    needs: &mut BTreeSet<usize>,
) -> Result<Option<Pin>, ProxyError> {
    let mut shards = BTreeSet::new();
    let mut texts = Vec::new();
    let mut complete = true;
    for item in items {
        match operand(item, ty, ctx)? {
            // `key = NULL` is never true: it adds no shard.
            Operand::Value(KeyValue::Null, text) => texts.push(text),
            Operand::Value(v, text) => {
                shards.insert(shard_of(&v, ctx));
                texts.push(text);
            }
            Operand::Unknown(n) => {
                needs.insert(n);
                complete = false;
            }
            Operand::Other => complete = false,
        }
    }
    if !complete {
        return Ok(None);
    }
    let cond = match texts.as_slice() {
        [one] => format!("{name} = {one}"),
        many => format!("{name} IN ({})", many.join(", ")),
    };
    Ok(Some(Pin {
        shards,
        conds: vec![cond],
    }))
}

/// `a.key = b.key` between two key columns of the same type: the two instances' rows meet only on one
/// shard.
pub(super) fn key_equality(cond: &Expr, keys: &dyn Keys) -> Option<(usize, usize)> {
    match cond {
        Expr::Nested(inner) => key_equality(inner, keys),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => match (keys.key_of(left), keys.key_of(right)) {
            (Some((a, ta, _)), Some((b, tb, _))) if ta == tb => Some((a, b)),
            _ => None,
        },
        _ => None,
    }
}

/// The top-level conjuncts of a condition.
pub(super) fn conjuncts(cond: &Expr) -> Vec<&Expr> {
    match cond {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            let mut v = conjuncts(left);
            v.extend(conjuncts(right));
            v
        }
        Expr::Nested(inner) => conjuncts(inner),
        other => vec![other],
    }
}
