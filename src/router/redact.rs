//! Statement text fit for a log line: every string and number constant becomes `$n` (as
//! pg_stat_statements shows statements) and comments are dropped, so that no literal value — a password in
//! `ALTER ROLE ... PASSWORD '...'`, a customer's e-mail in a WHERE clause — reaches the logs. Parameters of
//! the extended protocol are never part of the text in the first place.

use super::split::{Lexer, TokKind};

/// `sql` with constants replaced and whitespace runs collapsed, cut to about `max` bytes.
pub fn redact(sql: &str, max: usize) -> String {
    let mut out = String::with_capacity(sql.len().min(max) + 8);
    let mut constants = 0usize;
    let mut previous_end = 0usize;
    for tok in Lexer::new(sql) {
        if tok.start > previous_end && !out.is_empty() && !out.ends_with(' ') {
            out.push(' ');
        }
        previous_end = tok.end;
        match tok.kind {
            TokKind::Comment => {}
            // An unterminated string or comment may hold anything up to the end of the text.
            TokKind::Str | TokKind::Number | TokKind::Unterminated => {
                constants += 1;
                out.push('$');
                out.push_str(&constants.to_string());
            }
            _ => out.push_str(tok.text(sql)),
        }
        if out.len() > max {
            let mut cut = max;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push_str("...");
            break;
        }
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn constants_become_numbered_parameters() {
        assert_eq!(
            redact("SELECT * FROM t WHERE a = 42 AND b = 'secret'", 1000),
            "SELECT * FROM t WHERE a = $1 AND b = $2"
        );
        assert_eq!(
            redact("ALTER ROLE app PASSWORD 'hunter2'", 1000),
            "ALTER ROLE app PASSWORD $1"
        );
        assert_eq!(
            redact("select $$ x $$, E'a\\'b', 1.5e3", 1000),
            "select $1, $2, $3"
        );
    }

    #[test]
    fn comments_and_unterminated_text_are_dropped() {
        let r = redact("SELECT 1 /* token=abc */ -- pw\n, 'open", 1000);
        assert!(
            !r.contains("abc") && !r.contains("pw") && !r.contains("open"),
            "{r}"
        );
        // Parameters stay as they are: they carry no value.
        assert_eq!(
            redact("INSERT INTO t VALUES ($1,\n   $2)", 1000),
            "INSERT INTO t VALUES ($1, $2)"
        );
    }

    #[test]
    fn long_text_is_cut() {
        let sql = format!("SELECT {}", "x, ".repeat(1000));
        let r = redact(&sql, 100);
        assert!(r.len() <= 104 && r.ends_with("..."), "{r}");
    }
}
