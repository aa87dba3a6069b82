"""thingsbus_rs.compat: 0.2.x scripts run with one import line changed."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

import thingsbus_rs
from thingsbus_rs.compat import adaptor, client, service_discovery, thing
from conftest import DEADLINE, eventually, run_python

HERE = Path(__file__).resolve().parent


def switched(source, old, new):
    """`source` with its one import line `old` replaced by `new` (and nothing else changed)."""
    lines = source.splitlines(keepends=True)
    hits = [i for i, l in enumerate(lines) if l.rstrip("\n") == old]
    assert len(hits) == 1, "expected the import line %r once" % old
    lines[hits[0]] = new + "\n"
    return "".join(lines)


def test_a_02_script_runs_unchanged_but_for_the_import(broker, py02, tmp_path):
    original = (HERE / "scripts02" / "watch_and_publish.py").read_text()
    ours = tmp_path / "watch_and_publish.py"
    ours.write_text(switched(original, "from thingsbus import client, adaptor",
                             "from thingsbus_rs.compat import client, adaptor"))
    under_02 = json.loads(run_python(py02, [str(HERE / "scripts02" / "watch_and_publish.py"),
                                            broker.directory, broker.input]))
    under_rs = json.loads(run_python(sys.executable, [str(ours), broker.directory, broker.input]))
    assert under_02["heard"] is True
    assert under_rs == under_02
    assert under_rs["children"] == ["demo.sensor"] and under_rs["event_flags"] == ""


def test_the_02_package_own_generic_zmq_adaptor(broker, py02, tmp_path):
    """The original package's own example, thingsbus/generic_zmq_adaptor.py, with its import
    line changed: it forwards a ZMQ JSON publisher's messages into our broker."""
    path = subprocess.run([py02, "-c", "import thingsbus.generic_zmq_adaptor as m; print(m.__file__)"],
                          capture_output=True, text=True, check=True).stdout.strip()
    script = tmp_path / "generic_zmq_adaptor.py"
    script.write_text(switched(Path(path).read_text(), "import thingsbus.adaptor",
                               "import thingsbus_rs.compat as thingsbus"))
    ctx = zmq.Context.instance()
    source = ctx.socket(zmq.PUB)
    source.linger = 0
    port = source.bind_to_random_port("tcp://127.0.0.1")
    p = subprocess.Popen([sys.executable, str(script), "--url", broker.input,
                          "-s", "tcp://127.0.0.1:%d" % port, "--ns", "cams",
                          "--nskey", "camname", "--projections", "luminance,busy",
                          "--filter", "mtype:percept_update", "-d", "http://example.org/cams"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        c = thingsbus_rs.Client(url=broker.directory)

        def forwarded():
            source.send_json({"mtype": "percept_update", "camname": "door", "luminance": 0.5,
                              "busy": 0.25, "other": 1})
            source.send_json({"mtype": "ignored", "camname": "yard", "luminance": 1, "busy": 1})
            if p.poll() is not None:
                pytest.fail("the script exited: %s" % p.stderr.read())
            return c.get("cams.door")

        age, data = eventually(forwarded, "cams.door through generic_zmq_adaptor.py")
        assert data == {"luminance": 0.5, "busy": 0.25}
        assert c.thing("cams.door").documentation_url == "http://example.org/cams"
        assert c.get("cams.yard") is None
    finally:
        p.send_signal(signal.SIGINT)  # the script stops its adaptor on KeyboardInterrupt
        p.communicate(timeout=DEADLINE)
        source.close()


def test_listener_flags_as_02(fast_snapshots):
    broker = fast_snapshots
    c = client.Client(broker_url=broker.directory)
    a = adaptor.Adaptor("house", None, broker_input_url=broker.input)
    calls = {k: [] for k in ("plain", "tree", "snap", "both", "leaf")}
    house = c.directory.get_thing("house")
    house.subscribe(lambda e: calls["plain"].append(e), client.F_NONE)
    house.subscribe(lambda e: calls["tree"].append(e), client.F_TREE)
    house.subscribe(lambda e: calls["snap"].append(e), client.F_SNAPSHOT)
    house.subscribe(lambda e: calls["both"].append(e), client.F_TREE | client.F_SNAPSHOT)
    leaf = c.directory.get_thing("house.hall")
    leaf.subscribe(lambda e: calls["leaf"].append(e))
    a.send({"lamp": 1}, ns="hall")
    sent_ts = time.time() - 10.0
    a.send("home", ts=sent_ts)
    eventually(lambda: calls["leaf"] and calls["plain"], "live events")
    # A periodic snapshot (every 0.5 s) replays both things.
    eventually(lambda: any(e.is_snapshot and e.thing.ns == "house.hall" for e in calls["both"]),
               "a snapshot event of house.hall for F_TREE|F_SNAPSHOT")
    eventually(lambda: any(e.is_snapshot for e in calls["snap"]), "a snapshot event for F_SNAPSHOT")
    plain = [e for e in calls["plain"]]
    assert all(e.thing is house and not e.is_snapshot for e in plain)
    assert plain[0].data == "home" and plain[0].ts == sent_ts
    assert all(not e.is_snapshot for e in calls["tree"])
    assert {e.thing.ns for e in calls["tree"]} == {"house", "house.hall"}
    assert all(e.thing is house for e in calls["snap"])
    assert calls["leaf"][0].thing is leaf and calls["leaf"][0].data == {"lamp": 1}
    assert repr(calls["leaf"][0]).startswith("ThingEvent<Thing<house.hall>, ts=")
    # A listener's flags add kinds: F_SNAPSHOT alone still hears the thing's live updates.
    assert {e.flags for e in calls["snap"]} == {client.F_NONE, client.F_SNAPSHOT}
    a.stop()
    a.join(DEADLINE)
    c.stop()


def test_directory_and_thing_api(broker):
    a = adaptor.Adaptor("lab", "http://example.org/lab", broker_input_url=broker.input)
    c = client.Client(broker_url=broker.directory)
    a.send({"v": 1}, ns="bench.scope")
    a.send({"v": 2}, ns="bench.meter")
    a.stop()
    a.join(DEADLINE)
    a.send({"v": 3}, ns="bench.meter")  # after stop: dropped without an error, as 0.2.x
    eventually(lambda: c.directory.get_thing("lab.bench.meter").get_data(), "lab.bench.meter")
    eventually(lambda: c.directory.get_thing("lab.bench.scope").get_data(), "lab.bench.scope")
    bench = c.directory.get_thing("lab.bench")
    assert bench.get_data() is None and bench.last_data is None
    assert sorted(t.ns for t in bench.children) == ["lab.bench.meter", "lab.bench.scope"]
    scope = c.directory.get_thing("lab.bench.scope")
    assert scope.parent is bench and bench.parent.parent is c.directory.root
    assert scope.last_data == {"v": 1} and scope.documentation_url == "http://example.org/lab"
    assert scope.ns_parts == ["lab", "bench", "scope"]
    names = {t.ns for t in c.directory.all_things}
    assert {"", "lab", "lab.bench", "lab.bench.scope", "lab.bench.meter"} <= names
    assert c.directory.get_thing("lab.nothing", create_on_missing=False) is None
    assert c.directory.get_thing("lab", create_on_missing=False) is not None
    with pytest.raises(thing.BadNamespaceException):
        c.directory.get_thing("Lab.X")
    assert c.broker_url == broker.directory
    assert c.is_alive() and c.daemon
    c.stop()
    c.join(DEADLINE)
    assert not c.is_alive()


def test_adaptor_refuses_as_02():
    with pytest.raises(RuntimeError):
        adaptor.Adaptor("x", None)
    with pytest.raises(RuntimeError):
        adaptor.Adaptor("", None, broker_input_url="tcp://127.0.0.1:9")
    with pytest.raises(thing.BadNamespaceException):
        adaptor.Adaptor("Bad", None, broker_input_url="tcp://127.0.0.1:9")


def test_namespace_helpers():
    assert thing.parse_ns("") == []
    assert thing.parse_ns("a.b-c.d_1") == ["a", "b-c", "d_1"]
    assert thing.stringify_ns(["a", "b"]) == "a.b"
    for bad in ("A", "a..b", "1a", "a." + "x" * 65):
        with pytest.raises(thing.BadNamespaceException):
            thing.parse_ns(bad)
    with pytest.raises(thing.BadNamespaceException):
        thing.stringify_ns(["ok", "Not"])
    assert client.repr_flag(client.F_TREE | client.F_SNAPSHOT) == "F_SNAPSHOT|F_TREE"
    assert client.chk_flag(client.F_TREE, client.F_TREE)


def test_import_as_the_package():
    import thingsbus_rs.compat as thingsbus

    assert thingsbus.client.Client is client.Client
    assert thingsbus.adaptor.Adaptor is adaptor.Adaptor
    assert thingsbus.service_discovery.ServiceFinder is service_discovery.ServiceFinder
