//! Quoting names and values into the SQL text pgfleet writes itself (session-state replay, forward mode's
//! applied changes and setup, the catalog queries' LIKE patterns). One implementation, so that every statement pgfleet builds means the same
//! whatever the names and values hold.

/// Quotes an identifier: always double-quoted, so that case, reserved words (`all`, `select`) and any
/// character survive; embedded double quotes are doubled.
pub(crate) fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for ch in name.chars() {
        if ch == '"' {
            out.push('"');
        }
        out.push(ch);
    }
    out.push('"');
    out
}

/// Quotes a string literal: `'text'` with `'` doubled. Text with a backslash becomes `E'...'` with
/// backslashes doubled, because a plain literal's backslashes mean different things depending on the
/// server's `standard_conforming_strings`, while an escape string means the same under both settings.
pub(crate) fn quote_literal(text: &str) -> String {
    let escape = text.contains('\\');
    let mut out = String::with_capacity(text.len() + 3);
    if escape {
        out.push('E');
    }
    out.push('\'');
    for ch in text.chars() {
        match ch {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            other => out.push(other),
        }
    }
    out.push('\'');
    out
}

/// `text` as a LIKE pattern that matches only itself: `%`, `_` and the backslash (LIKE's default escape
/// character) are escaped. Used to find catalog entries whose names or bodies contain a given name.
pub(crate) fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert_eq!(quote_ident("t"), "\"t\"");
        assert_eq!(quote_ident("search_path"), "\"search_path\"");
        assert_eq!(quote_ident("DateStyle"), "\"DateStyle\"");
        assert_eq!(quote_ident("myapp.setting"), "\"myapp.setting\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_ident("Upper Case"), "\"Upper Case\"");
        assert_eq!(quote_ident("select"), "\"select\"");
        assert_eq!(quote_ident("all"), "\"all\"");
        assert_eq!(quote_ident(""), "\"\"");
        assert_eq!(quote_ident("\"\""), "\"\"\"\"\"\"");
    }

    #[test]
    fn literals() {
        assert_eq!(quote_literal("plain"), "'plain'");
        assert_eq!(quote_literal(""), "''");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("two\nlines\r\ttab"), "'two\nlines\r\ttab'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
        assert_eq!(quote_literal("\\x00ff"), "E'\\\\x00ff'");
        assert_eq!(quote_literal("'\\'"), "E'''\\\\'''");
        assert_eq!(quote_literal("ünïcødé ✓"), "'ünïcødé ✓'");
    }

    #[test]
    fn like_patterns() {
        assert_eq!(escape_like("plain"), "plain");
        assert_eq!(escape_like("pg_fleet"), "pg\\_fleet");
        assert_eq!(escape_like("100%"), "100\\%");
        assert_eq!(escape_like("a\\b"), "a\\\\b");
        assert_eq!(escape_like("_%\\"), "\\_\\%\\\\");
        assert_eq!(escape_like(""), "");
        assert_eq!(escape_like("ünï_"), "ünï\\_");
    }
}
