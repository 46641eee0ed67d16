//! The log writer: lines are appended to a shared buffer, and one thread writes the buffer out every few
//! milliseconds in a single `write(2)`.
//!
//! A queue with a writer thread that wakes per line (tracing-appender's `NonBlocking`) cost a cached check
//! about a fifth of its CPU at load (the audit line of every allow): each line woke the thread, a futex
//! and a cross-CPU interrupt on a VM, then a `write(2)` of that one line. Here a line costs a lock and a
//! copy; the thread wakes on a timer, never for a line. Nothing is dropped: when the buffer holds
//! [`MAX_BUFFERED`] bytes (the output is stuck), a logging thread waits for it to be written.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a line may wait in memory before it is written.
const INTERVAL: Duration = Duration::from_millis(10);
/// Bytes buffered before loggers wait for the writer (about 16,000 audit lines).
const MAX_BUFFERED: usize = 4 << 20;

struct Shared {
    buf: Mutex<Vec<u8>>,
    /// Signalled after every write-out, for loggers waiting on a full buffer.
    room: Condvar,
    closing: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.buf.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Hands lines to the writer thread; a `MakeWriter` for tracing-subscriber's fmt layer, which writes each
/// formatted line with one `write_all`. Without a thread (it could not start), writes to stderr at once.
#[derive(Clone)]
pub struct BatchWriter(Option<Arc<Shared>>);

/// Stops the writer thread after writing out what is buffered, when dropped.
pub struct Guard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Log lines to stderr through the writer thread; if the thread cannot start, straight to stderr.
pub fn stderr() -> (BatchWriter, Option<Guard>) {
    match batched(std::io::stderr()) {
        Ok((w, g)) => (w, Some(g)),
        Err(e) => {
            eprintln!("cannot start the log writer thread ({e}): logging from each thread");
            (BatchWriter(None), None)
        }
    }
}

/// Starts the writer thread over `out`.
fn batched<W: Write + Send + 'static>(mut out: W) -> std::io::Result<(BatchWriter, Guard)> {
    let shared =
        Arc::new(Shared { buf: Mutex::new(Vec::new()), room: Condvar::new(), closing: AtomicBool::new(false) });
    let s = shared.clone();
    let thread = std::thread::Builder::new().name("portcullis-log".into()).spawn(move || {
        let mut spare = Vec::new();
        loop {
            let closing = s.closing.load(Ordering::Acquire);
            if !closing {
                std::thread::park_timeout(INTERVAL);
            }
            std::mem::swap(&mut *s.lock(), &mut spare);
            s.room.notify_all();
            if !spare.is_empty() {
                // Nowhere to report a failed write to: the log itself is the output.
                let _ = out.write_all(&spare).and_then(|()| out.flush());
                spare.clear();
            }
            if closing {
                return;
            }
        }
    })?;
    Ok((BatchWriter(Some(shared.clone())), Guard { shared, thread: Some(thread) }))
}

impl Write for BatchWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let Some(shared) = &self.0 else { return std::io::stderr().write(line) };
        let mut buf = shared.lock();
        while buf.len() >= MAX_BUFFERED && !shared.closing.load(Ordering::Acquire) {
            buf = shared.room.wait_timeout(buf, INTERVAL).unwrap_or_else(|e| e.into_inner()).0;
        }
        buf.extend_from_slice(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = BatchWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` the test can read back.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_written_in_order_within_the_interval_and_all_at_close() {
        let sink = Sink::default();
        let (mut w, guard) = batched(sink.clone()).unwrap();
        w.write_all(b"one\n").unwrap();
        std::thread::sleep(INTERVAL * 20);
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"one\n", "written by the timer, not by a wake-up");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut w = w.clone();
                std::thread::spawn(move || {
                    (0..1000).for_each(|i| w.write_all(format!("{t}:{i}\n").as_bytes()).unwrap())
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        drop(guard);
        let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 4001, "nothing lost at close");
        for t in 0..4 {
            let mine: Vec<_> = out.lines().filter(|l| l.starts_with(&format!("{t}:"))).collect();
            let want: Vec<_> = (0..1000).map(|i| format!("{t}:{i}")).collect();
            assert_eq!(mine, want, "each thread's lines whole and in order");
        }
    }

    #[test]
    fn a_full_buffer_makes_the_logger_wait_rather_than_drop() {
        /// Output that is stuck until the test lets it go.
        struct Stuck(Arc<(Mutex<bool>, Condvar)>, Sink);
        impl Write for Stuck {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let (open, cv) = &*self.0;
                let _g = cv.wait_while(open.lock().unwrap(), |open| !*open).unwrap();
                self.1.write(b)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let sink = Sink::default();
        let (w, guard) = batched(Stuck(gate.clone(), sink.clone())).unwrap();
        let line = vec![b'x'; 1 << 16];
        let writes = (MAX_BUFFERED / line.len()) * 3;
        let done = Arc::new(AtomicBool::new(false));
        let logger = {
            let (mut w, line, done) = (w.clone(), line.clone(), done.clone());
            std::thread::spawn(move || {
                (0..writes).for_each(|_| w.write_all(&line).unwrap());
                done.store(true, Ordering::Release);
            })
        };
        std::thread::sleep(INTERVAL * 20);
        assert!(!done.load(Ordering::Acquire), "the logger waits while the output is stuck");
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        logger.join().unwrap();
        drop(guard);
        assert_eq!(sink.0.lock().unwrap().len(), writes * line.len(), "every byte written once the output moved");
    }
}
