//! UTC calendar arithmetic on Unix seconds: which month a second falls in, where months begin,
//! which weekday a day is. Pure integer arithmetic (the days-from-civil algorithm), so the
//! simulator books hours to months without a time library and without a clock.

/// Seconds in a day.
pub const DAY: u64 = 86_400;

/// A UTC calendar month.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    pub year: i64,
    /// 1 to 12.
    pub month: u32,
}

impl Month {
    /// The month holding Unix second `seconds`.
    pub fn of(seconds: u64) -> Month {
        let (year, month, _) = civil_from_days((seconds / DAY) as i64);
        Month { year, month }
    }

    /// The Unix second this month starts at.
    pub fn start(self) -> u64 {
        (days_from_civil(self.year, self.month, 1) * DAY as i64).max(0) as u64
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month { year: self.year + 1, month: 1 }
        } else {
            Month { year: self.year, month: self.month + 1 }
        }
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// Days since 1970-01-01 of a civil date.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The civil date (year, month, day) of a day number since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Whether the day holding Unix second `seconds` is Monday to Friday (UTC).
pub fn is_weekday(seconds: u64) -> bool {
    // 1970-01-01 was a Thursday: day 0 is weekday index 3 with Monday = 0.
    let weekday = ((seconds / DAY) + 3) % 7;
    weekday < 5
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates_convert_both_ways() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        // 2025-01-01T00:00:00Z is 1735689600.
        assert_eq!(Month::of(1_735_689_600), Month { year: 2025, month: 1 });
        assert_eq!(Month::of(1_735_689_599), Month { year: 2024, month: 12 });
        assert_eq!(Month { year: 2025, month: 1 }.start(), 1_735_689_600);
        assert_eq!(Month { year: 2024, month: 12 }.next().to_string(), "2025-01");
        for day in (-1000..30_000).step_by(37) {
            let (year, month, date) = civil_from_days(day);
            assert_eq!(days_from_civil(year, month, date), day);
        }
    }

    #[test]
    fn weekdays_are_monday_to_friday() {
        // 2025-01-04 was a Saturday, 2025-01-06 a Monday.
        assert!(!is_weekday(days_from_civil(2025, 1, 4) as u64 * DAY));
        assert!(!is_weekday(days_from_civil(2025, 1, 5) as u64 * DAY + 3600));
        assert!(is_weekday(days_from_civil(2025, 1, 6) as u64 * DAY));
        assert!(is_weekday(days_from_civil(2025, 1, 10) as u64 * DAY + 86_399));
    }
}
