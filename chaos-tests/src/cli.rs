//! Helpers shared by the binaries' command lines.

use std::time::Duration;

/// Parses a duration: a number with an optional unit `ms`, `s` (the default), `m` or `h`,
/// e.g. `20`, `20s`, `500ms`, `2m`.
///
/// # Errors
///
/// A message naming the bad input.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 20s, 500ms, 2m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// Splits a comma-separated list, dropping empty items and spaces.
pub fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Logs to stderr, filtered by `RUST_LOG` (default `warn`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("20").expect("test value"), Duration::from_secs(20));
        assert_eq!(parse_duration("20s").expect("test value"), Duration::from_secs(20));
        assert_eq!(parse_duration("500ms").expect("test value"), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").expect("test value"), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").expect("test value"), Duration::from_secs(120));
        assert_eq!(parse_duration("0").expect("test value"), Duration::ZERO);
        for bad in ["", "s", "20x", "-1s", "1e9999"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lists_split_on_commas() {
        assert_eq!(split_list("a:1, b:2,,c:3 "), ["a:1", "b:2", "c:3"]);
        assert!(split_list("").is_empty());
    }
}
