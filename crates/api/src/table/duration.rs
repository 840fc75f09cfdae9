//! Human-readable ages: a port of apimachinery's `duration.HumanDuration` and the printers'
//! `translateTimestampSince`, over `jiff` timestamps.

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

/// Go's zero `time.Time` (0001-01-01T00:00:00Z); upstream treats it like an unset timestamp.
const GO_ZERO_SECONDS: i64 = -62_135_596_800;

/// Formats `d` exactly like `k8s.io/apimachinery/pkg/util/duration.HumanDuration`: at most two
/// units, `"0s"` for up to a second of clock skew, `"<invalid>"` for anything further negative.
pub fn human_duration(d: SignedDuration) -> String {
    // Go truncates toward zero (`int(d.Seconds())`), as does `as_secs`.
    let seconds = d.as_secs();
    if seconds < -1 {
        return "<invalid>".to_owned();
    }
    if seconds < 0 {
        return "0s".to_owned();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    if hours < 24 * 365 * 8 {
        return match days % 365 {
            0 => format!("{}y", days / 365),
            dy => format!("{}y{dy}d", days / 365),
        };
    }
    format!("{}y", days / 365)
}

/// Parses a `metav1.Time`/`MicroTime`; `None` stands for Go's zero time (absent, null,
/// unparsable or literally year 1), which every printer renders as `<unknown>`.
pub(super) fn timestamp(v: Option<&Value>) -> Option<Timestamp> {
    let ts: Timestamp = v?.as_str()?.parse().ok()?;
    (ts.as_second() != GO_ZERO_SECONDS).then_some(ts)
}

/// `translateTimestampSince`.
pub(super) fn since(ts: Option<Timestamp>, now: Timestamp) -> String {
    match ts {
        Some(ts) => human_duration(now.duration_since(ts)),
        None => "<unknown>".to_owned(),
    }
}

/// The AGE cell: time since `metadata.creationTimestamp`.
pub(super) fn age(obj: &Value, now: Timestamp) -> Value {
    let created = obj.get("metadata").and_then(|m| m.get("creationTimestamp"));
    Value::String(since(timestamp(created), now))
}
