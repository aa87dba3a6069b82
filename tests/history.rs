//! `--history`: values published through an adaptor, recorded by the broker's HTTP side, read
//! back from `/api/history` (real sockets, a real SQLite file in a temp directory).

use std::io::BufRead;
use std::io::BufReader;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};
use thingsbus_adaptor::Adaptor;
use thingsbus_broker::history::{span, Store};
use thingsbus_broker::HistoryConfig;
use thingsbus_tests::*;

const DAY_MS: i64 = 86_400_000;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("thingsbus-history-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

fn recording(c: &mut Config, file: &Path) {
    c.stats_interval = Duration::ZERO;
    c.http = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    c.history = Some(HistoryConfig::new(file));
}

fn base(broker: &Broker) -> String {
    format!("http://{}", broker.endpoints().http.expect("http runs"))
}

fn get(url: &str) -> (u16, String) {
    match ureq::get(url).timeout(Duration::from_secs(10)).call() {
        Ok(r) => (r.status(), r.into_string().expect("body")),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

fn get_json(url: &str) -> Value {
    let (code, body) = get(url);
    assert_eq!(code, 200, "{url}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// An adaptor whose connection is up: what a ZMQ PUB sends before that is lost.
fn adaptor(broker: &Broker, ns: &str) -> Adaptor {
    let a = Adaptor::builder(ns)
        .url(&broker.endpoints().input)
        .connect_blocking()
        .expect("adaptor connects");
    let url = format!("{}/api/things/{ns}.probe", base(broker));
    eventually(DEADLINE, "the adaptor's connection", || {
        a.send_to("probe", "up", None).expect("send");
        std::thread::sleep(Duration::from_millis(50));
        (get(&url).0 == 200).then_some(())
    });
    a
}

/// The points of a history answer as (t, min, avg, max, n).
fn points(v: &Value) -> Vec<(f64, f64, f64, f64, u64)> {
    v["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| {
            let f = |k: &str| p[k].as_f64().expect("a number");
            (
                f("t"),
                f("min"),
                f("avg"),
                f("max"),
                p["n"].as_u64().expect("n"),
            )
        })
        .collect()
}

/// A whole minute at least 90 s ago (so that six seconds after it are in the past).
fn minute_ago() -> f64 {
    ((now() - 90.0) / 60.0).floor() * 60.0
}

const TEMPS: [f64; 6] = [4.0, 5.0, 3.0, 6.0, 2.0, 7.0];

/// Publishes `kitchen.fridge` at `t0 + i` for each of [`TEMPS`] (with a door that opens and
/// closes and a name), each once the one before is recorded, and `garden.temp` once.
fn publish_fridge(broker: &Broker, t0: f64) {
    let kitchen = adaptor(broker, "kitchen");
    let b = base(broker);
    for (i, temp) in TEMPS.iter().enumerate() {
        let ts = t0 + i as f64;
        let data = json!({"temp": temp, "door": {"open": i % 2 == 0}, "name": "fridge"});
        let url = format!(
            "{b}/api/history/kitchen.fridge?field=temp&since={t0}&until={}&step=1s",
            t0 + 60.0
        );
        eventually(DEADLINE, &format!("point {i} to be recorded"), || {
            kitchen.send_to("fridge", &data, Some(ts)).expect("send");
            std::thread::sleep(Duration::from_millis(100));
            let (code, body) = get(&url);
            (code == 200 && points(&serde_json::from_str(&body).expect("JSON")).len() > i)
                .then_some(())
        });
    }
    let garden = adaptor(broker, "garden");
    eventually(DEADLINE, "garden.temp to be recorded", || {
        garden.send_to("temp", &21.5, Some(t0)).expect("send");
        std::thread::sleep(Duration::from_millis(100));
        (get(&format!("{b}/api/history/garden.temp?since={t0}")).0 == 200).then_some(())
    });
}

#[test]
fn numbers_fields_and_booleans_come_back_per_step_as_json_and_csv() {
    let dir = scratch("values");
    let file = dir.join("history.db");
    let broker = spawn_broker(|c| recording(c, &file));
    let b = base(&broker);
    let t0 = minute_ago();
    publish_fridge(&broker, t0);
    let span = format!("since={t0}&until={}", t0 + 60.0);

    // Every second: the values as sent.
    let v = get_json(&format!(
        "{b}/api/history/kitchen.fridge?field=temp&{span}&step=1s"
    ));
    assert_eq!(
        (v["ns"].clone(), v["field"].clone()),
        (json!("kitchen.fridge"), json!("temp"))
    );
    assert_eq!(v["tier"], "raw");
    assert_eq!(v["step"], json!(1.0));
    let got = points(&v);
    let want: Vec<_> = TEMPS
        .iter()
        .enumerate()
        .map(|(i, &x)| (t0 + i as f64, x, x, x, 1))
        .collect();
    assert_eq!(got, want);

    // Every 2 s: min, avg and max of each pair.
    let v = get_json(&format!(
        "{b}/api/history/kitchen.fridge?field=temp&{span}&step=2s"
    ));
    assert_eq!(
        points(&v),
        vec![
            (t0, 4.0, 4.5, 5.0, 2),
            (t0 + 2.0, 3.0, 4.5, 6.0, 2),
            (t0 + 4.0, 2.0, 4.5, 7.0, 2)
        ]
    );

    // The same as CSV.
    let (code, csv) = get(&format!(
        "{b}/api/history/kitchen.fridge?field=temp&{span}&step=2s&format=csv"
    ));
    assert_eq!(code, 200, "{csv}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "t,time,min,avg,max,n");
    let t0_ms = (t0 * 1e3) as i64;
    assert_eq!(
        lines[1],
        format!("{t0},{},4,4.5,5,2", span::format_rfc3339(t0_ms))
    );
    assert_eq!(lines.len(), 4, "{csv}");

    // A nested boolean by its path, as 1 and 0.
    let v = get_json(&format!(
        "{b}/api/history/kitchen.fridge?field=door.open&{span}&step=1s"
    ));
    let opens: Vec<f64> = points(&v).iter().map(|p| p.2).collect();
    assert_eq!(opens, vec![1.0, 0.0, 1.0, 0.0, 1.0, 0.0]);

    // A number thing needs no field.
    let v = get_json(&format!("{b}/api/history/garden.temp?{span}&step=1s"));
    assert_eq!(v["field"], "");
    assert_eq!(points(&v), vec![(t0, 21.5, 21.5, 21.5, 1)]);

    // since and until as RFC 3339 and as spans back from now say the same.
    let rfc = format!(
        "since={}&until={}",
        span::format_rfc3339(t0_ms),
        span::format_rfc3339(t0_ms + 60_000)
    );
    let v = get_json(&format!(
        "{b}/api/history/kitchen.fridge?field=temp&{rfc}&step=1s"
    ));
    assert_eq!(points(&v), want);
    let v = get_json(&format!(
        "{b}/api/history/kitchen.fridge?field=temp&since=10m&step=1s"
    ));
    assert_eq!(points(&v), want);
    // Without since: the last 24 hours, in about 300 steps of 5 minutes.
    let v = get_json(&format!("{b}/api/history/kitchen.fridge?field=temp"));
    assert_eq!(v["step"], json!(300.0));
    let day: Vec<_> = points(&v);
    assert_eq!(day.len(), 1, "{v}");
    assert_eq!((day[0].1, day[0].3, day[0].4), (2.0, 7.0, 6));
}

#[test]
fn bad_parameters_are_refused_with_what_was_wrong() {
    let dir = scratch("bad");
    let file = dir.join("history.db");
    let broker = spawn_broker(|c| recording(c, &file));
    let b = base(&broker);
    let t0 = minute_ago();
    publish_fridge(&broker, t0);
    let fridge = format!("{b}/api/history/kitchen.fridge");
    for (query, code, says) in [
        ("field=temp&since=soon", 400, "since:"),
        ("field=temp&until=2026-13-01T00:00:00Z", 400, "until:"),
        ("field=temp&step=fast", 400, "step:"),
        ("field=temp&since=1h&until=2h", 400, "must be before"),
        ("field=temp&since=1d&step=1ms", 400, "more than"),
        ("field=temp&format=xml", 400, "format:"),
        ("", 400, "several fields"),
        ("field=name", 404, "no field \"name\""),
    ] {
        let (got, body) = get(&format!("{fridge}?{query}"));
        assert_eq!(got, code, "{query}: {body}");
        assert!(body.contains(says), "{query}: {body}");
    }
    let (code, body) = get(&format!("{b}/api/history/nothing.here"));
    assert_eq!(code, 404, "{body}");
    let (code, body) = get(&format!("{b}/api/history/Bad.Name"));
    assert_eq!(code, 400, "{body}");
}

#[test]
fn many_updates_in_one_window_make_one_point_and_a_writer_behind_is_counted() {
    let dir = scratch("conflate");
    let file = dir.join("history.db");
    let broker = spawn_broker(|c| recording(c, &file));
    let b = base(&broker);
    let garden = adaptor(&broker, "garden");
    let t0 = minute_ago();
    // 50 values within one second.
    for i in 0..50 {
        garden
            .send_to("humidity", &f64::from(i), Some(t0 + f64::from(i) * 0.01))
            .expect("send");
    }
    let url = format!(
        "{b}/api/history/garden.humidity?since={t0}&until={}&step=1s",
        t0 + 60.0
    );
    let v = eventually(DEADLINE, "the last value to be recorded", || {
        let (code, body) = get(&url);
        let v: Value = serde_json::from_str(&body).ok()?;
        (code == 200 && points(&v).last().is_some_and(|p| p.2 == 49.0)).then_some(v)
    });
    assert_eq!(points(&v), vec![(t0, 49.0, 49.0, 49.0, 1)]);

    // 500 values a second apart sent at once: the writer, writing every second, cannot have
    // taken each before the next came; the newest is recorded, the others counted.
    let t1 = t0 - 3_600.0;
    for i in 0..500 {
        garden
            .send_to("wind", &f64::from(i), Some(t1 + f64::from(i)))
            .expect("send");
    }
    let url = format!(
        "{b}/api/history/garden.wind?since={t1}&until={}&step=1s",
        t1 + 600.0
    );
    let v = eventually(DEADLINE, "the last wind to be recorded", || {
        let (code, body) = get(&url);
        let v: Value = serde_json::from_str(&body).ok()?;
        (code == 200 && points(&v).last().is_some_and(|p| p.2 == 499.0)).then_some(v)
    });
    let recorded = points(&v).len() as u64;
    let conflated = broker.stats().history_conflated.load(Ordering::Relaxed);
    assert!(recorded < 500, "{recorded} points recorded");
    assert!(conflated > 0);
    assert_eq!(
        recorded + conflated,
        500,
        "each value is recorded or counted"
    );
    let (_, metrics) = get(&format!("{b}/metrics"));
    assert!(
        metrics.contains(&format!("thingsbus_history_conflated_total {conflated}")),
        "{metrics}"
    );
}

#[test]
fn aged_data_is_read_from_the_minute_and_hour_tiers() {
    let dir = scratch("tiers");
    let file = dir.join("history.db");
    let t0 = minute_ago();
    {
        let broker = spawn_broker(|c| recording(c, &file));
        publish_fridge(&broker, t0);
        broker.shutdown();
        broker.join();
    }
    // Three days on: the raw points are folded into minutes and hours, then expired.
    let later = (now() * 1e3) as i64 + 3 * DAY_MS;
    let done = Store::open(&file, 1_000, u64::MAX)
        .expect("the file opens")
        .maintain(later)
        .expect("maintains");
    // (The broker folded its minutes as the points came: they were late for their minute.)
    assert_eq!(
        done.expired, 13,
        "six temperatures, six doors, garden.temp: {done:?}"
    );

    let broker = spawn_broker(|c| recording(c, &file));
    let b = base(&broker);
    let v = get_json(&format!(
        "{b}/api/history/kitchen.fridge?field=temp&since=1h&step=1m"
    ));
    assert_eq!(v["tier"], "minute");
    assert_eq!(points(&v), vec![(t0, 2.0, 4.5, 7.0, 6)]);
    let v = get_json(&format!(
        "{b}/api/history/kitchen.fridge?field=temp&since=100d&step=1h"
    ));
    assert_eq!(v["tier"], "hour");
    let hour = ((t0 / 3600.0).floor()) * 3600.0;
    assert_eq!(points(&v), vec![(hour, 2.0, 4.5, 7.0, 6)]);
    // The raw points are gone.
    let v = get_json(&format!(
        "{b}/api/history/kitchen.fridge?field=temp&since=1h&step=1s"
    ));
    assert_eq!(v["tier"], "raw");
    assert!(points(&v).is_empty(), "{v}");
}

#[test]
fn history_sits_behind_the_same_guard_as_the_directory() {
    let dir = scratch("guard");
    let file = dir.join("history.db");
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "reader-0123456789abcdef0123456789 read\n").expect("tokens");
    let broker = spawn_broker(|c| {
        recording(c, &file);
        c.http_options.token_file = Some(tokens.clone());
    });
    let url = format!(
        "{}/api/history/thingsbus.broker?field=accepted",
        base(&broker)
    );
    let (code, _) = get(&url);
    assert_eq!(code, 401);
    let with_token = ureq::get(&url)
        .set("Authorization", "Bearer reader-0123456789abcdef0123456789")
        .timeout(Duration::from_secs(10))
        .call();
    let code = match with_token {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(c, _)) => c,
        Err(e) => panic!("{e}"),
    };
    // Past the guard: nothing recorded yet for the broker's own thing (stats are off).
    assert_eq!(code, 404);
    let elsewhere = ureq::get(&url)
        .set("Host", "evil.example")
        .set("Authorization", "Bearer reader-0123456789abcdef0123456789")
        .call();
    assert!(matches!(elsewhere, Err(ureq::Error::Status(421, _))));
}

#[test]
fn history_without_http_is_refused_saying_to_add_it() {
    let dir = scratch("nohttp");
    let mut c = Config::ephemeral();
    c.history = Some(HistoryConfig::new(dir.join("history.db")));
    let Err(e) = Broker::start(c) else {
        panic!("a broker with --history and no --http started")
    };
    assert!(e.to_string().contains("add --http"), "{e}");
}

#[test]
fn over_its_bound_the_oldest_points_go_first() {
    let dir = scratch("bound");
    let file = dir.join("history.db");
    let now_ms = (now() * 1e3) as i64;
    let start = now_ms - DAY_MS;
    {
        // A day of one point a second for four fields: several megabytes.
        let mut store = Store::open(&file, 1_000, u64::MAX).expect("opens");
        let mut batch = Vec::new();
        let mut t = start - start % 1_000;
        while t < now_ms {
            for f in ["a", "b", "c", "d"] {
                batch.push(thingsbus_broker::history::Point {
                    ns: "garden.station".into(),
                    field: f.into(),
                    t_ms: t,
                    v: (t / 1_000 % 100) as f64,
                });
            }
            t += 1_000;
        }
        store.write(&batch).expect("writes");
        assert!(store.used_bytes().expect("size") > 4 << 20);
    }
    let bound = 256 * 1024;
    let broker = spawn_broker(|c| {
        recording(c, &file);
        if let Some(h) = c.history.as_mut() {
            h.max_bytes = bound;
        }
    });
    let b = base(&broker);
    // The writer maintains the file as it starts.
    let used = eventually(DEADLINE, "the file to be within its bound", || {
        let used = broker.stats().history_bytes.load(Ordering::Relaxed);
        (used > 0 && used <= bound).then_some(used)
    });
    assert!(used <= bound);
    let newest = get_json(&format!(
        "{b}/api/history/garden.station?field=a&since=2m&until=1m&step=1s"
    ));
    // A point a second (61 when the span starts on a whole second and ends after one).
    let kept = points(&newest).len();
    assert!((60..=61).contains(&kept), "the last minutes stay: {newest}");
    for step in ["1s", "1m"] {
        let oldest = get_json(&format!(
            "{b}/api/history/garden.station?field=a&since=24h&until=20h&step={step}"
        ));
        assert!(points(&oldest).is_empty(), "the oldest hours go: {oldest}");
    }
    let (_, metrics) = get(&format!("{b}/metrics"));
    assert!(
        metrics.contains(&format!("thingsbus_history_bytes {used}")),
        "{metrics}"
    );
}

/// The low and high value of each minute of the page's known series (5 s apart in the minute).
const LOW: [f64; 8] = [4.0, 5.0, 3.0, 6.0, 2.0, 7.0, 5.0, 4.0];
const HIGH: [f64; 8] = [5.0, 7.0, 4.0, 9.0, 3.0, 8.0, 6.0, 5.0];

/// The `(x, y)` pairs of a drawn polyline or polygon, as the script reports them.
fn drawn(v: &Value) -> Vec<(f64, f64)> {
    v.as_array()
        .expect("points")
        .iter()
        .map(|p| (p[0].as_f64().expect("x"), p[1].as_f64().expect("y")))
        .collect()
}

/// Seconds since 1970 as the page shows a time (the browser runs in UTC), `YYYY-MM-DD HH:MM:SS`.
fn shown_time(t: f64) -> String {
    let rfc = span::format_rfc3339((t * 1000.0) as i64);
    rfc[..19].replace('T', " ")
}

#[test]
fn the_page_draws_sparklines_and_a_live_chart_of_a_known_series() {
    require_peers!(peers::CHROMIUM, peers::PLAYWRIGHT);
    let dir = scratch("page");
    let broker = spawn_broker(|c| recording(c, &dir.join("history.db")));
    let b = base(&broker);
    // 8 minutes, half an hour ago: in each, LOW then HIGH 5 s later (one 15 s step of the chart).
    let t0 = ((now() - 1800.0) / 60.0).floor() * 60.0;
    let lab = adaptor(&broker, "lab");
    let url = format!(
        "{b}/api/history/lab.probe?field=value&since={t0}&until={}&step=1s",
        t0 + 600.0
    );
    for (i, (low, high)) in LOW.iter().zip(HIGH).enumerate() {
        for (k, v) in [(0, *low), (1, high)] {
            let ts = t0 + 60.0 * i as f64 + 5.0 * k as f64;
            eventually(DEADLINE, &format!("point {i}.{k} to be recorded"), || {
                lab.send_to("probe", &json!({"value": v, "unit": "°C"}), Some(ts))
                    .expect("send");
                std::thread::sleep(Duration::from_millis(100));
                let (code, body) = get(&url);
                (code == 200
                    && points(&serde_json::from_str(&body).expect("JSON")).len() > 2 * i + k)
                    .then_some(())
            });
        }
    }
    // Recorded, but two hours ago: nothing in the last hour, so no sparkline. A string: none either.
    let old = now() - 7200.0;
    eventually(DEADLINE, "lab.old to be recorded", || {
        lab.send_to("old", &3.5, Some(old)).expect("send");
        lab.send_to("label", &"hello", None).expect("send");
        std::thread::sleep(Duration::from_millis(100));
        (get(&format!("{b}/api/history/lab.old?since=3h")).0 == 200
            && get(&format!("{b}/api/things/lab.label")).0 == 200)
            .then_some(())
    });

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("history-chart.png");
    let mut node = std::process::Command::new("node")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("web/history.mjs"))
        .arg(format!("{b}/"))
        .arg(&shot)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("node runs");
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let mut all = Vec::new();
    let mut expect = |prefix: &str| -> String {
        loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("the browser ended before {prefix:?}: {all:?}"))
                .expect("utf-8");
            all.push(line.clone());
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_string();
            }
        }
    };
    // The sparkline of the last hour: a point a minute, so one per minute of the series.
    assert_eq!(expect("spark lab.probe "), "drawn 1 8");
    assert_eq!(expect("spark lab.old "), "none 0 0");
    assert_eq!(expect("spark lab.label "), "none 0 0");

    let chart: Value = serde_json::from_str(&expect("chart ")).expect("chart JSON");
    assert_eq!(chart["field"], "value");
    assert_eq!(chart["span"], "1 h");
    let (min, max) = (2.0, 9.0);
    let num = |k: &str| chart[k].as_f64().expect(k);
    assert_eq!((num("v0"), num("v1")), (min, max), "{chart}");
    let frame = |k: &str| chart["frame"][k].as_f64().expect(k);
    let (fx, fy, fw, fh) = (frame("x"), frame("y"), frame("width"), frame("height"));
    // From drawing coordinates back to time and value, through the domain the chart shows.
    let (t_lo, t_hi) = (num("t0"), num("t1"));
    assert!(
        t_hi - t_lo >= 3600.0 - 15.0 && t_hi - t_lo <= 3600.0 + 30.0,
        "{chart}"
    );
    let time = |x: f64| t_lo + (x - fx) / fw * (t_hi - t_lo);
    let value = |y: f64| min + (fy + fh - y) / fh * (max - min);
    let close = |a: f64, b: f64, tol: f64| (a - b).abs() <= tol;
    let avg = drawn(&chart["avg"]);
    assert_eq!(
        avg.len(),
        LOW.len(),
        "a point per minute of the series: {chart}"
    );
    for (i, &(x, y)) in avg.iter().enumerate() {
        let t = t0 + 60.0 * i as f64;
        let mean = (LOW[i] + HIGH[i]) / 2.0;
        assert!(close(time(x), t, 2.0), "point {i} at {} not {t}", time(x));
        assert!(
            close(value(y), mean, 0.02),
            "point {i} is {} not {mean}",
            value(y)
        );
    }
    // The band: the highs along the top, the lows back along the bottom; its extent is the
    // series' min and max.
    let band = drawn(&chart["band"]);
    assert_eq!(band.len(), 2 * LOW.len(), "{chart}");
    let tops: Vec<f64> = band[..LOW.len()].iter().map(|p| value(p.1)).collect();
    let mut bottoms: Vec<f64> = band[LOW.len()..].iter().map(|p| value(p.1)).collect();
    bottoms.reverse();
    for i in 0..LOW.len() {
        assert!(close(tops[i], HIGH[i], 0.02), "band top {i}: {tops:?}");
        assert!(
            close(bottoms[i], LOW[i], 0.02),
            "band bottom {i}: {bottoms:?}"
        );
    }
    let ys = band.iter().map(|p| p.1);
    assert!(
        close(ys.clone().fold(f64::MAX, f64::min), fy, 0.01),
        "{chart}"
    );
    assert!(close(ys.fold(f64::MIN, f64::max), fy + fh, 0.01), "{chart}");

    // The pointer on the 4th minute: its time, mean and range, with the unit.
    assert_eq!(
        expect("hover "),
        format!("{}  7.5 °C  (6 – 9 °C)", shown_time(t0 + 180.0))
    );

    // Live: an update now is appended to the open chart, and widens its range.
    lab.send_to("probe", &json!({"value": 20.5, "unit": "°C"}), None)
        .expect("send");
    assert_eq!(expect("live "), format!("{} 20.5", LOW.len() + 1));
    // 24 h: the whole day (5 min steps), the series' minimum still the bottom of the band.
    let day = expect("span 24 h ");
    let (width, bottom) = day.split_once(' ').expect("two numbers");
    let width: f64 = width.parse().expect("a span");
    assert!(
        (86_400.0..=86_400.0 + 300.0 + 60.0).contains(&width),
        "{day}"
    );
    assert_eq!(bottom, "2", "{day}");
    let status = node.wait().expect("node exits");
    assert!(status.success(), "{all:?}");
    let complaints: Vec<_> = all
        .iter()
        .filter(|l| l.starts_with("csp") || l.starts_with("pageerror"))
        .collect();
    assert!(complaints.is_empty(), "{complaints:?}");
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 1000)
            .unwrap_or(false),
        "a screenshot at {}",
        shot.display()
    );
    eprintln!("screenshot: {}", shot.display());
}
