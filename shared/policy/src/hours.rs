//! The unit's working hours as the agreement states them (`[hours]`): days, opening and closing
//! times in a named time zone, and the bank holidays on which there is no full service. A
//! referral received outside them is out of hours, decided by the node from its received time.

use std::collections::BTreeSet;

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use serde::Deserialize;
use toml::Spanned;

use crate::ErrorKind;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHours {
    pub(crate) time_zone: Spanned<String>,
    pub(crate) days: Vec<Spanned<String>>,
    pub(crate) open: Spanned<String>,
    pub(crate) close: Spanned<String>,
    pub(crate) bank_holidays_source: Spanned<String>,
    pub(crate) bank_holidays_from: Spanned<String>,
    pub(crate) bank_holidays_through: Spanned<String>,
    #[serde(default)]
    pub(crate) bank_holidays: Vec<Spanned<String>>,
}

/// Working hours: a referral received outside them is out of hours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hours {
    /// IANA time zone the times are in, e.g. `Europe/London`.
    pub time_zone: String,
    tz: TimeZone,
    /// Working days.
    pub days: BTreeSet<u8>,
    /// Opening time (inclusive).
    pub open: Time,
    /// Closing time (exclusive).
    pub close: Time,
    /// Days without full service.
    pub bank_holidays: BTreeSet<Date>,
    /// Where the bank holiday list comes from.
    pub bank_holidays_source: String,
    /// The first day the list covers.
    pub bank_holidays_from: Date,
    /// The last day the list covers.
    pub bank_holidays_through: Date,
}

const DAYS: [(&str, Weekday); 7] = [
    ("mon", Weekday::Monday),
    ("tue", Weekday::Tuesday),
    ("wed", Weekday::Wednesday),
    ("thu", Weekday::Thursday),
    ("fri", Weekday::Friday),
    ("sat", Weekday::Saturday),
    ("sun", Weekday::Sunday),
];

/// One problem with `[hours]`: where, what kind, what, and what to do.
pub(crate) type HoursProblem = (std::ops::Range<usize>, ErrorKind, String, String);

impl Hours {
    /// Validate `[hours]`; `until_ms` is when the agreement stops being in force (the bank
    /// holiday list must reach it).
    pub(crate) fn compile(raw: RawHours, until_ms: Option<i64>) -> Result<Self, Vec<HoursProblem>> {
        let mut problems: Vec<HoursProblem> = Vec::new();
        let bad =
            |s: &Spanned<String>, what: String, hint: &str| (s.span(), ErrorKind::BadValue, what, hint.to_owned());
        let tz = TimeZone::get(raw.time_zone.get_ref()).map_err(|_| {
            problems.push(bad(
                &raw.time_zone,
                format!("hours.time_zone `{}` is not an IANA time zone", raw.time_zone.get_ref()),
                "write a zone name such as \"Europe/London\"",
            ))
        });
        let mut days = BTreeSet::new();
        for d in &raw.days {
            match DAYS.iter().find(|(n, _)| n == d.get_ref()) {
                Some((_, w)) => {
                    days.insert(w.to_monday_zero_offset() as u8);
                }
                None => problems.push(bad(
                    d,
                    format!("hours.days: `{}` is not a day", d.get_ref()),
                    "write days as mon, tue, wed, thu, fri, sat, sun",
                )),
            }
        }
        if raw.days.is_empty() {
            problems.push((
                raw.open.span(),
                ErrorKind::BadValue,
                "hours.days is empty: the unit would never be open".into(),
                "list the working days, e.g. days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]".into(),
            ));
        }
        let time = |s: &Spanned<String>, key: &str, problems: &mut Vec<HoursProblem>| {
            s.get_ref()
                .parse::<Time>()
                .ok()
                .filter(|t| t.subsec_nanosecond() == 0)
                .or_else(|| {
                    problems.push(bad(
                        s,
                        format!("hours.{key} `{}` is not a time", s.get_ref()),
                        "write times as HH:MM, e.g. \"08:00\"",
                    ));
                    None
                })
        };
        let open = time(&raw.open, "open", &mut problems);
        let close = time(&raw.close, "close", &mut problems);
        if let (Some(o), Some(c)) = (open, close)
            && o >= c
        {
            problems.push(bad(
                &raw.close,
                format!("hours.close {c} is not after hours.open {o}"),
                "the unit closes after it opens on the same day",
            ));
        }
        if raw.bank_holidays_source.get_ref().trim().is_empty() {
            problems.push(bad(
                &raw.bank_holidays_source,
                "hours.bank_holidays_source is empty".into(),
                "name where the list comes from, e.g. https://www.gov.uk/bank-holidays (England and Wales)",
            ));
        }
        let from = raw.bank_holidays_from.get_ref().parse::<Date>().ok();
        if from.is_none() {
            problems.push(bad(
                &raw.bank_holidays_from,
                format!(
                    "hours.bank_holidays_from `{}` is not a date",
                    raw.bank_holidays_from.get_ref()
                ),
                "write dates as YYYY-MM-DD",
            ));
        }
        let through = raw.bank_holidays_through.get_ref().parse::<Date>().ok();
        if through.is_none() {
            problems.push(bad(
                &raw.bank_holidays_through,
                format!(
                    "hours.bank_holidays_through `{}` is not a date",
                    raw.bank_holidays_through.get_ref()
                ),
                "write dates as YYYY-MM-DD",
            ));
        }
        let mut bank_holidays = BTreeSet::new();
        for h in &raw.bank_holidays {
            match h.get_ref().parse::<Date>() {
                Ok(d) if through.is_some_and(|t| d > t) => problems.push(bad(
                    h,
                    format!("bank holiday {d} is after bank_holidays_through"),
                    "raise bank_holidays_through to cover every listed day",
                )),
                Ok(d) if from.is_some_and(|f| d < f) => problems.push(bad(
                    h,
                    format!("bank holiday {d} is before bank_holidays_from"),
                    "lower bank_holidays_from to cover every listed day",
                )),
                Ok(d) if !bank_holidays.insert(d) => problems.push((
                    h.span(),
                    ErrorKind::Duplicate,
                    format!("bank holiday {d} is listed twice"),
                    "list each day once".into(),
                )),
                Ok(_) => {}
                Err(_) => problems.push(bad(
                    h,
                    format!("hours.bank_holidays: `{}` is not a date", h.get_ref()),
                    "write dates as YYYY-MM-DD",
                )),
            }
        }
        if let Some(t) = through {
            let last_day_in_force = until_ms
                .and_then(|u| jiff::Timestamp::from_millisecond(u - 1).ok())
                .map(|u| u.to_zoned(TimeZone::UTC).date());
            match last_day_in_force {
                Some(last) if last > t => problems.push(bad(
                    &raw.bank_holidays_through,
                    format!("the bank holidays are listed through {t} but the agreement is in force until {last}"),
                    "list the bank holidays of every year the agreement is in force, or end it sooner",
                )),
                None => problems.push(bad(
                    &raw.bank_holidays_through,
                    format!("the bank holidays are listed through {t} but the agreement has no effective_until"),
                    "give the agreement an effective_until the bank holiday list reaches",
                )),
                Some(_) => {}
            }
        }
        match (tz, open, close, from, through) {
            (Ok(tz), Some(open), Some(close), Some(from), Some(through)) if problems.is_empty() => Ok(Hours {
                time_zone: raw.time_zone.into_inner(),
                tz,
                days,
                open,
                close,
                bank_holidays,
                bank_holidays_source: raw.bank_holidays_source.into_inner(),
                bank_holidays_from: from,
                bank_holidays_through: through,
            }),
            _ => Err(problems),
        }
    }

    /// Whether `date` is a working day: a working weekday that is not a bank holiday.
    pub fn is_working_day(&self, date: Date) -> bool {
        self.days.contains(&(date.weekday().to_monday_zero_offset() as u8)) && !self.bank_holidays.contains(&date)
    }

    /// Whether an instant (Unix ms) falls outside the working hours.
    pub fn out_of_hours(&self, at_ms: i64) -> bool {
        let Ok(at) = jiff::Timestamp::from_millisecond(at_ms) else {
            return true;
        };
        let local = at.to_zoned(self.tz.clone());
        let t = local.time();
        !(self.is_working_day(local.date()) && t >= self.open && t < self.close)
    }

    /// The instant `n` working days after `at_ms`, at the same wall-clock time.
    pub fn working_days_after(&self, at_ms: i64, n: u32) -> i64 {
        let Ok(start) = jiff::Timestamp::from_millisecond(at_ms) else {
            return at_ms;
        };
        let mut at = start.to_zoned(self.tz.clone());
        let mut left = n;
        while left > 0 {
            let Ok(next) = at.checked_add(jiff::Span::new().days(1)) else {
                break;
            };
            at = next;
            if self.is_working_day(at.date()) {
                left -= 1;
            }
        }
        at.timestamp().as_millisecond()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hours(extra: &str) -> Result<Hours, Vec<HoursProblem>> {
        let text = format!(
            "time_zone = \"Europe/London\"\ndays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]\nopen = \"08:00\"\n\
             close = \"16:00\"\nbank_holidays_source = \"gov.uk\"\nbank_holidays_from = \"2025-01-01\"\nbank_holidays_through = \"2028-12-31\"\n{extra}"
        );
        let raw: RawHours = toml::from_str(&text).unwrap();
        Hours::compile(raw, Some(ms("2029-01-01T00:00:00Z")))
    }

    fn ms(s: &str) -> i64 {
        s.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn weekday_hours_in_london_time_with_bank_holidays() {
        let h = hours("bank_holidays = [\"2026-12-25\", \"2026-12-28\"]").unwrap();
        // Thursday 3 December 2026 (GMT): 07:59 out, 08:00 in, 15:59 in, 16:00 out.
        assert!(h.out_of_hours(ms("2026-12-03T07:59:00Z")));
        assert!(!h.out_of_hours(ms("2026-12-03T08:00:00Z")));
        assert!(!h.out_of_hours(ms("2026-12-03T15:59:59Z")));
        assert!(h.out_of_hours(ms("2026-12-03T16:00:00Z")));
        // Saturday and a bank holiday (Monday 28 December 2026, the substitute for Boxing Day).
        assert!(h.out_of_hours(ms("2026-12-05T10:00:00Z")));
        assert!(h.out_of_hours(ms("2026-12-28T10:00:00Z")));
        assert!(!h.out_of_hours(ms("2026-12-29T10:00:00Z")));
        // British Summer Time: 07:30 UTC on Wednesday 1 July 2026 is 08:30 in London.
        assert!(!h.out_of_hours(ms("2026-07-01T07:30:00Z")));
        assert!(h.out_of_hours(ms("2026-07-01T15:30:00Z")));
        // Two working days after Thursday 24 December 2026: Tuesday 29th, then Wednesday 30th.
        let after = h.working_days_after(ms("2026-12-24T10:00:00Z"), 2);
        assert_eq!(after, ms("2026-12-30T10:00:00Z"));
    }

    #[test]
    fn problems_name_the_key() {
        let why = |extra: &str| -> String {
            hours(extra)
                .unwrap_err()
                .into_iter()
                .map(|(_, _, m, _)| m)
                .collect::<Vec<_>>()
                .join("; ")
        };
        assert!(why("bank_holidays = [\"2029-01-01\"]").contains("after bank_holidays_through"));
        assert!(why("bank_holidays = [\"2026-12-25\", \"2026-12-25\"]").contains("listed twice"));
        assert!(why("bank_holidays = [\"25/12/2026\"]").contains("is not a date"));
        let raw: RawHours = toml::from_str(
            "time_zone = \"Europe/Lundun\"\ndays = [\"mon\", \"fry\"]\nopen = \"16:00\"\nclose = \"08:00\"\n\
             bank_holidays_source = \"\"\nbank_holidays_from = \"2025-01-01\"\nbank_holidays_through = \"2027-12-31\"",
        )
        .unwrap();
        let all: Vec<String> = Hours::compile(raw, Some(ms("2029-01-01T00:00:00Z")))
            .unwrap_err()
            .into_iter()
            .map(|(_, _, m, _)| m)
            .collect();
        let text = all.join("; ");
        for want in [
            "hours.time_zone `Europe/Lundun`",
            "hours.days: `fry`",
            "hours.close 08:00:00 is not after hours.open 16:00:00",
            "bank_holidays_source is empty",
            "listed through 2027-12-31 but the agreement is in force until 2028-12-31",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
    }
}
