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

/// Most windows one schedule may list: a different set of hours on each day of the week,
/// several times over, is far below it.
pub const MAX_WINDOWS: usize = 64;
/// Most days one window may list (each day of the week once).
pub const MAX_WINDOW_DAYS: usize = 7;
/// Longest time zone name, in bytes (IANA names are at most about 30).
pub const MAX_TIME_ZONE_LEN: usize = 64;

/// A checked schedule, ready to answer "when may this be sent?". Kept with the webhook in
/// memory, so a delivery never checks the schedule again; answering costs at most one pass
/// over a few days' windows.
#[derive(Clone, Debug)]
pub struct CheckedSchedule {
    zone: TimeZone,
    /// Per weekday, Monday first: the open ranges in minutes after midnight, sorted by
    /// opening and never overlapping (at most [`MAX_WINDOWS`] a day).
    days: [Vec<(u32, u32)>; 7],
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
    /// Checks the schedule and compiles it for [`CheckedSchedule::next_opening`]. Bounded:
    /// the window count is checked before any window is read, and overlaps are found by
    /// sorting each day's windows.
    ///
    /// # Errors
    /// A `(field, message)` naming the problem: an unknown or overlong zone, no windows or
    /// more than [`MAX_WINDOWS`], a window with no days or more than [`MAX_WINDOW_DAYS`], an
    /// unknown day, a bad or empty time range, or two windows that overlap.
    pub fn check(&self) -> Result<CheckedSchedule, (String, String)> {
        if self.time_zone.len() > MAX_TIME_ZONE_LEN {
            return Err((
                "schedule.time_zone".into(),
                format!(
                    "is {} bytes; the limit is {MAX_TIME_ZONE_LEN} (an IANA name like Europe/Warsaw)",
                    self.time_zone.len()
                ),
            ));
        }
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
        if self.windows.len() > MAX_WINDOWS {
            return Err((
                "schedule.windows".into(),
                format!(
                    "has {} windows; the limit is {MAX_WINDOWS} (give a window several days \
                     instead of one window per day)",
                    self.windows.len()
                ),
            ));
        }
        // Per weekday: (from, to, window index).
        let mut by_day: [Vec<(u32, u32, usize)>; 7] = Default::default();
        for (i, w) in self.windows.iter().enumerate() {
            let (days, from, to) = check_window(i, w)?;
            for day in days {
                by_day[day_index(day)].push((from, to, i));
            }
        }
        let mut days: [Vec<(u32, u32)>; 7] = Default::default();
        for (ranges, compiled) in by_day.iter_mut().zip(&mut days) {
            ranges.sort_unstable();
            // The window reaching furthest so far: every later one must open at or after it.
            let mut reach: Option<(u32, usize)> = None;
            for &(from, to, i) in ranges.iter() {
                if let Some((until, j)) = reach {
                    if from < until {
                        let (first, second) = (i.min(j), i.max(j));
                        return Err((
                            format!("schedule.windows[{second}]"),
                            format!("overlaps window {first} on a shared day; merge them"),
                        ));
                    }
                }
                reach = Some((to, i));
                compiled.push((from, to));
            }
        }
        Ok(CheckedSchedule { zone, days })
    }
}

/// Checks window `i`: its days (deduplicated) and its range in minutes after midnight.
fn check_window(i: usize, w: &Window) -> Result<(Vec<Weekday>, u32, u32), (String, String)> {
    let field = |name: &str| format!("schedule.windows[{i}].{name}");
    if w.days.is_empty() {
        return Err((field("days"), "list at least one day".into()));
    }
    if w.days.len() > MAX_WINDOW_DAYS {
        return Err((
            field("days"),
            format!(
                "lists {} days; the limit is {MAX_WINDOW_DAYS} (each day of the week once)",
                w.days.len()
            ),
        ));
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
    Ok((days, from, to))
}

fn day_index(day: Weekday) -> usize {
    day.to_monday_zero_offset() as usize
}

impl CheckedSchedule {
    /// `None` when `now` is inside a window; otherwise the next opening (the first instant
    /// at or after `now` inside a window).
    pub fn next_opening(&self, now: Millis) -> Option<Millis> {
        let ts = jiff::Timestamp::from_millisecond(now.as_i64()).ok()?;
        let local = ts.to_zoned(self.zone.clone());
        let minute = u32::from(local.hour() as u8) * 60 + u32::from(local.minute() as u8);
        let today = &self.days[day_index(local.weekday())];
        // The last range opening at or before this minute is the only one that can hold it.
        let before = today.partition_point(|&(from, _)| from <= minute);
        if before > 0 && minute < today[before - 1].1 {
            return None;
        }
        let mut best: Option<i64> = None;
        let mut date: Date = local.date();
        // Every window recurs weekly, so eight days always contain the next opening. Each
        // day's openings are all looked at: one inside a DST gap moves past the gap, so the
        // earliest instant is not always the earliest wall-clock time.
        for _ in 0..8 {
            for (from, _) in &self.days[day_index(date.weekday())] {
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

    fn every_day(from: u32, to: u32) -> Window {
        let hhmm = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
        Window {
            days: ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
                .map(String::from)
                .to_vec(),
            from: hhmm(from),
            to: hhmm(to),
        }
    }

    /// The largest schedule allowed: [`MAX_WINDOWS`] windows on every day, 10 minutes each,
    /// one every 20 minutes from midnight.
    fn largest() -> Schedule {
        Schedule {
            time_zone: "Europe/Warsaw".into(),
            windows: (0..MAX_WINDOWS as u32)
                .map(|k| every_day(k * 20, k * 20 + 10))
                .collect(),
        }
    }

    #[test]
    fn a_schedule_of_a_window_per_minute_of_the_week_is_refused_by_its_count() {
        // The attack: 7 days × 1,440 one-minute windows, each its own window.
        let days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
        let windows: Vec<Window> = days
            .iter()
            .flat_map(|day| {
                (0..1440u32).map(move |m| Window {
                    days: vec![day.to_string()],
                    from: format!("{:02}:{:02}", m / 60, m % 60),
                    to: format!("{:02}:{:02}", (m + 1) / 60, (m + 1) % 60),
                })
            })
            .collect();
        assert_eq!(windows.len(), 10_080);
        let (field, message) = Schedule {
            time_zone: "UTC".into(),
            windows,
        }
        .check()
        .unwrap_err();
        assert_eq!(field, "schedule.windows");
        assert!(
            message.contains("has 10080 windows; the limit is 64"),
            "{message}"
        );
    }

    #[test]
    fn the_largest_schedule_allowed_checks_and_answers() {
        let s = largest().check().unwrap();
        // Monday 2026-11-23 in Warsaw (UTC+1): 00:00–00:10 is open, 00:10 waits for 00:20.
        assert_eq!(s.next_opening(at("2026-11-22T23:05:00Z")), None);
        assert_eq!(
            show(s.next_opening(at("2026-11-22T23:10:00Z"))),
            Some("2026-11-22T23:20:00.000Z".into())
        );
        // After the last window (21:00–21:10 local), the next day's first.
        assert_eq!(
            show(s.next_opening(at("2026-11-23T20:10:00Z"))),
            Some("2026-11-23T23:00:00.000Z".into())
        );
        // One window more is refused, naming the limit.
        let mut over = largest();
        over.windows.push(every_day(22 * 60, 23 * 60));
        let (field, message) = over.check().unwrap_err();
        assert_eq!(field, "schedule.windows");
        assert!(message.contains("the limit is 64"), "{message}");
    }

    #[test]
    fn a_window_lists_each_day_at_most_once() {
        let mut window = every_day(60, 120);
        window.days.push("mon".into());
        let (field, message) = Schedule {
            time_zone: "UTC".into(),
            windows: vec![window],
        }
        .check()
        .unwrap_err();
        assert_eq!(field, "schedule.windows[0].days");
        assert!(
            message.contains("lists 8 days; the limit is 7"),
            "{message}"
        );
        // A repeated day within the limit counts once.
        let repeated = Schedule {
            time_zone: "UTC".into(),
            windows: vec![Window {
                days: vec!["mon".into(), "monday".into(), "MON".into()],
                from: "09:00".into(),
                to: "10:00".into(),
            }],
        };
        assert!(repeated.check().is_ok());
        let (field, message) = Schedule {
            time_zone: "Europe/".repeat(20),
            windows: vec![every_day(60, 120)],
        }
        .check()
        .unwrap_err();
        assert_eq!(field, "schedule.time_zone");
        assert!(message.contains("the limit is 64"), "{message}");
    }

    #[test]
    fn overlaps_are_found_whatever_the_order_of_the_windows() {
        // The largest schedule, its last two windows replaced by a Sunday one listed first
        // and the 21:00–21:10 one listed last, which overlap.
        let mut s = largest();
        s.windows.truncate(MAX_WINDOWS - 2);
        s.windows.insert(
            0,
            Window {
                days: vec!["sun".into()],
                from: "21:05".into(),
                to: "23:00".into(),
            },
        );
        s.windows.push(every_day(21 * 60, 21 * 60 + 10));
        let (field, message) = s.check().unwrap_err();
        assert_eq!(field, "schedule.windows[63]");
        assert_eq!(message, "overlaps window 0 on a shared day; merge them");
        // A window inside another one overlaps too, even when one between them does not.
        let (field, message) = Schedule {
            time_zone: "UTC".into(),
            windows: vec![every_day(0, 600), every_day(700, 800), every_day(100, 200)],
        }
        .check()
        .unwrap_err();
        assert_eq!(
            (field.as_str(), message.as_str()),
            (
                "schedule.windows[2]",
                "overlaps window 0 on a shared day; merge them"
            )
        );
    }
}
