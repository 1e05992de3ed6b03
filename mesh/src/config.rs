//! Configuration helpers shared by the binaries.

use std::time::Duration;

/// Parses `500ms`, `5s`, `2m`, `24h`, `90d`, or a bare number of seconds (the forms upstream's
/// environment variables use).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let (number, unit) = value
        .find(|c: char| !c.is_ascii_digit())
        .map_or((value, ""), |at| value.split_at(at));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{value:?} is not a duration like 500ms, 5s, 2m, 24h or 90d"))?;
    let seconds = |factor: u64| {
        n.checked_mul(factor)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{value:?} is too long"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3600),
        "d" => seconds(86_400),
        other => Err(format!(
            "{value:?}: unknown unit {other:?} (use ms, s, m, h or d)"
        )),
    }
}

/// Writes `duration` in the largest unit of [`parse_duration`] that keeps it whole (`10m`,
/// `90s`, `1500ms`), so it reads back the same.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if !millis.is_multiple_of(1000) {
        return format!("{millis}ms");
    }
    let seconds = duration.as_secs();
    [(86_400, "d"), (3600, "h"), (60, "m")]
        .iter()
        .find(|(factor, _)| seconds != 0 && seconds.is_multiple_of(*factor))
        .map_or_else(
            || format!("{seconds}s"),
            |(factor, unit)| format!("{}{unit}", seconds / factor),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert!(parse_duration("5w").is_err_and(|e| e.contains("unknown unit")));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn durations_written_back() {
        for text in ["1500ms", "0s", "90s", "10m", "2h", "3d"] {
            let duration = parse_duration(text).unwrap_or_default();
            assert_eq!(format_duration(duration), text);
        }
    }
}
