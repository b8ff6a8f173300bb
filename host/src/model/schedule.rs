//! Operating windows: days of the week and local time ranges in an IANA time zone. A
//! delivery due outside every window waits for the next opening. Times are compared as local
//! wall-clock times, so "09:00–17:00 Europe/Warsaw" means that on every day, across DST
//! changes; a window start that falls into a DST gap opens at the first instant after it.

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use super::Millis;

/// When a webhook may send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// IANA time zone, e.g. `Europe/Warsaw`.
    pub time_zone: String,
    /// The windows; a delivery may be sent inside any of them.
    pub windows: Vec<Window>,
}

/// One window: on these days, from `from` to `to` local time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Days: `mon` … `sun`.
    pub days: Vec<String>,
    /// Opening, `HH:MM`.
    pub from: String,
    /// Closing, `HH:MM` (exclusive; `24:00` for the end of the day).
    pub to: String,
}

/// A checked schedule, ready to answer "when may this be sent?".
#[derive(Clone, Debug)]
pub struct CheckedSchedule {
    zone: TimeZone,
    /// Per window: days, from and to in minutes after midnight.
    windows: Vec<(Vec<Weekday>, u32, u32)>,
}

fn parse_day(day: &str) -> Option<Weekday> {
    Some(match day.to_ascii_lowercase().as_str() {
        "mon" | "monday" => Weekday::Monday,
        "tue" | "tuesday" => Weekday::Tuesday,
        "wed" | "wednesday" => Weekday::Wednesday,
        "thu" | "thursday" => Weekday::Thursday,
        "fri" | "friday" => Weekday::Friday,
        "sat" | "saturday" => Weekday::Saturday,
        "sun" | "sunday" => Weekday::Sunday,
        _ => return None,
    })
}

/// Minutes after midnight of `HH:MM` (`24:00` allowed when `end`).
fn parse_minutes(text: &str, end: bool) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    match (h, m) {
        (24, 0) if end => Some(24 * 60),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

impl Schedule {
    /// Checks the schedule.
    ///
    /// # Errors
    /// A `(field, message)` naming the problem: an unknown zone, no windows, a window with
    /// no days, an unknown day, a bad or empty time range, or two windows that overlap.
    pub fn check(&self) -> Result<CheckedSchedule, (String, String)> {
        let zone = TimeZone::get(&self.time_zone).map_err(|_| {
            (
                "schedule.time_zone".to_string(),
                format!(
                    "`{}` is not an IANA time zone (like Europe/Warsaw or UTC)",
                    self.time_zone
                ),
            )
        })?;
        if self.windows.is_empty() {
            return Err((
                "schedule.windows".into(),
                "list at least one window (leave the schedule out to send at any time)".into(),
            ));
        }
        let mut windows = Vec::with_capacity(self.windows.len());
        for (i, w) in self.windows.iter().enumerate() {
            let field = |name: &str| format!("schedule.windows[{i}].{name}");
            if w.days.is_empty() {
                return Err((field("days"), "list at least one day".into()));
            }
            let mut days = Vec::new();
            for day in &w.days {
                let d = parse_day(day).ok_or_else(|| {
                    (
                        field("days"),
                        format!("`{day}` is not a day; use mon, tue, wed, thu, fri, sat or sun"),
                    )
                })?;
                if !days.contains(&d) {
                    days.push(d);
                }
            }
            let from = parse_minutes(&w.from, false).ok_or_else(|| {
                (
                    field("from"),
                    format!("`{}` is not a time like 09:00", w.from),
                )
            })?;
            let to = parse_minutes(&w.to, true).ok_or_else(|| {
                (
                    field("to"),
                    format!("`{}` is not a time like 17:00 or 24:00", w.to),
                )
            })?;
            if to <= from {
                return Err((
                    field("to"),
                    format!(
                        "the window {}–{} is empty; `to` must be after `from` (split overnight windows in two)",
                        w.from, w.to
                    ),
                ));
            }
            windows.push((days, from, to));
        }
        for (i, (days_a, from_a, to_a)) in windows.iter().enumerate() {
            for (j, (days_b, from_b, to_b)) in windows.iter().enumerate().skip(i + 1) {
                let same_day = days_a.iter().any(|d| days_b.contains(d));
                if same_day && from_a < to_b && from_b < to_a {
                    return Err((
                        format!("schedule.windows[{j}]"),
                        format!("overlaps window {i} on a shared day; merge them"),
                    ));
                }
            }
        }
        Ok(CheckedSchedule { zone, windows })
    }
}

impl CheckedSchedule {
    /// `None` when `now` is inside a window; otherwise the next opening (the first instant
    /// at or after `now` inside a window).
    pub fn next_opening(&self, now: Millis) -> Option<Millis> {
        let ts = jiff::Timestamp::from_millisecond(now.as_i64()).ok()?;
        let local = ts.to_zoned(self.zone.clone());
        let minute = u32::from(local.hour() as u8) * 60 + u32::from(local.minute() as u8);
        let open_now = self.windows.iter().any(|(days, from, to)| {
            days.contains(&local.weekday()) && *from <= minute && minute < *to
        });
        if open_now {
            return None;
        }
        let mut best: Option<i64> = None;
        let mut date: Date = local.date();
        // Every window recurs weekly, so eight days always contain the next opening.
        for _ in 0..8 {
            for (days, from, _) in &self.windows {
                if !days.contains(&date.weekday()) {
                    continue;
                }
                let at = Time::new((from / 60) as i8, (from % 60) as i8, 0, 0).ok()?;
                let Ok(start) = date.to_datetime(at).to_zoned(self.zone.clone()) else {
                    continue;
                };
                let start = start.timestamp().as_millisecond();
                if start >= now.as_i64() && best.is_none_or(|b| start < b) {
                    best = Some(start);
                }
            }
            if best.is_some() {
                break;
            }
            date = date.tomorrow().ok()?;
        }
        best.map(Millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Millis {
        Millis(text.parse::<jiff::Timestamp>().unwrap().as_millisecond())
    }

    fn show(m: Option<Millis>) -> Option<String> {
        m.map(|m| m.to_string())
    }

    fn office(zone: &str) -> CheckedSchedule {
        Schedule {
            time_zone: zone.into(),
            windows: vec![Window {
                days: ["mon", "tue", "wed", "thu", "fri"]
                    .map(String::from)
                    .to_vec(),
                from: "09:00".into(),
                to: "17:00".into(),
            }],
        }
        .check()
        .unwrap()
    }

    #[test]
    fn inside_a_window_sends_now_and_outside_waits_for_the_next_opening() {
        let s = office("Europe/Warsaw");
        // Monday 2026-11-23, 10:00 in Warsaw (UTC+1).
        assert_eq!(s.next_opening(at("2026-11-23T09:00:00Z")), None);
        // 08:59:59 local: opens at 09:00 the same day.
        assert_eq!(
            show(s.next_opening(at("2026-11-23T07:59:59Z"))),
            Some("2026-11-23T08:00:00.000Z".into())
        );
        // 17:00 local is closed (the end is exclusive): Tuesday 09:00.
        assert_eq!(
            show(s.next_opening(at("2026-11-23T16:00:00Z"))),
            Some("2026-11-24T08:00:00.000Z".into())
        );
        // Friday evening: Monday morning.
        assert_eq!(
            show(s.next_opening(at("2026-11-27T18:30:00Z"))),
            Some("2026-11-30T08:00:00.000Z".into())
        );
    }

    #[test]
    fn windows_follow_local_time_across_dst_changes() {
        let s = office("Europe/Warsaw");
        // Friday 2026-03-27 after hours (UTC+1); Monday 30 March is in summer time (UTC+2),
        // so 09:00 local is 07:00Z.
        assert_eq!(
            show(s.next_opening(at("2026-03-27T17:00:00Z"))),
            Some("2026-03-30T07:00:00.000Z".into())
        );
        // Autumn: Friday 2026-10-23 (UTC+2) → Monday 26 October in winter time (UTC+1).
        assert_eq!(
            show(s.next_opening(at("2026-10-23T16:00:00Z"))),
            Some("2026-10-26T08:00:00.000Z".into())
        );
        // A window opening inside the spring-forward gap (02:30 does not exist on
        // 2026-03-29 in Warsaw) opens at the first instant after the gap: 03:30 local.
        let night = Schedule {
            time_zone: "Europe/Warsaw".into(),
            windows: vec![Window {
                days: vec!["sun".into()],
                from: "02:30".into(),
                to: "04:00".into(),
            }],
        }
        .check()
        .unwrap();
        assert_eq!(
            show(night.next_opening(at("2026-03-28T23:00:00Z"))),
            Some("2026-03-29T01:30:00.000Z".into())
        );
        // The repeated hour on fall-back night: 02:30 happens twice; the window is open at
        // the first.
        assert_eq!(night.next_opening(at("2026-10-25T00:45:00Z")), None);
    }

    #[test]
    fn bad_schedules_name_the_problem() {
        let window = |days: &[&str], from: &str, to: &str| Window {
            days: days.iter().map(|d| d.to_string()).collect(),
            from: from.into(),
            to: to.into(),
        };
        let check = |zone: &str, windows: Vec<Window>| {
            Schedule {
                time_zone: zone.into(),
                windows,
            }
            .check()
            .unwrap_err()
        };
        let (field, message) = check("Mars/Olympus", vec![window(&["mon"], "09:00", "17:00")]);
        assert_eq!(field, "schedule.time_zone");
        assert!(message.contains("Mars/Olympus"));
        assert_eq!(check("UTC", vec![]).0, "schedule.windows");
        assert_eq!(
            check("UTC", vec![window(&[], "09:00", "17:00")]).0,
            "schedule.windows[0].days"
        );
        assert!(check("UTC", vec![window(&["someday"], "09:00", "17:00")])
            .1
            .contains("`someday` is not a day"));
        assert_eq!(
            check("UTC", vec![window(&["mon"], "9", "17:00")]).0,
            "schedule.windows[0].from"
        );
        assert!(check("UTC", vec![window(&["mon"], "17:00", "09:00")])
            .1
            .contains("is empty"));
        assert!(check("UTC", vec![window(&["mon"], "09:00", "09:00")])
            .1
            .contains("is empty"));
        let (field, message) = check(
            "UTC",
            vec![
                window(&["mon", "tue"], "09:00", "12:00"),
                window(&["tue"], "11:00", "15:00"),
            ],
        );
        assert_eq!(field, "schedule.windows[1]");
        assert!(message.contains("overlaps window 0"));
        // Adjacent windows and whole days are fine.
        assert!(Schedule {
            time_zone: "UTC".into(),
            windows: vec![
                window(&["mon"], "00:00", "12:00"),
                window(&["mon"], "12:00", "24:00"),
            ],
        }
        .check()
        .is_ok());
    }
}
