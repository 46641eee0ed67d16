//! JSON log lines. portcullis's own events outside any span (the audit line of every Check among them) are
//! written straight into the line, byte for byte what tracing-subscriber's `json().flatten_event(true)`
//! writes (the tests compare the two); every other event goes to that stock formatter.
//!
//! The stock formatter serialises through serde into an `io::Write` adaptor that checks UTF-8 on each of
//! its small writes, and formats the timestamp into a `String` of its own: under callgrind, the audit line
//! cost 22,700 instructions, 13.6 % of a cached Check. Two JSON crates were measured and not taken:
//! json-subscriber cost more (27,300), and tracing-microjson is GPL-3.0.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter of `log_format = "json"`.
pub struct Lines<T = Rfc3339> {
    stock: Format<Json, T>,
    timer: T,
}

impl Default for Lines<Rfc3339> {
    fn default() -> Self {
        Lines::with_timer(Rfc3339)
    }
}

/// The stock timer's timestamp (RFC 3339, UTC, microseconds) through humantime, which fills one buffer
/// where the stock timer makes seven padded `write!`s (2,400 instructions a line). Outside humantime's
/// range (before 1970, after 9999), where it would panic, the stock timer writes it.
#[derive(Clone, Copy, Default)]
pub struct Rfc3339;

impl FormatTime for Rfc3339 {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let now = std::time::SystemTime::now();
        match now.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) if d.as_secs() < 253_402_300_800 => write!(w, "{}", humantime::format_rfc3339_micros(now)),
            _ => SystemTime.format_time(w),
        }
    }
}

impl<T: FormatTime + Clone> Lines<T> {
    pub fn with_timer(timer: T) -> Self {
        let stock = tracing_subscriber::fmt::format().json().flatten_event(true).with_timer(timer.clone());
        Lines { stock, timer }
    }
}

impl<S, N, T> FormatEvent<S, N> for Lines<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    T: FormatTime,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        // In a span, the stock formatter adds `span` and `spans`; another crate's event may come from the
        // `log` crate, whose metadata the stock formatter normalises.
        let in_span = event.parent().and_then(|id| ctx.span(id)).or_else(|| ctx.lookup_current()).is_some();
        if in_span || !meta.target().starts_with("portcullis") {
            return self.stock.format_event(ctx, w, event);
        }
        w.write_str("{\"timestamp\":\"")?;
        self.timer.format_time(&mut w)?;
        write!(w, "\",\"level\":\"{}\"", meta.level())?;
        let mut fields = Fields { w: &mut w, result: Ok(()) };
        event.record(&mut fields);
        fields.result?;
        w.write_str(",\"target\":")?;
        string(&mut w, meta.target())?;
        w.write_str("}\n")
    }
}

/// Writes each field as `,"name":value`, as tracing-serde's map visitor has serde_json write it. Kinds it
/// does not name (i128, errors, bytes) reach `record_debug` through `Visit`'s defaults, as there.
struct Fields<'a, 'w> {
    w: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self.w.write_char(',').and_then(|()| string(self.w, field.name())).and_then(|()| {
                self.w.write_char(':')?;
                value(self.w)
            });
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |w| write!(w, "{value}"));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |w| write!(w, "{value}"));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |w| write!(w, "{value}"));
    }
    /// serde_json's own float formatting; `null` for NaN and the infinities, as serde_json writes them.
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.entry(field, |w| match serde_json::Number::from_f64(value) {
            Some(n) => write!(w, "{n}"),
            None => w.write_str("null"),
        });
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |w| string(w, value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

/// A JSON string.
fn string(w: &mut Writer<'_>, s: &str) -> fmt::Result {
    w.write_char('"')?;
    Escaped(w).write_str(s)?;
    w.write_char('"')
}

/// Writes what it is given as the inside of a JSON string, escaped as serde_json escapes it: `"` and `\`,
/// the short forms of backspace, form feed, newline, carriage return and tab, `\u00XX` for the other
/// control characters; everything else as it is.
struct Escaped<'a, W>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            let short = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\x08' => "\\b",
                b'\x0c' => "\\f",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&s[start..i])?;
            if short.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(short)?;
            }
            start = i + 1;
        }
        self.0.write_str(&s[start..])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::prelude::*;

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    #[derive(Clone)]
    struct Fixed;

    impl FormatTime for Fixed {
        fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
            w.write_str("2026-12-07T17:07:19.485098Z")
        }
    }

    /// What `events` logs, through these lines (true) or the stock formatter (false).
    fn lines(ours: bool, events: fn()) -> String {
        let buf = Buf::default();
        let layer = tracing_subscriber::fmt::layer().with_writer(buf.clone()).json().flatten_event(true);
        let subscriber: Box<dyn Subscriber + Send + Sync> = if ours {
            Box::new(tracing_subscriber::registry().with(layer.event_format(Lines::with_timer(Fixed))))
        } else {
            Box::new(tracing_subscriber::registry().with(layer.with_timer(Fixed)))
        };
        tracing::subscriber::with_default(subscriber, events);
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn timestamps_are_rfc3339_utc_microseconds_as_the_stock_timer_writes_them() {
        let (mut ours, mut stock) = (String::new(), String::new());
        Rfc3339.format_time(&mut Writer::new(&mut ours)).unwrap();
        SystemTime.format_time(&mut Writer::new(&mut stock)).unwrap();
        assert_eq!(ours.len(), "2026-12-07T17:07:19.485098Z".len(), "{ours}");
        assert_eq!(ours.len(), stock.len(), "{ours} {stock}");
        assert!(ours.ends_with('Z') && ours.as_bytes()[10] == b'T' && ours.as_bytes()[19] == b'.', "{ours}");
        let parsed = humantime::parse_rfc3339(&ours).unwrap();
        let age = std::time::SystemTime::now().duration_since(parsed).unwrap();
        assert!(age < std::time::Duration::from_secs(5), "{ours} is not now");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("refused: \"{0}\"")]
    struct Refused(&'static str);

    #[test]
    fn every_line_is_the_stock_formatters_byte_for_byte() {
        let events = || {
            // The audit line's own shape.
            tracing::info!(
                target: "portcullis::audit",
                request_id = "req-1",
                user = "al\"ice\\",
                provider = "corp",
                method = %"GET",
                path = "/a\nb\tc\u{1}\u{7f}é\u{8}\u{c}\r",
                decision = "allow",
                reason = "ok",
                dry_run = false,
                latency_ms = 190.163176,
                "decision"
            );
            let e = Refused("x");
            tracing::warn!(
                n = 42u64,
                neg = -7i64,
                big = 1u128 << 100,
                whole = 1.0,
                nan = f64::NAN,
                tiny = 1e-7,
                huge = 1e21,
                some = ?Some("q\"uote"),
                error = &e as &(dyn std::error::Error + 'static),
                "a {} message with \"quotes\"", "formatted"
            );
            tracing::error!("just a message");
            tracing::info!(target: "h2::codec", frame = 3, "another crate's event");
            let span = tracing::info_span!("m2m_acquire", provider = "corp");
            let _in = span.enter();
            tracing::info!(expires_in = 3600, "in a span");
        };
        let (ours, stock) = (lines(true, events), lines(false, events));
        assert_eq!(ours.lines().count(), 5, "{ours}");
        for (a, b) in ours.lines().zip(stock.lines()) {
            assert_eq!(a, b);
            serde_json::from_str::<serde_json::Value>(a).unwrap_or_else(|e| panic!("{e}: {a}"));
        }
        assert_eq!(ours, stock);
    }
}
