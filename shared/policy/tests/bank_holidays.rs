//! The shipped agreement's bank holidays are the England and Wales pattern, year by year: New
//! Year's Day, Good Friday, Easter Monday, the early May, spring and summer bank holidays,
//! Christmas Day and Boxing Day, with weekend days moved to the next weekdays free.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::collections::BTreeSet;
use std::path::Path;

use jiff::civil::{Date, Weekday, date};

/// Easter Sunday (the Gregorian computus, Meeus/Jones/Butcher).
fn easter(y: i16) -> Date {
    let y32 = i32::from(y);
    let (a, b, c) = (y32 % 19, y32 / 100, y32 % 100);
    let (d, e) = (b / 4, b % 4);
    let f = (b + 8) / 25;
    let g = (b - f + 1) / 3;
    let h = (19 * a + b - d - g + 15) % 30;
    let (i, k) = (c / 4, c % 4);
    let l = (32 + 2 * e + 2 * i - h - k) % 7;
    let m = (a + 11 * h + 22 * l) / 451;
    let month = (h + l - 7 * m + 114) / 31;
    let day = (h + l - 7 * m + 114) % 31 + 1;
    date(y, i8::try_from(month).unwrap(), i8::try_from(day).unwrap())
}

fn first_monday(y: i16, month: i8) -> Date {
    (1..=7)
        .map(|d| date(y, month, d))
        .find(|d| d.weekday() == Weekday::Monday)
        .unwrap()
}

fn last_monday(y: i16, month: i8) -> Date {
    let last = date(y, month, 1).last_of_month().day();
    (1..=last)
        .rev()
        .map(|d| date(y, month, d))
        .find(|d| d.weekday() == Weekday::Monday)
        .unwrap()
}

fn weekend(d: Date) -> bool {
    matches!(d.weekday(), Weekday::Saturday | Weekday::Sunday)
}

fn england_and_wales(y: i16) -> BTreeSet<Date> {
    let mut days = BTreeSet::new();
    let fixed = |d: Date, days: &mut BTreeSet<Date>| {
        let mut at = d;
        while weekend(at) || days.contains(&at) {
            at = at.tomorrow().unwrap();
        }
        days.insert(at);
    };
    fixed(date(y, 1, 1), &mut days);
    let e = easter(y);
    days.insert(e.yesterday().unwrap().yesterday().unwrap());
    days.insert(e.tomorrow().unwrap());
    days.insert(first_monday(y, 5));
    days.insert(last_monday(y, 5));
    days.insert(last_monday(y, 8));
    fixed(date(y, 12, 25), &mut days);
    fixed(date(y, 12, 26), &mut days);
    days
}

#[test]
fn the_agreements_bank_holidays_follow_the_england_and_wales_pattern() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/cheshire-hru-v2.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let isa = hru_policy::CompiledIsa::compile(&text, "cheshire-hru-v2.toml", None).unwrap();
    let hours = isa.hours.expect("version 2 states the unit's hours");
    let expected: BTreeSet<Date> = (2024..=2028).flat_map(england_and_wales).collect();
    assert_eq!(hours.bank_holidays, expected);
    // Spot checks against the published list.
    for d in [
        date(2026, 12, 28),
        date(2027, 3, 26),
        date(2027, 12, 27),
        date(2028, 1, 3),
    ] {
        assert!(hours.bank_holidays.contains(&d), "{d}");
    }
    assert_eq!(hours.bank_holidays_through, date(2028, 12, 31));
}
