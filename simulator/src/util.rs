//! Small helpers: duration parsing, memory readings from `/proc`, progress bars.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// The CPUs this process may run on (2 if unknown).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Parses `200ms`, `30s`, `10m`, `1h`, `1h30m`, `1.5h` or a bare number of seconds into
/// milliseconds. Refuses zero, negative and malformed values with a message saying why.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if t.starts_with('-') {
        return Err(format!("{s:?}: a duration cannot be negative"));
    }
    let mut total = 0f64;
    let mut rest = t;
    if rest.chars().all(|c| c.is_ascii_digit() || c == '.') {
        let v: f64 = rest
            .parse()
            .map_err(|_| format!("{s:?} is not a duration (try 200ms, 30s, 10m, 1h)"))?;
        total = v * 1000.0;
        rest = "";
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return Err(format!("{s:?} is not a duration (try 200ms, 30s, 10m, 1h)"));
        }
        let v: f64 = rest[..num_end]
            .parse()
            .map_err(|_| format!("{s:?} is not a duration (try 200ms, 30s, 10m, 1h)"))?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let ms = match unit {
            "ms" => 1.0,
            "s" | "sec" => 1000.0,
            "m" | "min" => 60_000.0,
            "h" => 3_600_000.0,
            "d" => 86_400_000.0,
            _ => {
                return Err(format!(
                    "{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
                ));
            }
        };
        total += v * ms;
    }
    if !total.is_finite() || total > 365.0 * 86_400_000.0 {
        return Err(format!("{s:?} is too long (at most 365 days)"));
    }
    let ms = total.round() as u64;
    if ms == 0 {
        return Err(format!("{s:?}: a duration must be at least 1 ms"));
    }
    Ok(ms)
}

/// Formats milliseconds for humans.
pub fn fmt_ms(ms: u64) -> String {
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Memory of this process from `/proc/self/status`, in bytes.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Mem {
    /// Resident set now.
    pub rss: u64,
    /// Peak resident set ("high water mark").
    pub hwm: u64,
}

pub fn mem() -> Mem {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return Mem::default();
    };
    let field = |name: &str| -> u64 {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    Mem {
        rss: field("VmRSS:"),
        hwm: field("VmHWM:"),
    }
}

pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn bar(len: u64, msg: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{spinner} {msg:<28} [{elapsed_precise}] {wide_bar} {pos}/{len} ({eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_message(msg.to_owned());
    pb
}

/// A spinner on stderr for a step without a known length.
pub fn spinner(msg: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    let style = ProgressStyle::with_template("{spinner} {msg} [{elapsed_precise}]")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    pb.set_style(style);
    pb.set_message(msg.to_owned());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Formats a count with thousands separators.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("200ms"), Ok(200));
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("10m"), Ok(600_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("1.5h"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("45"), Ok(45_000));
        for bad in ["", "0", "0s", "-5m", "5x", "m", "1h-2m", "abc"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
        assert_eq!(fmt_ms(3_600_000), "1h");
        assert_eq!(fmt_ms(200), "200ms");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(12), "12");
    }
}
