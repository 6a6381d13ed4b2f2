//! Sizes, durations and ages as people read them.

use kvmotion_api::migration::MigrationProgress;

/// Bytes in binary units: `512 B`, `1.5 KiB`, `300.0 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = 0;
    // Compare the value as printed: 1,048,575 B is "1.0 MiB", not "1024.0 KiB".
    while (value * 10.0).round() / 10.0 >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A duration given in milliseconds: `45 ms`, `3.2 s`, `2m05s`, `1h02m`.
pub fn millis(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{}.{} s", ms / 1000, ms % 1000 / 100),
        _ => seconds(ms / 1000),
    }
}

/// A duration given in seconds: `7s`, `2m05s`, `1h02m`.
pub fn seconds(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// Seconds until the transfer ends: the agent's estimate, else what is
/// left at the current rate.
pub fn eta_seconds(p: &MigrationProgress) -> Option<u64> {
    p.eta_seconds.or_else(|| {
        (p.throughput_bytes_per_second > 0).then(|| {
            p.data_remaining_bytes
                .div_ceil(p.throughput_bytes_per_second)
        })
    })
}

/// The age of an object `secs` old, spelled like kubectl's AGE column.
pub fn age(secs: i64) -> String {
    // kubectl tolerates a second of clock skew as "now".
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    let (y, dy) = (d / 365, d % 365);
    let unit_pair = |big: i64, bu: &str, small: i64, su: &str| {
        if small == 0 {
            format!("{big}{bu}")
        } else {
            format!("{big}{bu}{small}{su}")
        }
    };
    match s {
        s if s < 120 => format!("{s}s"),
        _ if m < 10 => unit_pair(m, "m", s % 60, "s"),
        _ if m < 180 => format!("{m}m"),
        _ if h < 8 => unit_pair(h, "h", m % 60, "m"),
        _ if h < 48 => format!("{h}h"),
        _ if h < 24 * 8 => unit_pair(d, "d", h % 24, "h"),
        _ if d < 365 * 2 => format!("{d}d"),
        _ if d < 365 * 8 => unit_pair(y, "y", dy, "d"),
        _ => format!("{y}y"),
    }
}

/// Whole seconds from `then` to `now`.
pub fn secs_between(then: jiff::Timestamp, now: jiff::Timestamp) -> i64 {
    now.as_second() - then.as_second()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_use_binary_units() {
        let cases = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            ((1 << 20) - 1, "1.0 MiB"),
            ((1 << 20) - 60, "1023.9 KiB"),
            (300 << 20, "300.0 MiB"),
            (5 << 30, "5.0 GiB"),
            (u64::MAX, "16384.0 PiB"),
        ];
        for (n, want) in cases {
            assert_eq!(bytes(n), want, "{n}");
        }
    }

    #[test]
    fn durations_pick_their_unit() {
        let ms = [
            (0, "0 ms"),
            (45, "45 ms"),
            (999, "999 ms"),
            (1_000, "1.0 s"),
            (3_250, "3.2 s"),
            (59_999, "59.9 s"),
            (60_000, "1m00s"),
            (125_000, "2m05s"),
            (3_720_000, "1h02m"),
        ];
        for (n, want) in ms {
            assert_eq!(millis(n), want, "{n} ms");
        }
        let secs = [(7, "7s"), (59, "59s"), (65, "1m05s"), (7200, "2h00m")];
        for (n, want) in secs {
            assert_eq!(seconds(n), want, "{n} s");
        }
    }

    #[test]
    fn ages_read_like_kubectl() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (125, "2m5s"),
            (600, "10m"),
            (179 * 60, "179m"),
            (3 * 3600 + 60, "3h1m"),
            (8 * 3600, "8h"),
            (47 * 3600, "47h"),
            (48 * 3600, "2d"),
            (50 * 3600, "2d2h"),
            (10 * 86_400, "10d"),
            (800 * 86_400, "2y70d"),
            (3000 * 86_400, "8y"),
        ];
        for (s, want) in cases {
            assert_eq!(age(s), want, "{s} s");
        }
    }

    #[test]
    fn the_eta_is_the_agents_else_remaining_over_throughput() {
        let p = |eta, remaining, rate| MigrationProgress {
            eta_seconds: eta,
            data_remaining_bytes: remaining,
            throughput_bytes_per_second: rate,
            ..Default::default()
        };
        let cases = [
            (p(Some(9), 100, 10), Some(9)),
            (p(None, 100, 10), Some(10)),
            (p(None, 101, 10), Some(11)),
            (p(None, 0, 10), Some(0)),
            (p(None, 100, 0), None),
        ];
        for (progress, want) in cases {
            assert_eq!(eta_seconds(&progress), want, "{progress:?}");
        }
    }
}
