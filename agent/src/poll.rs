//! Polls: read a source, publish the value with the reading's time; on failure, back off, mark
//! the thing (`<ns>.failing`) and report in the health thing.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use thingsbus_adaptor::Adaptor;
use thingsbus_protocol::Namespace;

use crate::config::{Poll, Source};
use crate::health::Health;
use crate::web::Web;

/// The longest wait after failures (unless `every` is longer).
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// What is kept of a program's standard error in a message.
const STDERR_KEPT: usize = 300;
/// The most of a program's standard output read as its value (more is an error).
const STDOUT_KEPT_BYTES: usize = 1024 * 1024;
/// The most of its standard error kept while it runs.
const STDERR_KEPT_BYTES: usize = 64 * 1024;

/// Reads `pipe` to its end, keeping at most `cap` bytes; true when there was more.
async fn read_capped(
    pipe: Option<impl tokio::io::AsyncRead + Unpin>,
    cap: usize,
) -> std::io::Result<(Vec<u8>, bool)> {
    use tokio::io::AsyncReadExt as _;
    let Some(mut pipe) = pipe else {
        return Ok((Vec::new(), false));
    };
    let mut kept = Vec::new();
    let mut more = false;
    let mut buf = [0u8; 8192];
    loop {
        let n = pipe.read(&mut buf).await?;
        if n == 0 {
            return Ok((kept, more));
        }
        let room = cap.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
        more |= n > room;
    }
}

/// The wait before the next reading: `every` give or take `jitter` (`r` in 0..1 picks where),
/// doubled for each failure in a row up to five minutes (or `every`, if longer).
pub fn next_wait(every: Duration, jitter: f64, failures: u32, r: f64) -> Duration {
    let base = every.as_secs_f64() * (1.0 + jitter * (2.0 * r - 1.0));
    if failures == 0 {
        return Duration::from_secs_f64(base.max(0.001));
    }
    let cap = MAX_BACKOFF.max(every).as_secs_f64();
    let backoff = every.as_secs_f64() * 2f64.powi(failures.min(16) as i32);
    Duration::from_secs_f64(backoff.min(cap).max(0.001))
}

/// A program's output as a value: JSON, else a number, else the text (trimmed).
pub fn parse_output(text: &str) -> Value {
    let t = text.trim();
    if let Ok(v) = serde_json::from_str::<Value>(t) {
        return v;
    }
    if let Some(n) = t.parse::<f64>().ok().and_then(crate::expr::number) {
        return n;
    }
    Value::String(t.to_owned())
}

/// A number in a file's text, times `scale`.
///
/// # Errors
/// When the text is not a number.
pub fn parse_number(text: &str, scale: f64) -> Result<Value, String> {
    let t = text.trim();
    let n: f64 = t
        .parse()
        .map_err(|_| format!("expected a number, found {:?}", truncate(t, 80)))?;
    crate::expr::number(n * scale).ok_or_else(|| format!("{t} x {scale} is not a finite number"))
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Runs `argv` (no shell) and returns its standard output, or why it failed: exit code and
/// standard error, or the time-out (the program is killed).
///
/// # Errors
/// As text.
pub async fn run_program(argv: &[String], timeout: Duration) -> Result<String, String> {
    let (program, args) = argv.split_first().ok_or("no program")?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    // Both pipes are read to their end (a program never blocks on a full pipe), but only so
    // much of each is kept: a runaway program costs its time-out, not the agent's memory.
    let work = async {
        let (stdout, stderr) = tokio::join!(
            read_capped(stdout, STDOUT_KEPT_BYTES),
            read_capped(stderr, STDERR_KEPT_BYTES)
        );
        (stdout, stderr, child.wait().await)
    };
    let (stdout, stderr, status) = match tokio::time::timeout(timeout, work).await {
        Ok((Ok(o), Ok(e), Ok(status))) => (o, e, status),
        Ok((Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e))) => {
            return Err(format!("{program}: {e}"))
        }
        Err(_) => {
            return Err(format!(
                "{program} took longer than {timeout:?} and was killed"
            ))
        }
    };
    if stdout.1 {
        return Err(format!(
            "{program} printed more than {STDOUT_KEPT_BYTES} bytes: too much to be a value"
        ));
    }
    let out = std::process::Output {
        status,
        stdout: stdout.0,
        stderr: stderr.0,
    };
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code().map_or_else(
            || "killed by a signal".to_owned(),
            |c| format!("exit code {c}"),
        );
        Err(format!(
            "{program}: {code}: {}",
            truncate(stderr.trim(), STDERR_KEPT)
        ))
    }
}

/// One reading.
///
/// # Errors
/// Why the source gave no value, as text.
pub async fn read(source: &Source, timeout: Duration, web: &Web) -> Result<Value, String> {
    match source {
        Source::File { path, scale } => {
            let text = tokio::time::timeout(timeout, tokio::fs::read_to_string(path))
                .await
                .map_err(|_| format!("reading {} took longer than {timeout:?}", path.display()))?
                .map_err(|e| format!("{}: {e}", path.display()))?;
            parse_number(&text, *scale).map_err(|e| format!("{}: {e}", path.display()))
        }
        Source::Command { argv } => Ok(parse_output(&run_program(argv, timeout).await?)),
        Source::Http { url, pick } => {
            let url = url.clone();
            let pick = pick.clone();
            let web = web.clone();
            tokio::task::spawn_blocking(move || {
                let body = web.get(&url, timeout)?;
                match pick {
                    Some(p) => p
                        .run(body.as_bytes())
                        .map_err(|e| format!("GET {url}: {e}")),
                    None => serde_json::from_str(&body)
                        .map_err(|e| format!("GET {url}: the reply is not JSON: {e}")),
                }
            })
            .await
            .map_err(|e| format!("the HTTP poll stopped: {e}"))?
        }
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A small random source for jitter (not for secrets).
struct Jitter(u64);

impl Jitter {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Polls forever: the task of one `[[poll]]`.
pub async fn run(
    poll: Poll,
    base: Namespace,
    adaptor: Adaptor,
    health: Arc<Health>,
    web: Web,
    seed: u64,
) {
    let ns = match base.join(poll.ns.as_str()) {
        Ok(ns) => ns,
        Err(e) => {
            health.poll_failed(poll.ns.as_str(), &e.to_string());
            return;
        }
    };
    let name = poll.ns.as_str().to_owned();
    let marker = base
        .join(&format!("{}.failing", poll.ns))
        .unwrap_or_else(|_| ns.clone());
    let mut jitter = Jitter(seed | 1);
    let mut failures: u32 = 0;
    health.poll(&name, |_| {});
    loop {
        let ts = now();
        match read(&poll.source, poll.timeout, &web).await {
            Ok(value) => {
                if let Err(e) = adaptor.send_to(ns.as_str(), &value, Some(ts)) {
                    health.poll_failed(&name, &format!("publishing: {e}"));
                } else {
                    if failures > 0 {
                        let _ = adaptor.send_to(marker.as_str(), &false, None);
                    }
                    failures = 0;
                    health.poll(&name, |p| {
                        p.ok = true;
                        p.failures = 0;
                        p.readings += 1;
                    });
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                health.poll_failed(&name, &e);
                let mark = json!({"error": e, "failures": failures, "ts": ts});
                let _ = adaptor.send_to(marker.as_str(), &mark, None);
            }
        }
        tokio::time::sleep(next_wait(poll.every, poll.jitter, failures, jitter.next())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_with_jitter_and_backoff() {
        let s = Duration::from_secs(10);
        assert_eq!(next_wait(s, 0.1, 0, 0.5), s);
        assert_eq!(next_wait(s, 0.1, 0, 0.0), Duration::from_secs(9));
        assert_eq!(next_wait(s, 0.1, 0, 1.0), Duration::from_secs(11));
        assert_eq!(next_wait(s, 0.1, 1, 0.5), Duration::from_secs(20));
        assert_eq!(next_wait(s, 0.1, 3, 0.5), Duration::from_secs(80));
        assert_eq!(next_wait(s, 0.1, 30, 0.5), MAX_BACKOFF);
        let hour = Duration::from_secs(3600);
        assert_eq!(next_wait(hour, 0.0, 5, 0.5), hour);
    }

    #[test]
    fn outputs() {
        assert_eq!(parse_output("{\"a\": 1}\n"), json!({"a": 1}));
        assert_eq!(parse_output(" 42\n"), json!(42));
        assert_eq!(parse_output("Use%\n 37%\n"), json!("Use%\n 37%"));
        assert_eq!(parse_number("12000\n", 0.001), Ok(json!(12)));
        assert_eq!(parse_number("12500", 0.001), Ok(json!(12.5)));
        assert!(parse_number("crc=00 NO", 1.0).is_err());
    }

    #[tokio::test]
    async fn programs_are_run_without_a_shell_and_their_output_is_bounded() {
        let argv = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let t = Duration::from_secs(20);
        assert_eq!(
            run_program(&argv(&["echo", "42"]), t).await.as_deref(),
            Ok("42\n")
        );
        let e = run_program(&argv(&["sh", "-c", "echo oops >&2; exit 3"]), t)
            .await
            .expect_err("exit 3");
        assert!(e.contains("exit code 3") && e.contains("oops"), "{e}");
        // 2 MB on stdout: read to the end (the program is not stuck), kept only to 1 MiB.
        let e = run_program(&argv(&["head", "-c", "2000000", "/dev/zero"]), t)
            .await
            .expect_err("too much");
        assert!(e.contains("printed more than"), "{e}");
        // Endless output ends with the time-out, the program killed.
        let e = run_program(&argv(&["yes"]), Duration::from_millis(300))
            .await
            .expect_err("killed");
        assert!(e.contains("was killed"), "{e}");
    }

    #[test]
    fn jitter_is_in_range() {
        let mut j = Jitter(12345);
        for _ in 0..1000 {
            let r = j.next();
            assert!((0.0..1.0).contains(&r));
        }
    }
}
