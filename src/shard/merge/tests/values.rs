//! Numeric and float text as PostgreSQL prints it, and the order of values of each type.

use super::super::numeric::Numeric;
use super::super::value::{self, Kind};

#[test]
fn numeric_text_arithmetic_matches_postgresql() {
    let n = |s: &str| Numeric::parse(s.as_bytes()).expect(s);
    // (sum, count, avg as PostgreSQL prints it)
    let avgs = [
        ("3", 2, "1.5000000000000000"),
        ("3", 3, "1.00000000000000000000"),
        ("10", 4, "2.5000000000000000"),
        ("-7", 2, "-3.5000000000000000"),
        ("3.75", 2, "1.8750000000000000"),
        ("2", 3, "0.66666666666666666667"),
        ("20000", 3, "6666.6666666666666667"),
        ("1", 7, "0.14285714285714285714"),
        (
            "123456789012345678901234567890",
            1,
            "123456789012345678901234567890",
        ),
        ("0", 5, "0.00000000000000000000"),
        ("0.000001", 3, "0.000000333333333333333333"),
        ("NaN", 2, "NaN"),
        ("Infinity", 2, "Infinity"),
    ];
    for (sum, count, avg) in avgs {
        assert_eq!(n(sum).div_count(count).to_text(), avg, "{sum}/{count}");
    }
    let sums = [
        ("1.5", "2.25", "3.75"),
        ("-1.50", "1.5", "0.00"),
        ("99999", "1", "100000"),
        ("-3", "1.000", "-2.000"),
        ("Infinity", "-Infinity", "NaN"),
        ("1", "NaN", "NaN"),
    ];
    for (a, b, sum) in sums {
        assert_eq!(n(a).add(&n(b)).to_text(), sum, "{a}+{b}");
    }
    assert_eq!(n("1.500").canonical(), n("1.5").canonical());
    assert_eq!(n("-0.0").to_text(), "0.0");
}

#[test]
fn float_text_is_postgresql_output() {
    let f8 = [
        (1.5, "1.5"),
        (1e15, "1e+15"),
        (123456789012345.0, "123456789012345"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (-0.0, "-0"),
        (1e100, "1e+100"),
        (0.1 + 0.2, "0.30000000000000004"),
        (f64::NAN, "NaN"),
        (f64::NEG_INFINITY, "-Infinity"),
    ];
    for (v, text) in f8 {
        assert_eq!(value::float8_text(v), text);
    }
    assert_eq!(value::float4_text(1e6), "1e+06");
    assert_eq!(value::float4_text(123456.0), "123456");
    assert_eq!(value::float4_text(0.1), "0.1");
}

#[test]
fn values_order_as_postgresql_orders_them() {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let cases: &[(Kind, &str, &str, std::cmp::Ordering)] = &[
        (Kind::Int, "9", "10", Less),
        (Kind::Int, "-5", "3", Less),
        (Kind::Float, "NaN", "Infinity", Greater),
        (Kind::Float, "-Infinity", "-1e+300", Less),
        (Kind::Float, "-0", "0", Equal),
        (Kind::Float, "1e-05", "0.0001", Less),
        (Kind::Numeric, "NaN", "Infinity", Greater),
        (Kind::Numeric, "10.5", "9.75", Greater),
        (Kind::Numeric, "-10.5", "-9.75", Less),
        (Kind::Numeric, "1.0", "1.00", Equal),
        (Kind::Text, "B", "a", Less),
        (Kind::Bpchar, "a  ", "a", Equal),
        (Kind::Date, "0044-03-15 BC", "0001-01-01", Less),
        (Kind::Date, "10000-01-01", "9999-12-31", Greater),
        (Kind::Date, "infinity", "9999-12-31", Greater),
        (
            Kind::Timestamp,
            "2024-01-01 00:00:00.5",
            "2024-01-01 00:00:00.25",
            Greater,
        ),
        (
            Kind::TimestampTz,
            "2024-01-01 10:00:00+02",
            "2024-01-01 09:00:00+00",
            Less,
        ),
        (
            Kind::TimestampTz,
            "2024-01-01 05:30:00+05:30",
            "2024-01-01 00:00:00+00",
            Equal,
        ),
        (Kind::Bytes, "f", "t", Less),
    ];
    for (kind, a, b, want) in cases {
        assert_eq!(
            value::compare(*kind, a.as_bytes(), b.as_bytes()),
            Ok(*want),
            "{kind:?} {a} {b}"
        );
    }
    // Another DateStyle is refused rather than misread.
    assert!(value::compare(Kind::Date, b"01/02/2024", b"2024-01-02").is_err());
}
