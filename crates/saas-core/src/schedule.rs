//! Schedules written as offsets from a start, like `"3d,14d,30d"`: win-back outreach and
//! dunning retries.

use std::time::Duration;

/// Parses offsets like `"3d,14d,30d"` (units `d`, `h`, `m`, `s`), strictly increasing.
/// The longest offset a schedule may hold: ten years. Far beyond any dunning or
/// win-back plan, and far below what date arithmetic can add to a timestamp.
pub const MAX_OFFSET: Duration = Duration::from_secs(10 * 366 * 86_400);

/// A schedule of offsets as [`parse_offsets`] accepts them: at least one, strictly
/// increasing, none over ten years. Only parsing makes one, so holding one is proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offsets(Vec<Duration>);

impl Offsets {
    pub fn as_slice(&self) -> &[Duration] {
        &self.0
    }
}

impl std::str::FromStr for Offsets {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse_offsets(text).map(Offsets)
    }
}

pub fn parse_offsets(text: &str) -> Result<Vec<Duration>, String> {
    let mut steps = Vec::new();
    for part in text.split(',').map(str::trim) {
        let step = parse_duration(part)?;
        if steps.last().is_some_and(|last| *last >= step) {
            return Err("offsets must be strictly increasing".into());
        }
        steps.push(step);
    }
    if steps.is_empty() {
        return Err("at least one offset is needed".into());
    }
    Ok(steps)
}

/// Pauses, comma-separated (`5s,1m,5m,2h`), in any order; `ms` is a unit too.
pub fn parse_pauses(text: &str) -> Result<Vec<Duration>, String> {
    text.split(',').map(str::trim).map(parse_duration).collect()
}

/// One duration: a number and a unit (`d`, `h`, `m`, `s` or `ms`), at most ten years.
fn parse_duration(part: &str) -> Result<Duration, String> {
    let split = part
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{part:?} has no unit (d, h, m, s or ms)"))?;
    let (number, unit) = part.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{part:?} does not start with a number"))?;
    let millis = match unit {
        "d" => number.checked_mul(86_400_000),
        "h" => number.checked_mul(3_600_000),
        "m" => number.checked_mul(60_000),
        "s" => number.checked_mul(1_000),
        "ms" => Some(number),
        other => return Err(format!("unknown unit {other:?} in {part:?}")),
    }
    .ok_or_else(|| format!("{part:?} is too long"))?;
    let duration = Duration::from_millis(millis);
    if duration > MAX_OFFSET {
        return Err(format!("{part:?} is longer than ten years"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {

    #[test]
    fn offsets_past_ten_years_are_refused_not_left_to_overflow_later() {
        assert!(parse_offsets("3650d").is_ok());
        for text in ["3700d", "99999999h", "18446744073709551615s"] {
            assert!(parse_offsets(text).is_err(), "{text}");
        }
    }

    use super::*;

    #[test]
    fn offsets_parse_in_every_unit() {
        assert_eq!(
            parse_offsets("1s, 2m,3h,4d").unwrap(),
            [1, 120, 10_800, 345_600].map(Duration::from_secs).to_vec()
        );
    }

    #[test]
    fn pauses_take_any_order_and_milliseconds() {
        assert_eq!(
            parse_pauses("5s,100ms,1m,1m").unwrap(),
            [5_000, 100, 60_000, 60_000]
                .map(Duration::from_millis)
                .to_vec()
        );
        assert!(parse_pauses("5").is_err());
        assert!(parse_pauses("").is_err());
    }

    #[test]
    fn bad_offsets_are_refused() {
        for bad in [
            "",
            "3",
            "d",
            "3w",
            "5d,3d",
            "2s,2s",
            "99999999999999999999d",
        ] {
            assert!(parse_offsets(bad).is_err(), "{bad:?}");
        }
    }
}
