//! Retention: how long the agreement keeps an event type, and when an epoch of a month expires.

/// How long events of a type are kept: whole months or days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// A number of days.
    Days(u32),
    /// A number of calendar months.
    Months(u32),
}

impl Retention {
    /// Parse `<n>d`, `<n>w`, `<n>m` or `<n>y`.
    pub fn parse(s: &str) -> Option<Self> {
        let (n, unit) = s.split_at(s.len().checked_sub(1)?);
        let n: u32 = n.parse().ok().filter(|n| *n > 0)?;
        match unit {
            "d" => Some(Retention::Days(n)),
            "w" => Some(Retention::Days(n.checked_mul(7)?)),
            "m" => Some(Retention::Months(n)),
            "y" => Some(Retention::Months(n.checked_mul(12)?)),
            _ => None,
        }
    }

    /// The retention class this names, in the agreement's own notation: "90d", "18m", "7y".
    pub fn class(self) -> String {
        match self {
            Retention::Days(d) => format!("{d}d"),
            Retention::Months(m) if m % 12 == 0 => format!("{}y", m / 12),
            Retention::Months(m) => format!("{m}m"),
        }
    }

    /// When sections of an epoch of `month` ("YYYY-MM", UTC) kept for this retention expire
    /// (Unix ms): the retention counted from the end of the month, the last moment one of its
    /// sections can have been recorded. None when `month` is not a month.
    pub fn expires(self, month: &str) -> Option<i64> {
        let (year, m) = month.split_once('-')?;
        let (year, m): (i16, i8) = (year.parse().ok()?, m.parse().ok()?);
        let start = jiff::civil::Date::new(year, m, 1).ok()?;
        let end = start.checked_add(jiff::Span::new().months(1)).ok()?;
        let expires = match self {
            Retention::Days(d) => end.checked_add(jiff::Span::new().days(i64::from(d))).ok()?,
            Retention::Months(n) => end.checked_add(jiff::Span::new().months(i64::from(n))).ok()?,
        };
        expires
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()
            .map(|z| z.timestamp().as_millisecond())
    }

    /// An upper bound in days (a month counted as 31 days), for broker max-age settings.
    pub fn max_days(self) -> u64 {
        match self {
            Retention::Days(d) => u64::from(d),
            Retention::Months(m) => u64::from(m) * 31,
        }
    }
}

impl std::fmt::Display for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Retention::Days(d) => write!(f, "{d} days"),
            Retention::Months(m) if m % 12 == 0 => write!(f, "{} years", m / 12),
            Retention::Months(m) => write!(f, "{m} months"),
        }
    }
}
