//! One child process as the tests and the bench run them: its output read on threads as it
//! comes (so it never blocks on a full pipe), waits with deadlines for a line or a condition, and
//! the process killed and reaped when the handle is dropped, also when a test fails half-way.
//!
//! ```no_run
//! use std::process::Command;
//! use std::time::Duration;
//! use thingsbus_tests::process::Process;
//!
//! let mut echo = Process::spawn(Command::new("sh").args(["-c", "echo ready; sleep 5"]));
//! assert_eq!(echo.line(Duration::from_secs(10)).as_deref(), Some("ready"));
//! echo.kill();
//! ```

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::DEADLINE;

/// What becomes of one of the child's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Read line by line into [`Lines`], for waiting on and for failure messages.
    Capture,
    /// Shared with this process (the child's lines show in the test's or the bench's output).
    Inherit,
    /// Thrown away.
    Discard,
}

impl Stream {
    fn stdio(self) -> Stdio {
        match self {
            Stream::Capture => Stdio::piped(),
            Stream::Inherit => Stdio::inherit(),
            Stream::Discard => Stdio::null(),
        }
    }
}

/// How to start a [`Process`]: by default stdin is closed and both outputs are captured.
#[must_use = "a Spawn does nothing until started"]
pub struct Spawn<'a> {
    command: &'a mut Command,
    name: Option<String>,
    stdin: bool,
    stdout: Stream,
    stderr: Stream,
}

impl Spawn<'_> {
    /// A name for messages (the program's file name unless set).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// Keeps a pipe to the child's stdin open for [`Process::write_line`]; the child sees end of
    /// file at [`Process::close_stdin`] or when the handle is dropped.
    pub fn stdin_piped(mut self) -> Self {
        self.stdin = true;
        self
    }

    /// What becomes of stdout.
    pub fn stdout(mut self, stream: Stream) -> Self {
        self.stdout = stream;
        self
    }

    /// What becomes of stderr.
    pub fn stderr(mut self, stream: Stream) -> Self {
        self.stderr = stream;
        self
    }

    /// Starts the process.
    ///
    /// # Errors
    /// When the program cannot be started (not found, not executable).
    pub fn try_start(self) -> std::io::Result<Process> {
        let name = self.name.unwrap_or_else(|| {
            let program = std::path::Path::new(self.command.get_program());
            program
                .file_name()
                .unwrap_or(program.as_os_str())
                .to_string_lossy()
                .into_owned()
        });
        let mut child = self
            .command
            .stdin(if self.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(self.stdout.stdio())
            .stderr(self.stderr.stdio())
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot start {name}: {e}")))?;
        let mut readers = Vec::new();
        let stdout = Arc::new(Lines::default());
        match child.stdout.take() {
            Some(pipe) => readers.push(stdout.read_from(pipe)),
            None => stdout.close(),
        }
        let stderr = Arc::new(Lines::default());
        match child.stderr.take() {
            Some(pipe) => readers.push(stderr.read_from(pipe)),
            None => stderr.close(),
        }
        Ok(Process {
            stdin: child.stdin.take(),
            child,
            name,
            stdout,
            stderr,
            readers,
        })
    }

    /// Starts the process; panics, naming it, when it cannot be started.
    pub fn start(self) -> Process {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A running child process, killed and reaped on drop.
pub struct Process {
    child: std::process::Child,
    name: String,
    stdin: Option<ChildStdin>,
    stdout: Arc<Lines>,
    stderr: Arc<Lines>,
    readers: Vec<JoinHandle<()>>,
}

impl Process {
    /// How to start `command`, to adjust before [`Spawn::start`].
    pub fn build(command: &mut Command) -> Spawn<'_> {
        Spawn {
            command,
            name: None,
            stdin: false,
            stdout: Stream::Capture,
            stderr: Stream::Capture,
        }
    }

    /// Starts `command` with stdin closed and both outputs captured; panics when it cannot be
    /// started.
    pub fn spawn(command: &mut Command) -> Process {
        Process::build(command).start()
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The name messages give it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The captured stdout (empty and ended when stdout is not captured).
    pub fn out(&self) -> &Lines {
        &self.stdout
    }

    /// The captured stderr (empty and ended when stderr is not captured).
    pub fn err(&self) -> &Lines {
        &self.stderr
    }

    /// The next stdout line not read yet, within `timeout`.
    pub fn line(&self, timeout: Duration) -> Option<String> {
        self.stdout.next(timeout)
    }

    /// The first unread stdout line for which `pred` holds, within [`DEADLINE`]; panics naming
    /// `what`, with the process's stderr, when none comes. Lines that do not match stay unread.
    pub fn expect_line(&self, what: &str, pred: impl FnMut(&str) -> bool) -> String {
        self.expect_on(&self.stdout, "stdout", what, pred)
    }

    /// Like [`Process::expect_line`], on stderr.
    pub fn expect_stderr_line(&self, what: &str, pred: impl FnMut(&str) -> bool) -> String {
        self.expect_on(&self.stderr, "stderr", what, pred)
    }

    fn expect_on(
        &self,
        lines: &Lines,
        stream: &str,
        what: &str,
        pred: impl FnMut(&str) -> bool,
    ) -> String {
        lines.take(DEADLINE, pred).unwrap_or_else(|| {
            let why = if lines.ended() {
                format!("its {stream} ended")
            } else {
                format!("none within {DEADLINE:?}")
            };
            panic!("{} printed no {what} ({why}); {}", self.name, self.report())
        })
    }

    /// Everything stderr held so far.
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// Waits, at most [`DEADLINE`], until stderr contains `needle`, and returns all of it.
    pub fn wait_stderr(&self, needle: &str) -> String {
        if !self
            .stderr
            .wait_until(DEADLINE, |lines| lines_contain(lines, needle))
        {
            panic!(
                "{} never wrote {needle:?} on stderr within {DEADLINE:?}; {}",
                self.name,
                self.report()
            );
        }
        self.stderr()
    }

    /// The stdout lines not read yet, each ending in a newline, once stdout has ended (waiting
    /// at most 2 s for that: call it after the process has exited).
    pub fn all_stdout(&self) -> String {
        self.stdout.wait_until(Duration::from_secs(2), |_| false);
        self.stdout.drain().into_iter().map(|l| l + "\n").collect()
    }

    /// Once the process has exited: waits until the reader threads have read everything it wrote.
    pub fn finish_output(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// Writes `line` and a newline to the child's stdin.
    ///
    /// # Errors
    /// When stdin was not piped ([`Spawn::stdin_piped`]) or is closed, or the child has gone.
    pub fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        let stdin = self.stdin.as_mut().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "stdin is not open")
        })?;
        writeln!(stdin, "{line}")?;
        stdin.flush()
    }

    /// Closes stdin: the child reads end of file.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Sends signal `name` (`TERM`, `INT`, or a number) through `kill(1)`, which keeps the
    /// harness free of `unsafe`. Panics when `kill` fails.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.id().to_string())
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{name} {} failed", self.name);
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The exit status, waiting at most `timeout` for it.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(5)),
                _ => return None,
            }
        }
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until something accepts TCP connections on 127.0.0.1:`port`, at most `timeout`.
    ///
    /// # Errors
    /// When the process exits first or the time is up; the message names the process and holds
    /// its captured stderr.
    pub fn wait_listening(&mut self, port: u16, timeout: Duration) -> Result<(), String> {
        let end = Instant::now() + timeout;
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited ({status}) before listening on port {port}; {}",
                    self.name,
                    self.report()
                ));
            }
            if Instant::now() >= end {
                return Err(format!(
                    "{} did not listen on port {port} within {timeout:?}; {}",
                    self.name,
                    self.report()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// CPU seconds the process has used so far (user and system), from `/proc`.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds_of_stat(&std::fs::read_to_string(self.proc_file("stat")).ok()?)
    }

    /// Resident memory in KiB, from `/proc`.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib_of_status(&std::fs::read_to_string(self.proc_file("status")).ok()?)
    }

    fn proc_file(&self, name: &str) -> String {
        format!("/proc/{}/{name}", self.id())
    }

    /// What a failure message tells of the process: its captured stderr, after a moment for the
    /// reader to take in the last of it when the process has just exited.
    fn report(&self) -> String {
        self.stderr.wait_until(Duration::from_secs(1), |_| false);
        format!("its stderr:\n{}", self.stderr())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The lines of one captured stream, in order, as the reader thread takes them in. Lines are
/// kept for [`Lines::text`] after they have been read with [`Lines::next`] or [`Lines::take`].
#[derive(Default)]
pub struct Lines {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    all: Vec<String>,
    /// Indices into `all` of the lines not taken yet.
    unread: VecDeque<usize>,
    ended: bool,
}

impl Lines {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, line: String) {
        let mut s = self.lock();
        let i = s.all.len();
        s.all.push(line);
        s.unread.push_back(i);
        self.changed.notify_all();
    }

    fn close(&self) {
        self.lock().ended = true;
        self.changed.notify_all();
    }

    /// Reads `pipe` on a thread of its own until it ends. Bytes that are not UTF-8 are replaced,
    /// not a reason to stop reading (a child blocked on a full pipe would hang the test).
    fn read_from(self: &Arc<Self>, pipe: impl Read + Send + 'static) -> JoinHandle<()> {
        let lines = Arc::clone(self);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
                        let line = line.strip_suffix(b"\r").unwrap_or(line);
                        lines.push(String::from_utf8_lossy(line).into_owned());
                    }
                }
            }
            lines.close();
        })
    }

    /// The next line not read yet, within `timeout`; `None` when the time is up or the stream
    /// has ended with nothing left.
    pub fn next(&self, timeout: Duration) -> Option<String> {
        self.take(timeout, |_| true)
    }

    /// The first unread line for which `pred` holds, within `timeout`; the lines before it stay
    /// unread. `None` when the time is up or the stream has ended without one.
    pub fn take(&self, timeout: Duration, mut pred: impl FnMut(&str) -> bool) -> Option<String> {
        self.wait(timeout, |s| {
            let p = s.unread.iter().position(|&i| pred(&s.all[i]))?;
            let i = s.unread.remove(p)?;
            Some(s.all[i].clone())
        })
    }

    /// Waits at most `timeout` until `cond` holds of all the lines so far (read or not).
    /// Returns whether it held; false at once when the stream ended without it.
    pub fn wait_until(&self, timeout: Duration, mut cond: impl FnMut(&[String]) -> bool) -> bool {
        self.wait(timeout, |s| cond(&s.all).then_some(())).is_some()
    }

    /// Tries `f` on the state now and at every change, until it gives something, the stream
    /// ends or `timeout` is up.
    fn wait<T>(&self, timeout: Duration, mut f: impl FnMut(&mut State) -> Option<T>) -> Option<T> {
        let end = Instant::now() + timeout;
        let mut s = self.lock();
        loop {
            if let Some(found) = f(&mut s) {
                return Some(found);
            }
            let left = end.saturating_duration_since(Instant::now());
            if s.ended || left.is_zero() {
                return None;
            }
            s = self
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The unread lines, now, marking them read.
    pub fn drain(&self) -> Vec<String> {
        let mut s = self.lock();
        let unread: Vec<usize> = s.unread.drain(..).collect();
        unread.into_iter().map(|i| s.all[i].clone()).collect()
    }

    /// Every line so far, read or not.
    pub fn all(&self) -> Vec<String> {
        self.lock().all.clone()
    }

    /// Every line so far, each ending in a newline.
    pub fn text(&self) -> String {
        self.lock().all.iter().map(|l| format!("{l}\n")).collect()
    }

    /// True once the stream has ended (the child closed it, or it was not captured).
    pub fn ended(&self) -> bool {
        self.lock().ended
    }
}

/// `program`, under `taskset -c CPUS` (on those CPUs only) when `cpus` is given.
pub fn on_cpus(program: impl AsRef<std::ffi::OsStr>, cpus: Option<&str>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

fn lines_contain(lines: &[String], needle: &str) -> bool {
    if needle.contains('\n') {
        lines.join("\n").contains(needle)
    } else {
        lines.iter().any(|l| l.contains(needle))
    }
}

/// Ticks per second of the CPU times in `/proc/PID/stat` (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// User plus system CPU seconds from the text of `/proc/PID/stat`.
fn cpu_seconds_of_stat(stat: &str) -> Option<f64> {
    // The command name, in parentheses, may hold spaces and parentheses: count from the last
    // `)`. After it come state (field 3) ... utime (14) and stime (15).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// `VmRSS` in KiB from the text of `/proc/PID/status`.
fn rss_kib_of_status(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_millis(100);

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn lines_come_in_order_and_end_with_the_stream() {
        let mut p = Process::spawn(&mut sh("echo one; echo two"));
        assert_eq!(p.line(DEADLINE).as_deref(), Some("one"));
        assert_eq!(p.line(DEADLINE).as_deref(), Some("two"));
        assert_eq!(p.line(DEADLINE), None, "ended: no wait for the deadline");
        assert!(p.out().ended());
        assert!(p.wait(DEADLINE).is_some_and(|s| s.success()));
    }

    #[test]
    fn take_leaves_the_lines_before_the_match_unread() {
        let p = Process::spawn(&mut sh("echo a; echo b; echo c"));
        assert_eq!(p.expect_line("b", |l| l == "b"), "b");
        assert!(p.out().wait_until(DEADLINE, |all| all.len() == 3));
        assert_eq!(p.line(DEADLINE).as_deref(), Some("a"));
        assert_eq!(p.out().drain(), ["c"]);
        assert_eq!(p.out().all(), ["a", "b", "c"], "read lines are kept");
    }

    #[test]
    fn a_wait_for_a_line_that_does_not_come_ends_at_its_timeout() {
        let p = Process::spawn(&mut sh("echo x; sleep 30"));
        assert_eq!(p.out().take(SHORT, |l| l == "y"), None);
        assert!(!p.out().ended());
        assert_eq!(p.line(SHORT).as_deref(), Some("x"));
    }

    #[test]
    #[should_panic(expected = "printed no the word (its stdout ended)")]
    fn expect_line_names_the_process_and_why() {
        let p = Process::build(&mut sh("echo nope; echo oops >&2"))
            .name("the shell")
            .start();
        p.expect_line("the word", |l| l == "word");
    }

    #[test]
    fn stderr_is_kept_whole_and_waited_on() {
        let mut p = Process::spawn(&mut sh("echo first >&2; sleep 0.1; printf 'second' >&2"));
        let all = p.wait_stderr("second");
        assert_eq!(all, "first\nsecond\n");
        assert!(p.wait(DEADLINE).is_some());
        p.finish_output();
        assert_eq!(p.stderr(), "first\nsecond\n");
        assert_eq!(p.all_stdout(), "");
    }

    #[test]
    fn stderr_lines_can_be_taken_like_stdout_lines() {
        let p = Process::spawn(&mut sh("echo '{\"up\": 1}' >&2; echo '{\"up\": 2}' >&2"));
        let line = p.expect_stderr_line("the second", |l| l.contains('2'));
        assert_eq!(line, r#"{"up": 2}"#);
        assert!(p.err().wait_until(DEADLINE, |l| l.len() == 2));
    }

    #[test]
    fn bytes_that_are_not_utf8_do_not_stop_the_reading() {
        let p = Process::spawn(&mut sh(r"printf 'a\377b\r\nafter\n'"));
        assert_eq!(p.line(DEADLINE).as_deref(), Some("a\u{fffd}b"));
        assert_eq!(p.line(DEADLINE).as_deref(), Some("after"));
    }

    #[test]
    fn all_stdout_gives_what_was_not_read_once_it_exits() {
        let mut p = Process::spawn(&mut sh("echo 1; echo 2; echo 3"));
        assert_eq!(p.line(DEADLINE).as_deref(), Some("1"));
        assert!(p.wait(DEADLINE).is_some());
        assert_eq!(p.all_stdout(), "2\n3\n");
    }

    #[test]
    fn stdin_lines_reach_the_child_and_closing_it_ends_the_child() {
        let mut p = Process::build(&mut sh("while read l; do echo \"got $l\"; done; echo bye"))
            .stdin_piped()
            .start();
        p.write_line("x").expect("write");
        assert_eq!(p.line(DEADLINE).as_deref(), Some("got x"));
        p.close_stdin();
        assert_eq!(p.line(DEADLINE).as_deref(), Some("bye"));
        assert!(p.wait(DEADLINE).is_some_and(|s| s.success()));
        assert!(p.write_line("late").is_err(), "stdin is closed");
    }

    #[test]
    fn without_a_stdin_pipe_the_child_reads_end_of_file() {
        let mut p = Process::spawn(&mut sh("cat; echo done"));
        assert_eq!(p.line(DEADLINE).as_deref(), Some("done"));
        assert!(p.write_line("x").is_err());
        assert!(p.wait(DEADLINE).is_some());
    }

    #[test]
    fn streams_not_captured_are_empty_and_ended() {
        let mut p = Process::build(&mut sh("echo out; echo err >&2"))
            .stdout(Stream::Discard)
            .stderr(Stream::Discard)
            .start();
        assert!(p.wait(DEADLINE).is_some());
        assert_eq!(p.line(SHORT), None);
        assert!(p.out().ended() && p.err().ended());
        assert_eq!(p.stderr(), "");
    }

    #[test]
    fn signals_by_name_reach_the_child() {
        let mut p = Process::spawn(&mut sh(
            "trap 'echo term; exit 3' TERM; echo ready; while :; do sleep 0.05; done",
        ));
        p.expect_line("ready", |l| l == "ready");
        assert!(p.running());
        p.signal("TERM");
        let status = p.wait(DEADLINE).expect("exits on TERM");
        assert_eq!(status.code(), Some(3));
        assert_eq!(p.line(DEADLINE).as_deref(), Some("term"));
        assert!(!p.running());
    }

    #[test]
    fn wait_gives_up_at_its_timeout_and_kill_reaps() {
        let mut p = Process::spawn(&mut sh("sleep 30"));
        assert_eq!(p.wait(SHORT), None);
        p.kill();
        assert!(!p.running());
        let status = p.wait(SHORT).expect("reaped");
        assert!(!status.success());
    }

    #[test]
    fn drop_kills_and_reaps() {
        let p = Process::spawn(&mut sh("sleep 30"));
        let pid = p.id();
        drop(p);
        // Reaped: no /proc entry left, not even a zombie.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn a_missing_program_is_an_error_naming_it() {
        let err = Process::build(&mut Command::new("/no/such/program-x"))
            .try_start()
            .err()
            .expect("cannot start");
        assert!(err.to_string().contains("program-x"), "{err}");
    }

    #[test]
    fn wait_listening_sees_a_listener_and_an_early_exit() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut p = Process::spawn(&mut sh("sleep 30"));
        assert_eq!(p.wait_listening(port, DEADLINE), Ok(()));
        drop(listener);
        let mut gone = Process::build(&mut sh("echo broken >&2; exit 1"))
            .name("gone")
            .start();
        let err = gone.wait_listening(port, DEADLINE).expect_err("exited");
        assert!(err.starts_with("gone exited"), "{err}");
        assert!(err.contains("broken"), "the message holds stderr: {err}");
        let err = p.wait_listening(port, SHORT).expect_err("no listener");
        assert!(err.contains("did not listen"), "{err}");
    }

    #[test]
    fn cpu_and_memory_of_a_live_process() {
        let p = Process::spawn(&mut sh("sleep 30"));
        assert!(p.rss_kib().is_some_and(|k| k > 0));
        assert!(p.cpu_seconds().is_some_and(|s| s >= 0.0));
    }

    #[test]
    fn cpu_seconds_count_from_the_last_parenthesis() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(cpu_seconds_of_stat(stat), Some(3.0));
        assert_eq!(cpu_seconds_of_stat("42 (x) S 1"), None);
        assert_eq!(cpu_seconds_of_stat("no parenthesis"), None);
    }

    #[test]
    fn rss_comes_from_the_vmrss_line() {
        let status = "Name:\tsh\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t1\n";
        assert_eq!(rss_kib_of_status(status), Some(1234));
        assert_eq!(rss_kib_of_status("Name:\tsh\n"), None);
    }

    #[test]
    fn on_cpus_runs_the_program_itself_or_under_taskset() {
        let plain = on_cpus("sh", None);
        assert_eq!(plain.get_program(), "sh");
        assert_eq!(plain.get_args().count(), 0);
        let mut pinned = on_cpus("sh", Some("0"));
        assert_eq!(pinned.get_program(), "taskset");
        let args: Vec<_> = pinned.get_args().collect();
        assert_eq!(args, ["-c", "0", "sh"]);
        if Command::new("taskset").arg("-V").output().is_ok() {
            let p = Process::spawn(pinned.args(["-c", "echo pinned"]));
            assert_eq!(p.line(DEADLINE).as_deref(), Some("pinned"));
        }
    }

    #[test]
    fn needles_are_found_within_a_line_or_across_lines() {
        let lines = ["alpha beta".to_owned(), "gamma".to_owned()];
        assert!(lines_contain(&lines, "a be"));
        assert!(lines_contain(&lines, "beta\ngam"));
        assert!(!lines_contain(&lines, "betagamma"));
    }
}
