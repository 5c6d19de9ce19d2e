//! Statement text fit for a log line: every string and number constant becomes `$n` (as
//! pg_stat_statements shows statements) and comments are dropped, so that no literal value — a password in
//! `ALTER ROLE ... PASSWORD '...'`, a customer's e-mail in a WHERE clause — reaches the logs. Parameters of
//! the extended protocol are never part of the text in the first place.

use super::split::{Lexer, TokKind};

/// `sql` with constants replaced and whitespace runs collapsed, cut to about `max` bytes. Constants are
/// numbered after the highest parameter the text already has, as pg_stat_statements does, so that a
/// number never stands for both a parameter and a constant: `SELECT pg_sleep(0.3), $1::text` becomes
/// `SELECT pg_sleep($2), $1::text`.
pub fn redact(sql: &str, max: usize) -> String {
    let mut out = String::with_capacity(sql.len().min(max) + 8);
    let mut number = Decimal::after_parameters(sql);
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
                out.push('$');
                out.push_str(number.as_str());
                number.increment();
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

/// A non-negative integer as decimal digits, most significant first and without leading zeros: the text
/// may spell a parameter with any number of digits (`$99999999999999999999999`), and the next free number
/// must still be past it.
struct Decimal(String);

impl Decimal {
    /// One more than the highest `$n` parameter in `sql` (1 when there is none).
    fn after_parameters(sql: &str) -> Self {
        let mut highest = "0";
        for tok in Lexer::new(sql).filter(|t| t.kind == TokKind::Param) {
            let digits = tok.text(sql).trim_start_matches('$').trim_start_matches('0');
            if (digits.len(), digits) > (highest.len(), highest) {
                highest = digits;
            }
        }
        let mut next = Decimal(if highest.is_empty() { "0" } else { highest }.to_owned());
        next.increment();
        next
    }

    fn as_str(&self) -> &str {
        &self.0
    }

    fn increment(&mut self) {
        let mut digits = std::mem::take(&mut self.0).into_bytes();
        let mut i = digits.len();
        loop {
            if i == 0 {
                digits.insert(0, b'1');
                break;
            }
            i -= 1;
            if digits[i] == b'9' {
                digits[i] = b'0';
            } else {
                digits[i] += 1;
                break;
            }
        }
        self.0 = String::from_utf8(digits).unwrap_or_default();
    }
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
    fn constants_never_reuse_a_parameter_number() {
        for (sql, redacted) in [
            ("select pg_sleep(0.3), $1::text", "select pg_sleep($2), $1::text"),
            ("select $2, 'a', $1, 7", "select $2, $3, $1, $4"),
            ("select 'a', $1", "select $2, $1"),
            ("select $3 + 1 + 2", "select $3 + $4 + $5"),
            ("select $007, 1", "select $007, $8"),
            ("select $9, 1, 2", "select $9, $10, $11"),
            ("select $0, 1", "select $0, $1"),
            (
                "select $99999999999999999999999, 'pw'",
                "select $99999999999999999999999, $100000000000000000000000",
            ),
            // No parameter: numbering starts at 1, as before.
            ("select 1, 2", "select $1, $2"),
        ] {
            assert_eq!(redact(sql, 1000), redacted, "{sql}");
        }
    }

    #[test]
    fn long_text_is_cut() {
        let sql = format!("SELECT {}", "x, ".repeat(1000));
        let r = redact(&sql, 100);
        assert!(r.len() <= 104 && r.ends_with("..."), "{r}");
    }
}
