//! What an expression's tokens say about mergeability: the aggregate and window calls it makes, the
//! collations it names, and whether a subquery inside it reads a sharded table. Working on tokens rather
//! than on the syntax tree keeps the check complete: every function call and every name is seen, whatever
//! expression node holds it.

use sqlparser::ast::{Ident, ObjectName, ObjectNamePart};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, Tokenizer, Word};

use super::ShardedTables;

/// How a function name aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AggClass {
    /// count, sum, min, max, avg: merged.
    Mergeable,
    /// Any other aggregate: refused.
    Refused,
}

/// PostgreSQL 15's aggregates that cannot be merged from per-shard results (`*_agg` names are refused too).
const REFUSED_AGGREGATES: &[&str] = &[
    "array_agg",
    "bit_and",
    "bit_or",
    "bit_xor",
    "bool_and",
    "bool_or",
    "corr",
    "covar_pop",
    "covar_samp",
    "cume_dist",
    "dense_rank",
    "every",
    "json_agg",
    "json_object_agg",
    "jsonb_agg",
    "jsonb_object_agg",
    "mode",
    "percent_rank",
    "percentile_cont",
    "percentile_disc",
    "range_agg",
    "range_intersect_agg",
    "rank",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "string_agg",
    "var_pop",
    "var_samp",
    "variance",
    "xmlagg",
    "any_value",
];

/// The aggregates merged from per-shard results.
pub(crate) const MERGEABLE_AGGREGATES: &[&str] = &["count", "sum", "min", "max", "avg"];

/// How `name` (a function's name, possibly schema-qualified) aggregates, None for a plain function.
pub(crate) fn aggregate_class(name: &ObjectName, tables: &dyn ShardedTables) -> Option<AggClass> {
    let parts: Vec<String> = name.0.iter().map(part_name).collect();
    let builtin = match parts.as_slice() {
        [one] => Some(one.as_str()),
        [schema, one] if schema == "pg_catalog" => Some(one.as_str()),
        _ => None,
    };
    if let Some(n) = builtin {
        if MERGEABLE_AGGREGATES.contains(&n) {
            return Some(AggClass::Mergeable);
        }
        if REFUSED_AGGREGATES.contains(&n) || n.ends_with("_agg") {
            return Some(AggClass::Refused);
        }
    }
    tables.is_user_aggregate(name).then_some(AggClass::Refused)
}

/// An identifier as PostgreSQL folds it: unquoted names in lower case.
pub(crate) fn ident_name(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

fn part_name(part: &ObjectNamePart) -> String {
    match part.as_ident() {
        Some(ident) => ident_name(ident),
        None => part.to_string(),
    }
}

/// What [`scan`] found outside subqueries, and the sharded table a subquery reads.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    /// Aggregate calls, by name as written, with their class.
    pub(crate) aggregates: Vec<(String, AggClass)>,
    /// A window function call (`... OVER`).
    pub(crate) window: bool,
    /// Collations named other than "C" and "POSIX".
    pub(crate) collations: Vec<String>,
    /// A sharded table read by a subquery.
    pub(crate) sharded_subquery: Option<String>,
    /// Calls of PostgreSQL's set-returning functions.
    pub(crate) set_returning: Vec<String>,
}

/// PostgreSQL's set-returning functions usable in a select list: beside aggregates they multiply each
/// group's row, which combining the shards' groups would undo.
const SET_RETURNING: &[&str] = &[
    "generate_series",
    "generate_subscripts",
    "unnest",
    "regexp_matches",
    "regexp_split_to_table",
    "string_to_table",
    "json_array_elements",
    "json_array_elements_text",
    "jsonb_array_elements",
    "jsonb_array_elements_text",
    "json_each",
    "json_each_text",
    "jsonb_each",
    "jsonb_each_text",
    "json_object_keys",
    "jsonb_object_keys",
    "json_populate_recordset",
    "jsonb_populate_recordset",
    "json_to_recordset",
    "jsonb_to_recordset",
    "jsonb_path_query",
    "pg_ls_dir",
];

/// Scans the text of an expression (or of a whole query, `as_query`, for the tables it reads).
pub(crate) fn scan(text: &str, tables: &dyn ShardedTables) -> Findings {
    let dialect = PostgreSqlDialect {};
    let tokens: Vec<Token> = match Tokenizer::new(&dialect, text).tokenize() {
        Ok(t) => t
            .into_iter()
            .filter(|t| !matches!(t, Token::Whitespace(_)))
            .collect(),
        // The text is sqlparser's own rendering of a parsed statement, so it tokenizes; if it did not,
        // report it as reading a sharded table, which refuses the statement.
        Err(_) => {
            return Findings {
                sharded_subquery: Some(text.to_owned()),
                ..Findings::default()
            };
        }
    };
    let mut found = Findings::default();
    let mut i = 0;
    while i < tokens.len() {
        if tokens[i] == Token::LParen && starts_query(tokens.get(i + 1)) {
            let end = matching_paren(&tokens, i);
            if found.sharded_subquery.is_none() {
                found.sharded_subquery = sharded_name(&tokens[i + 1..end], tables);
            }
            i = end + 1;
            continue;
        }
        if let Token::Word(w) = &tokens[i] {
            if w.quote_style.is_none() && w.keyword == Keyword::OVER {
                found.window = true;
            }
            if w.quote_style.is_none() && w.keyword == Keyword::COLLATE {
                let (name, next) = dotted(&tokens, i + 1);
                let last = name.0.last().map(part_name).unwrap_or_default();
                if last != "C" && last != "POSIX" {
                    found.collations.push(name.to_string());
                }
                i = next;
                continue;
            }
            let (name, next) = dotted(&tokens, i);
            if tokens.get(next) == Some(&Token::LParen) {
                if let Some(class) = aggregate_class(&name, tables) {
                    found.aggregates.push((name.to_string(), class));
                }
                let last = name.0.last().map(part_name).unwrap_or_default();
                if SET_RETURNING.contains(&last.as_str()) {
                    found.set_returning.push(name.to_string());
                }
            }
            i = next;
            continue;
        }
        i += 1;
    }
    found
}

/// The sharded table a whole query's text names anywhere, if any.
pub(crate) fn reads_sharded(text: &str, tables: &dyn ShardedTables) -> Option<String> {
    let dialect = PostgreSqlDialect {};
    match Tokenizer::new(&dialect, text).tokenize() {
        Ok(t) => {
            let tokens: Vec<Token> = t
                .into_iter()
                .filter(|t| !matches!(t, Token::Whitespace(_)))
                .collect();
            sharded_name(&tokens, tables)
        }
        Err(_) => Some(text.to_owned()),
    }
}

fn starts_query(token: Option<&Token>) -> bool {
    matches!(token, Some(Token::Word(w)) if w.quote_style.is_none()
        && matches!(w.keyword, Keyword::SELECT | Keyword::WITH | Keyword::VALUES | Keyword::TABLE))
}

/// The index of the `)` closing the `(` at `open` (the last token when unbalanced).
fn matching_paren(tokens: &[Token], open: usize) -> usize {
    let mut depth = 0usize;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    tokens.len().saturating_sub(1)
}

/// The dotted name starting at `at` (`a`, `a.b`, `"A".b.c`) and the index after it.
fn dotted(tokens: &[Token], at: usize) -> (ObjectName, usize) {
    let mut parts = Vec::new();
    let mut i = at;
    while let Some(Token::Word(w)) = tokens.get(i) {
        parts.push(ObjectNamePart::Identifier(word_ident(w)));
        if tokens.get(i + 1) == Some(&Token::Period) {
            i += 2;
        } else {
            i += 1;
            break;
        }
    }
    (ObjectName(parts), i.max(at + 1))
}

fn word_ident(w: &Word) -> Ident {
    match w.quote_style {
        Some(q) => Ident::with_quote(q, &w.value),
        None => Ident::new(&w.value),
    }
}

/// The first dotted name in `tokens` that is a sharded table.
fn sharded_name(tokens: &[Token], tables: &dyn ShardedTables) -> Option<String> {
    let mut i = 0;
    while i < tokens.len() {
        if matches!(tokens[i], Token::Word(_)) {
            let (name, next) = dotted(tokens, i);
            if tables.shard_key(&name).is_some() {
                return Some(name.to_string());
            }
            i = next;
        } else {
            i += 1;
        }
    }
    None
}

/// Whether two expressions are the same as PostgreSQL reads them: equal tokens, unquoted names compared
/// case-insensitively (string literals and quoted names exactly).
pub(crate) fn same_expr(a: &str, b: &str) -> bool {
    fn norm(text: &str) -> Option<Vec<Token>> {
        let dialect = PostgreSqlDialect {};
        let tokens = Tokenizer::new(&dialect, text).tokenize().ok()?;
        Some(
            tokens
                .into_iter()
                .filter(|t| !matches!(t, Token::Whitespace(_)))
                .map(|t| match t {
                    Token::Word(w) if w.quote_style.is_none() => Token::Word(Word {
                        value: w.value.to_lowercase(),
                        quote_style: None,
                        keyword: w.keyword,
                    }),
                    other => other,
                })
                .collect(),
        )
    }
    match (norm(a), norm(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}
