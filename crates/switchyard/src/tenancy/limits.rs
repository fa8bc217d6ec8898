//! Limits and the arithmetic that enforces them, shared by the in-memory limiter and the
//! Redis one (whose Lua script does the same sums).
//!
//! - Requests and tokens per minute are GCRA (the generic cell rate algorithm): each
//!   scope keeps one number, its *theoretical arrival time* (TAT). A limit of `L` per
//!   minute spaces units `T = 60 s / L` apart; taking `n` units moves the TAT to
//!   `max(TAT, now) + n·T`, allowed while that stays within a minute of now. That is a
//!   bucket of `L` refilled continuously — a client may burst its whole minute, then
//!   goes at the sustained rate — with one number of state and no window edges.
//! - Tokens are reserved at admission (the estimate) and the TAT moved by the
//!   difference once the engine's `usage` is known.
//! - The token budget is a counter per fixed UTC period (hour, day, week, month).

use serde::{Deserialize, Serialize};

/// The window of the per-minute limits, in milliseconds.
pub const WINDOW_MS: f64 = 60_000.0;

/// The period a token budget covers, in UTC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Hour,
    Day,
    Week,
    #[default]
    Month,
}

impl Period {
    /// The start and end (milliseconds since the epoch) of the period holding `now_ms`.
    /// Weeks start on Monday; months are calendar months.
    pub fn window(self, now_ms: i64) -> (i64, i64) {
        const HOUR: i64 = 3_600_000;
        const DAY: i64 = 24 * HOUR;
        match self {
            Period::Hour => {
                let s = now_ms.div_euclid(HOUR) * HOUR;
                (s, s + HOUR)
            }
            Period::Day => {
                let s = now_ms.div_euclid(DAY) * DAY;
                (s, s + DAY)
            }
            Period::Week => {
                // 1970-01-01 was a Thursday: Monday is 3 days before it.
                let s = (now_ms + 3 * DAY).div_euclid(7 * DAY) * 7 * DAY - 3 * DAY;
                (s, s + 7 * DAY)
            }
            Period::Month => {
                use jiff::ToSpan;
                let utc = jiff::tz::TimeZone::UTC;
                let month = jiff::Timestamp::from_millisecond(now_ms)
                    .map(|t| t.to_zoned(utc.clone()).date().first_of_month());
                let ms = |d: jiff::civil::Date| {
                    d.to_zoned(utc.clone())
                        .map(|z| z.timestamp().as_millisecond())
                };
                match month {
                    Ok(first) => match (ms(first), first.checked_add(1.month()).map(ms)) {
                        (Ok(s), Ok(Ok(e))) => (s, e),
                        _ => (now_ms, now_ms + 31 * DAY),
                    },
                    Err(_) => (now_ms, now_ms + 31 * DAY),
                }
            }
        }
    }
}

/// The limits of a tenant, a key, or the whole gateway. Absent: no limit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens (prompt + completion) per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u64>,
    /// Tokens (prompt + completion) per `budget_period`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_budget: Option<u64>,
    /// The period of `token_budget` (default `month`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_period: Option<Period>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.rpm.is_none()
            && self.tpm.is_none()
            && self.max_concurrent.is_none()
            && self.token_budget.is_none()
    }

    /// The problem with these limits, if any (a zero: omit a limit instead).
    pub fn check(&self) -> Result<(), String> {
        for (name, v) in [
            ("rpm", self.rpm),
            ("tpm", self.tpm),
            ("max_concurrent", self.max_concurrent),
            ("token_budget", self.token_budget),
        ] {
            if v == Some(0) {
                return Err(format!(
                    "`limits.{name}` must be at least 1 (leave it out for no limit)"
                ));
            }
        }
        Ok(())
    }

    /// These limits shared among `replicas` gateways each enforcing its own share.
    pub fn divided(&self, replicas: u64) -> Limits {
        let share = |v: Option<u64>| v.map(|v| (v / replicas.max(1)).max(1));
        Limits {
            rpm: share(self.rpm),
            tpm: share(self.tpm),
            max_concurrent: share(self.max_concurrent),
            token_budget: share(self.token_budget),
            budget_period: self.budget_period,
        }
    }
}

/// Where a per-minute limit stands for the client: OpenAI's `x-ratelimit-*` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub remaining: u64,
    /// Until the limit is whole again.
    pub reset_ms: u64,
}

/// Takes `cost` units from a per-minute limit of `limit` whose TAT is `tat`: the new
/// TAT, or how long until the cost would fit (`None`: it never fits, being more than
/// the whole limit).
pub fn gcra_take(tat: f64, now: f64, limit: u64, cost: u64) -> Result<f64, Option<f64>> {
    if cost > limit {
        return Err(None);
    }
    let t = WINDOW_MS / limit as f64;
    let new = tat.max(now) + cost as f64 * t;
    if new - now <= WINDOW_MS + 1e-6 {
        Ok(new)
    } else {
        Err(Some(new - now - WINDOW_MS))
    }
}

/// The quota a limit of `limit` with TAT `tat` leaves at `now`.
pub fn gcra_quota(tat: f64, now: f64, limit: u64) -> Quota {
    let t = WINDOW_MS / limit as f64;
    let used = (tat - now).max(0.0);
    Quota {
        limit,
        remaining: ((WINDOW_MS - used) / t + 1e-9).floor().max(0.0) as u64,
        reset_ms: used.ceil() as u64,
    }
}

/// A duration as OpenAI writes `x-ratelimit-reset-*`: `0s`, `250ms`, `12s`, `1m30s`.
pub fn reset_text(ms: u64) -> String {
    if ms == 0 {
        "0s".into()
    } else if ms < 1000 {
        format!("{ms}ms")
    } else {
        let s = ms.div_ceil(1000);
        if s < 60 {
            format!("{s}s")
        } else {
            format!("{}m{}s", s / 60, s % 60)
        }
    }
}

/// The tighter of two quotas (fewer remaining; later reset among equals).
pub fn tighter(a: Option<Quota>, b: Quota) -> Quota {
    match a {
        Some(a)
            if (a.remaining, std::cmp::Reverse(a.reset_ms))
                < (b.remaining, std::cmp::Reverse(b.reset_ms)) =>
        {
            a
        }
        _ => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_a_minutes_burst_then_the_sustained_rate() {
        let (limit, mut tat, now) = (6u64, 0.0, 1_000_000.0);
        for _ in 0..6 {
            tat = gcra_take(tat, now, limit, 1).unwrap();
        }
        assert_eq!(gcra_quota(tat, now, limit).remaining, 0);
        // The seventh waits one interval (10 s).
        let wait = gcra_take(tat, now, limit, 1).unwrap_err().unwrap();
        assert!((wait - 10_000.0).abs() < 1e-6, "{wait}");
        let later = now + 10_000.0;
        tat = gcra_take(tat, later, limit, 1).unwrap();
        assert_eq!(gcra_quota(tat, later, limit).remaining, 0);
        // A minute later the limit is whole again.
        let q = gcra_quota(tat, later + WINDOW_MS, limit);
        assert_eq!((q.remaining, q.reset_ms), (6, 0));
        // A cost above the limit never fits.
        assert_eq!(gcra_take(0.0, now, limit, 7), Err(None));
    }

    #[test]
    fn token_costs_take_their_share_of_the_minute() {
        let now = 5_000.0;
        let tat = gcra_take(0.0, now, 1000, 400).unwrap();
        let q = gcra_quota(tat, now, 1000);
        assert_eq!((q.remaining, q.reset_ms), (600, 24_000));
        assert!(gcra_take(tat, now, 1000, 700).is_err());
        assert!(gcra_take(tat, now, 1000, 600).is_ok());
    }

    #[test]
    fn periods_are_utc_calendar_windows() {
        // 2026-12-02T13:45:00Z
        let t = 1_796_219_100_000;
        let hour = Period::Hour.window(t);
        assert_eq!(hour, (1_796_216_400_000, 1_796_220_000_000));
        let day = Period::Day.window(t);
        assert_eq!(day.0, 1_796_169_600_000);
        // Monday 2026-11-30.
        assert_eq!(Period::Week.window(t).0, 1_796_169_600_000 - 2 * 86_400_000);
        // 2026-12-01 to 2027-01-01.
        assert_eq!(
            Period::Month.window(t),
            (1_796_083_200_000, 1_798_761_600_000)
        );
    }

    #[test]
    fn reset_texts_read_like_openais() {
        assert_eq!(reset_text(0), "0s");
        assert_eq!(reset_text(250), "250ms");
        assert_eq!(reset_text(1_200), "2s");
        assert_eq!(reset_text(90_000), "1m30s");
    }

    #[test]
    fn limits_reject_zero_and_divide_among_replicas() {
        let l = Limits {
            rpm: Some(100),
            tpm: Some(3),
            ..Default::default()
        };
        assert!(l.check().is_ok());
        let d = l.divided(4);
        assert_eq!((d.rpm, d.tpm), (Some(25), Some(1)));
        let zero = Limits {
            max_concurrent: Some(0),
            ..Default::default()
        };
        assert!(zero.check().unwrap_err().contains("max_concurrent"));
    }
}
