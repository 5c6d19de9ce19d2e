//! PostgreSQL's `numeric` on its text form, for what merging needs: parse, order, add (sum of the shards'
//! sums) and divide by a count (avg) with PostgreSQL's result scale (`select_div_scale` in numeric.c) and
//! rounding (half away from zero), so the text equals what one server prints.

use std::cmp::Ordering;

/// A numeric value. Finite values are `digits × 10^-scale`, `digits` most significant first without leading
/// zeros (empty for zero), `scale` the display scale (digits after the point).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Numeric {
    NaN,
    PosInf,
    NegInf,
    Finite {
        negative: bool,
        digits: Vec<u8>,
        scale: usize,
    },
}

impl Numeric {
    /// Parses numeric_out's text: `NaN`, `Infinity`, `-Infinity` or `-?d+(.d+)?`.
    pub(crate) fn parse(text: &[u8]) -> Option<Numeric> {
        match text {
            b"NaN" => return Some(Numeric::NaN),
            b"Infinity" => return Some(Numeric::PosInf),
            b"-Infinity" => return Some(Numeric::NegInf),
            _ => {}
        }
        let (negative, rest) = match text.split_first() {
            Some((b'-', rest)) => (true, rest),
            Some((b'+', rest)) => (false, rest),
            _ => (false, text),
        };
        let (int, frac) = match rest.iter().position(|&b| b == b'.') {
            Some(dot) => (&rest[..dot], &rest[dot + 1..]),
            None => (rest, &rest[..0]),
        };
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        if !int.iter().chain(frac).all(u8::is_ascii_digit) {
            return None;
        }
        let digits: Vec<u8> = int.iter().chain(frac).map(|b| b - b'0').collect();
        Some(Numeric::finite(negative, digits, frac.len()))
    }

    /// A finite value, normalised: no leading zero digits, and zero is never negative.
    fn finite(negative: bool, mut digits: Vec<u8>, scale: usize) -> Numeric {
        let lead = digits.iter().take_while(|&&d| d == 0).count();
        digits.drain(..lead);
        Numeric::Finite {
            negative: negative && !digits.is_empty(),
            digits,
            scale,
        }
    }

    /// numeric_send's form: digit count, weight, sign, display scale, then the base-10000 digits without
    /// leading or trailing zero groups (PostgreSQL's `NumericVar` as it goes on the wire).
    pub(crate) fn send(&self) -> Vec<u8> {
        let header = |ndigits: usize, weight: i32, sign: u16, dscale: usize| {
            let mut v = Vec::with_capacity(8 + 2 * ndigits);
            v.extend_from_slice(&(ndigits as i16).to_be_bytes());
            v.extend_from_slice(&(weight as i16).to_be_bytes());
            v.extend_from_slice(&sign.to_be_bytes());
            v.extend_from_slice(&(dscale as u16).to_be_bytes());
            v
        };
        let (negative, digits, scale) = match self {
            Numeric::NaN => return header(0, 0, 0xC000, 0),
            Numeric::PosInf => return header(0, 0, 0xD000, 0),
            Numeric::NegInf => return header(0, 0, 0xF000, 0),
            Numeric::Finite {
                negative,
                digits,
                scale,
            } => (*negative, digits, *scale),
        };
        // The decimal digits laid out from the first integer group to the last fraction group: zeros before
        // the integer part and after the fraction fill whole groups of four.
        let int_len = digits.len().saturating_sub(scale);
        let int_pad = (4 - int_len % 4) % 4;
        let frac_pad = (4 - scale % 4) % 4;
        let mut laid = vec![0u8; int_pad + scale.saturating_sub(digits.len())];
        laid.extend_from_slice(digits);
        laid.extend(std::iter::repeat_n(0u8, frac_pad));
        let groups: Vec<i16> = laid
            .chunks(4)
            .map(|c| c.iter().fold(0i16, |acc, d| acc * 10 + i16::from(*d)))
            .collect();
        let Some(first) = groups.iter().position(|g| *g != 0) else {
            return header(0, 0, 0, scale);
        };
        let last = groups.iter().rposition(|g| *g != 0).unwrap_or(first);
        let weight = ((int_len + int_pad) / 4) as i32 - 1 - first as i32;
        let kept = &groups[first..=last];
        let mut v = header(kept.len(), weight, if negative { 0x4000 } else { 0 }, scale);
        kept.iter().for_each(|g| v.extend_from_slice(&g.to_be_bytes()));
        v
    }

    /// From a bigint's text (a count or a sum of int2/int4).
    pub(crate) fn from_i128(v: i128) -> Numeric {
        let digits = v.unsigned_abs().to_string().bytes().map(|b| b - b'0').collect();
        Numeric::finite(v < 0, digits, 0)
    }

    /// numeric_out's text.
    pub(crate) fn to_text(&self) -> String {
        match self {
            Numeric::NaN => "NaN".into(),
            Numeric::PosInf => "Infinity".into(),
            Numeric::NegInf => "-Infinity".into(),
            Numeric::Finite {
                negative,
                digits,
                scale,
            } => {
                let mut padded = vec![0u8; (scale + 1).saturating_sub(digits.len())];
                padded.extend_from_slice(digits);
                let split = padded.len() - scale;
                let mut out = String::with_capacity(padded.len() + 2);
                if *negative {
                    out.push('-');
                }
                out.extend(padded[..split].iter().map(|d| char::from(b'0' + d)));
                if *scale > 0 {
                    out.push('.');
                    out.extend(padded[split..].iter().map(|d| char::from(b'0' + d)));
                }
                out
            }
        }
    }

    /// The value with trailing fractional zeros removed: equal values give equal keys (1.0 = 1.00), as
    /// GROUP BY and DISTINCT compare them.
    pub(crate) fn canonical(&self) -> String {
        match self {
            Numeric::Finite {
                negative,
                digits,
                scale,
            } => {
                let zeros = digits.iter().rev().take_while(|&&d| d == 0).count().min(*scale);
                Numeric::Finite {
                    negative: *negative,
                    digits: digits[..digits.len() - zeros].to_vec(),
                    scale: scale - zeros,
                }
                .to_text()
            }
            other => other.to_text(),
        }
    }

    /// PostgreSQL's order: -Infinity < finite < Infinity < NaN, NaN equal to itself.
    pub(crate) fn cmp(&self, other: &Numeric) -> Ordering {
        fn rank(n: &Numeric) -> u8 {
            match n {
                Numeric::NegInf => 0,
                Numeric::Finite { .. } => 1,
                Numeric::PosInf => 2,
                Numeric::NaN => 3,
            }
        }
        match (self, other) {
            (
                Numeric::Finite {
                    negative: n1,
                    digits: d1,
                    scale: s1,
                },
                Numeric::Finite {
                    negative: n2,
                    digits: d2,
                    scale: s2,
                },
            ) => match (n1, n2) {
                (false, true) => Ordering::Greater,
                (true, false) => Ordering::Less,
                (false, false) => cmp_magnitude(d1, *s1, d2, *s2),
                (true, true) => cmp_magnitude(d2, *s2, d1, *s1),
            },
            _ => rank(self).cmp(&rank(other)),
        }
    }

    /// The sum, with the larger of the two display scales (add_var's rule).
    pub(crate) fn add(&self, other: &Numeric) -> Numeric {
        match (self, other) {
            (Numeric::NaN, _) | (_, Numeric::NaN) => Numeric::NaN,
            (Numeric::PosInf, Numeric::NegInf) | (Numeric::NegInf, Numeric::PosInf) => Numeric::NaN,
            (Numeric::PosInf, _) | (_, Numeric::PosInf) => Numeric::PosInf,
            (Numeric::NegInf, _) | (_, Numeric::NegInf) => Numeric::NegInf,
            (
                Numeric::Finite {
                    negative: n1,
                    digits: d1,
                    scale: s1,
                },
                Numeric::Finite {
                    negative: n2,
                    digits: d2,
                    scale: s2,
                },
            ) => {
                let scale = (*s1).max(*s2);
                let a = aligned(d1, *s1, scale);
                let b = aligned(d2, *s2, scale);
                if n1 == n2 {
                    Numeric::finite(*n1, add_mag(&a, &b), scale)
                } else {
                    match cmp_digits(&a, &b) {
                        Ordering::Less => Numeric::finite(*n2, sub_mag(&b, &a), scale),
                        _ => Numeric::finite(*n1, sub_mag(&a, &b), scale),
                    }
                }
            }
        }
    }

    /// `self / count` for a positive count, as numeric_div gives it: scale from select_div_scale, rounded
    /// half away from zero.
    pub(crate) fn div_count(&self, count: u64) -> Numeric {
        let (negative, digits, scale) = match self {
            Numeric::Finite {
                negative,
                digits,
                scale,
            } => (*negative, digits, *scale),
            special => return special.clone(),
        };
        let count_digits: Vec<u8> = count.to_string().bytes().map(|b| b - b'0').collect();
        let (w1, f1) = weight_and_first(digits, scale);
        let (w2, f2) = weight_and_first(&count_digits, 0);
        let mut qweight = w1 - w2;
        if f1 <= f2 {
            qweight -= 1;
        }
        // NUMERIC_MIN_SIG_DIGITS 16, DEC_DIGITS 4, display scale within [0, 1000].
        let rscale = (16 - qweight * 4).max(scale as i64).clamp(0, 1000) as usize;
        // Divide truncating to at least one digit beyond rscale, then round on the first dropped digit:
        // the same as rounding the exact quotient (numeric.c computes guard digits and rounds the same way).
        let work_scale = rscale.max(scale) + 1;
        let mut dividend = digits.clone();
        dividend.extend(std::iter::repeat_n(0, work_scale - scale));
        let divisor = u128::from(count);
        let mut quotient = Vec::with_capacity(dividend.len());
        let mut rem: u128 = 0;
        for d in dividend {
            rem = rem * 10 + u128::from(d);
            quotient.push((rem / divisor) as u8);
            rem %= divisor;
        }
        let dropped = work_scale - rscale;
        let first_dropped = quotient[quotient.len() - dropped];
        quotient.truncate(quotient.len() - dropped);
        if first_dropped >= 5 {
            quotient = add_mag(&quotient, &[1]);
        }
        Numeric::finite(negative, quotient, rscale)
    }
}

/// The weight (in base-10000 digits, 0 for the units group) and value of the first non-zero base-10000
/// digit of `digits × 10^-scale`, as numeric.c's NumericVar holds it; (0, 0) for zero.
fn weight_and_first(digits: &[u8], scale: usize) -> (i64, u32) {
    if digits.is_empty() {
        return (0, 0);
    }
    // Pad so the decimal point falls on a group boundary: the fraction to a multiple of 4 digits at the
    // right, the integer part to a multiple of 4 at the left.
    let frac_pad = (4 - scale % 4) % 4;
    let int_len = digits.len().saturating_sub(scale);
    let int_pad = (4 - int_len % 4) % 4;
    let mut all = vec![0u8; int_pad + scale.saturating_sub(digits.len())];
    all.extend_from_slice(digits);
    all.extend(std::iter::repeat_n(0, frac_pad));
    let int_groups = (int_len + int_pad) / 4;
    for (i, group) in all.chunks(4).enumerate() {
        let value = group.iter().fold(0u32, |acc, &d| acc * 10 + u32::from(d));
        if value != 0 {
            return (int_groups as i64 - 1 - i as i64, value);
        }
    }
    (0, 0)
}

fn aligned(digits: &[u8], scale: usize, to: usize) -> Vec<u8> {
    let mut out = digits.to_vec();
    out.extend(std::iter::repeat_n(0, to - scale));
    out
}

fn cmp_digits(a: &[u8], b: &[u8]) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn cmp_magnitude(d1: &[u8], s1: usize, d2: &[u8], s2: usize) -> Ordering {
    let scale = s1.max(s2);
    cmp_digits(&aligned(d1, s1, scale), &aligned(d2, s2, scale))
}

/// Adds two digit strings (most significant first, no leading zeros).
fn add_mag(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len().max(b.len()) + 1);
    let (mut i, mut j, mut carry) = (a.len(), b.len(), 0u8);
    while i > 0 || j > 0 || carry > 0 {
        let mut s = carry;
        if i > 0 {
            i -= 1;
            s += a[i];
        }
        if j > 0 {
            j -= 1;
            s += b[j];
        }
        out.push(s % 10);
        carry = s / 10;
    }
    out.reverse();
    out
}

/// `a - b` for `a >= b`.
fn sub_mag(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len());
    let (mut i, mut j, mut borrow) = (a.len(), b.len(), 0i8);
    while i > 0 {
        i -= 1;
        let mut d = a[i] as i8 - borrow;
        if j > 0 {
            j -= 1;
            d -= b[j] as i8;
        }
        borrow = i8::from(d < 0);
        out.push((d + 10 * borrow) as u8);
    }
    out.reverse();
    out
}
