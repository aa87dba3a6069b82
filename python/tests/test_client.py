"""thingsbus_rs.Client and thingsbus_rs.Adaptor against a real broker process."""

import asyncio
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import thingsbus_rs
from conftest import DEADLINE, eventually


def test_send_and_get(broker):
    with thingsbus_rs.Adaptor("shop.shopbot", url=broker.input,
                              documentation_url="http://example.org/shopbot") as a:
        client = thingsbus_rs.Client(url=broker.directory)
        a.send({"busy": 12.0})
        a.send_to("spacemon", {"light": 31.8, "tags": ["a", 1, None, True]})
        age, data = eventually(lambda: client.get("shop.shopbot.spacemon"), "spacemon")
        assert data == {"light": 31.8, "tags": ["a", 1, None, True]}
        assert age >= -5.0
        assert eventually(lambda: client.get("shop.shopbot"), "shopbot")[1] == {"busy": 12.0}
        thing = client.thing("shop.shopbot.spacemon")
        assert thing.ns == "shop.shopbot.spacemon"
        assert thing.documentation_url == "http://example.org/shopbot"
        assert thing.data == data and not thing.stale and thing.seq is not None
        assert client.get("shop.nothing") is None and client.thing("shop.nothing") is None
        assert "shop.shopbot" in client and "shop" not in client
        assert client.exists("shop") and not client.exists("garden")
        assert client.url == broker.directory


def test_send_to_keeps_the_given_timestamp(broker):
    with thingsbus_rs.Adaptor("garden", url=broker.input) as a:
        client = thingsbus_rs.Client(url=broker.directory)
        ts = time.time() - 30.0  # within the broker's live window (60 s)
        a.send_to("rain", True, ts=ts)
        thing = eventually(lambda: client.thing("garden.rain"), "garden.rain")
        assert thing.data is True
        assert abs(thing.ts - ts) < 0.001
        assert thing.age >= 29.0


def test_udp_adaptor(broker):
    a = thingsbus_rs.Adaptor("boards", udp=broker.udp)
    client = thingsbus_rs.Client(url=broker.directory)
    # UDP cannot tell whether the broker is there yet: send until it is seen.
    eventually(lambda: a.send_to("esp1", {"t": 21.5}) or client.get("boards.esp1"), "a datagram")
    assert client.get("boards.esp1")[1] == {"t": 21.5}
    assert a.close(1.0)


def test_late_joiner_wait_filled_children_walk_iteration(broker):
    with thingsbus_rs.Adaptor("farm", url=broker.input) as a:
        for i in range(10):
            a.send_to("field%d.moisture" % i, i)
        for i in range(10, 100):
            a.send_to("barn.s%02d" % i, {"i": i})
        assert a.flush(DEADLINE)
        first = thingsbus_rs.Client(url=broker.directory)
        eventually(lambda: len(first) == 100, "100 things")
        # A late joiner learns the directory from the snapshot endpoint.
        late = thingsbus_rs.Client(url=broker.directory)
        assert late.wait_filled(DEADLINE)
        assert late.is_filled
        assert len(late) == 100
        assert late.children() == ["farm"]
        assert late.children("farm") == ["farm.barn"] + ["farm.field%d" % i for i in range(10)]
        assert late.children("farm.field3") == ["farm.field3.moisture"]
        barn = late.walk("farm.barn")
        assert [t.ns for t in barn] == ["farm.barn.s%02d" % i for i in range(10, 100)]
        assert [t.data["i"] for t in barn] == list(range(10, 100))
        every = list(late)
        assert len(every) == 100 and every[0].ns == "farm.barn.s10"
        assert late.get("farm.field3.moisture")[1] == 3
        with pytest.raises(thingsbus_rs.InvalidNamespace):
            late.children("Farm")
        stats = late.stats()
        assert stats["snapshot_replies"] >= 1


def test_wait_filled_times_out_without_a_broker():
    client = thingsbus_rs.Client(url="tcp://127.0.0.1:9", instant_snapshot=True)
    assert client.wait_filled(0.2) is False
    # Odd timeouts: negative and NaN are none at all; huge ones and infinity are "very long".
    assert client.wait_filled(-1) is False
    assert client.wait_filled(float("nan")) is False
    sub = client.subscribe("a")
    assert sub.next(timeout=-5) is None
    done = []
    t = threading.Thread(target=lambda: done.append(sub.next(timeout=1e300)))
    t.start()
    sub.close()
    t.join(DEADLINE)
    assert done == [None]
    with pytest.raises(thingsbus_rs.NoAnswer):
        client.command("a.b", 1, timeout=float("-inf"))
    client.close()
    with pytest.raises(thingsbus_rs.ClosedError):
        client.get("a")


def test_subscribe_iterator_tree_and_single(broker):
    client = thingsbus_rs.Client(url=broker.directory)
    assert client.wait_filled(DEADLINE)
    tree = client.subscribe("home", tree=True)
    single = client.subscribe("home.kitchen")
    with thingsbus_rs.Adaptor("home", url=broker.input) as a:
        a.send_to("kitchen.temp", 20.5)
        a.send_to("kitchen", {"lights": "on"})
        seen = []
        for event in tree:
            seen.append((event.ns, event.data, event.kind))
            if len(seen) == 2:
                break
        assert seen == [("home.kitchen.temp", 20.5, "update"), ("home.kitchen", {"lights": "on"}, "update")]
        event = single.next(timeout=DEADLINE)
        assert event is not None and event.ns == "home.kitchen" and not event.is_snapshot
        assert event.thing.data == {"lights": "on"}
        # Nothing else for the single thing: the temperature is below it.
        assert single.try_next() is None
        assert single.next(timeout=0.1) is None
    assert tree.missed == 0


def test_subscribe_snapshots(fast_snapshots):
    broker = fast_snapshots
    with thingsbus_rs.Adaptor("attic", url=broker.input) as a:
        a.send_to("fan", "off")
        client = thingsbus_rs.Client(url=broker.directory)
        eventually(lambda: client.get("attic.fan"), "attic.fan")
        live_only = client.subscribe("attic.fan")
        with_snapshots = client.subscribe("attic.fan", snapshots=True)
        event = with_snapshots.next(timeout=DEADLINE)
        assert event.kind == "snapshot" and event.is_snapshot and event.data == "off"
        assert live_only.try_next() is None
        a.send_to("fan", "on")
        assert live_only.next(timeout=DEADLINE).data == "on"


def test_a_slow_subscriber_counts_what_it_missed(broker):
    client = thingsbus_rs.Client(url=broker.directory)
    assert client.wait_filled(DEADLINE)
    slow = client.subscribe("burst", tree=True, capacity=1)
    with thingsbus_rs.Adaptor("burst", url=broker.input) as a:
        for i in range(50):
            a.send_to("n", i)
        eventually(lambda: (client.get("burst.n") or (0, None))[1] == 49, "the last update")
    kept = []

    def all_accounted():
        event = slow.try_next()
        while event is not None:
            kept.append(event.data)
            event = slow.try_next()
        return len(kept) + slow.missed == 50

    eventually(all_accounted, "every update kept or counted as missed")
    assert slow.missed > 0 and kept == sorted(kept)


def test_subscription_ends_when_the_client_closes(broker):
    client = thingsbus_rs.Client(url=broker.directory)
    sub = client.subscribe("x", tree=True)
    client.close()
    assert list(sub) == []
    assert sub.next(timeout=0.1) is None


def test_subscribe_async_iterator(broker):
    async def main():
        client = thingsbus_rs.Client(url=broker.directory)
        sub = client.subscribe("lab", tree=True)
        a = thingsbus_rs.Adaptor("lab", url=broker.input)
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.ensure_future(ticker())
        await asyncio.sleep(0.05)
        a.send_to("probe", {"v": 1})
        a.send_to("probe", {"v": 2})
        got = []
        async for event in sub:
            got.append(event.data["v"])
            if len(got) == 2:
                break
        t.cancel()
        a.close()
        client.close()
        return got, ticks

    got, ticks = asyncio.run(asyncio.wait_for(main(), DEADLINE))
    assert got == [1, 2]
    # The event loop ran while the subscription waited.
    assert ticks > 0


def test_async_iteration_ends_with_the_client(broker):
    async def main():
        client = thingsbus_rs.Client(url=broker.directory)
        sub = client.subscribe("", tree=True)
        client.close()
        return [e async for e in sub]

    assert asyncio.run(asyncio.wait_for(main(), DEADLINE)) == []


def test_commands_plain_async_refused_no_route_timeout(broker):
    a = thingsbus_rs.Adaptor("door", url=broker.input)
    client = thingsbus_rs.Client(url=broker.directory)

    def lock(ns, data):
        if data.get("code") != 1234:
            raise PermissionError("wrong code")
        return {"ns": ns, "locked": True}

    async def bell(ns, data):
        await asyncio.sleep(0.01)
        return {"rang": data["times"]}

    def slow(ns, data):
        time.sleep(3)
        return "late"

    a.serve("lock", lock)
    a.serve("bell", bell)
    a.serve("slow", slow)
    eventually(lambda: a.is_serving, "the broker to confirm serve")

    def reply():
        try:
            return client.command("door.lock", {"code": 1234}, timeout=5.0)
        except thingsbus_rs.NoRoute:
            return None  # the registration is not routed yet

    assert eventually(reply, "the lock's reply") == {"ns": "door.lock", "locked": True}
    with pytest.raises(thingsbus_rs.Refused) as refused:
        client.command("door.lock", {"code": 1}, timeout=5.0)
    assert refused.value.error == "wrong code"
    assert isinstance(refused.value, thingsbus_rs.CommandError)
    assert client.command("door.bell", {"times": 3}, timeout=5.0) == {"rang": 3}
    with pytest.raises(thingsbus_rs.NoRoute):
        client.command("window.latch", {}, timeout=5.0)
    with pytest.raises(thingsbus_rs.Timeout):
        client.command("door.slow", None, timeout=0.5)
    with pytest.raises(TypeError):
        client.command("door.lock", {"code": object()})
    assert a.stats()["commands"] >= 3
    a.close()


def test_async_handler_on_the_callers_loop(broker):
    async def main():
        a = thingsbus_rs.Adaptor("kettle", url=broker.input)
        client = thingsbus_rs.Client(url=broker.directory)
        loop = asyncio.get_running_loop()
        ran_on = []

        async def boil(ns, data):
            ran_on.append(asyncio.get_running_loop())
            return {"boiling": data}

        a.serve("", boil)
        while True:
            try:
                reply = await thingsbus_rs.command_async(client, "kettle", True, 5.0)
                break
            except thingsbus_rs.NoRoute:
                await asyncio.sleep(0.05)
        a.close()
        return reply, ran_on[0] is loop

    reply, same_loop = asyncio.run(asyncio.wait_for(main(), DEADLINE))
    assert reply == {"boiling": True}
    assert same_loop


def test_no_answer_without_a_broker():
    client = thingsbus_rs.Client(url="tcp://127.0.0.1:9")
    with pytest.raises(thingsbus_rs.NoAnswer):
        client.command("a.b", 1, timeout=0.2)


def test_adaptor_close_and_errors(broker):
    a = thingsbus_rs.Adaptor("shed", url=broker.input)
    client = thingsbus_rs.Client(url=broker.directory)
    for i in range(50):
        a.send_to("n%d" % i, i)
    assert a.close(DEADLINE) is True
    eventually(lambda: len(client) == 50, "the 50 queued updates")
    with pytest.raises(thingsbus_rs.ClosedError):
        a.send(1)
    assert a.close(1.0) is True  # twice is harmless
    b = thingsbus_rs.Adaptor("shed", url=broker.input)
    with pytest.raises(thingsbus_rs.InvalidNamespace):
        b.send_to("Bad.Name", 1)
    with pytest.raises(TypeError):
        b.send({"when": object()})
    with pytest.raises(TypeError):
        b.send({1: "non-str key"})
    with pytest.raises(ValueError):
        b.send(float("nan"))
    loop = []
    loop.append(loop)
    with pytest.raises(ValueError):
        b.send(loop)
    with pytest.raises(thingsbus_rs.InvalidNamespace):
        thingsbus_rs.Adaptor("Shed", url=broker.input)
    with pytest.raises(ValueError):
        thingsbus_rs.Adaptor("shed")
    with pytest.raises(ValueError):
        thingsbus_rs.Client()
    b.close()


def test_gil_released_while_waiting(broker):
    """Another Python thread runs while one waits: here the waiting thread's event can only come
    from Python code in another thread, which needs the GIL (a command handler, Python code too,
    shows the same for command())."""
    client = thingsbus_rs.Client(url=broker.directory)
    sub = client.subscribe("gil", tree=True)
    a = thingsbus_rs.Adaptor("gil", url=broker.input)
    done = threading.Event()

    def publish():
        time.sleep(0.2)  # into the wait below (not an assertion: later works too)
        while not done.is_set():
            a.send_to("t", 1)
            done.wait(0.05)

    t = threading.Thread(target=publish)
    t.start()
    event = sub.next(timeout=DEADLINE)
    done.set()
    t.join()
    assert event is not None and event.ns == "gil.t"
    assert client.wait_filled(DEADLINE)
    a.close()


CTRL_C = textwrap.dedent("""
    import sys, thingsbus_rs
    client = thingsbus_rs.Client(url=sys.argv[1])
    what = sys.argv[2]
    print("waiting", flush=True)
    try:
        if what == "wait_filled":
            client.wait_filled()
        elif what == "next":
            next(iter(client.subscribe("never", tree=True)))
        elif what == "command":
            client.command("never.served", 1, timeout=3600)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(3)
""")


@pytest.mark.parametrize("what", ["wait_filled", "next", "command"])
def test_ctrl_c_ends_a_blocking_wait(what):
    # A directory URL nobody answers: the wait would last forever.
    p = subprocess.Popen([sys.executable, "-c", CTRL_C, "tcp://127.0.0.1:9", what],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "waiting"
    time.sleep(0.2)  # into the wait (a signal before it would be a KeyboardInterrupt too)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=DEADLINE)
    assert p.returncode == 3, err
    assert out.strip() == "interrupted"


def test_find_brokers_names_a_missing_zone():
    with pytest.raises(thingsbus_rs.ThingsbusError):
        thingsbus_rs.find_brokers("does-not-exist.invalid", nameserver="127.0.0.1:9", timeout=0.5)
