"""server_key= and key_file=: the client and the adaptor as CURVE clients of a pyzmq CURVE server
playing the broker (its directory, its input), beside a wrong server key that gets nothing."""

import json
import threading
import time

import pytest
import zmq

import thingsbus_rs
from conftest import eventually


def curve_server(kind):
    ctx = zmq.Context.instance()
    public, secret = zmq.curve_keypair()
    s = ctx.socket(kind)
    s.curve_server = True
    s.curve_secretkey = secret
    s.linger = 0
    port = s.bind_to_random_port("tcp://127.0.0.1")
    return s, public.decode(), "tcp://127.0.0.1:%d" % port


def test_adaptor_with_server_key_reaches_a_curve_input(tmp_path):
    sub, public, url = curve_server(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    own_public, own_secret = zmq.curve_keypair()
    key_file = tmp_path / "adaptor.key"
    key_file.write_text("# the adaptor's secret key\n%s\n" % own_secret.decode())
    key_file.chmod(0o600)
    wrong = thingsbus_rs.Adaptor("wrong", url=url, server_key=zmq.curve_keypair()[0].decode())
    right = thingsbus_rs.Adaptor("porch", url=url, server_key=public, key_file=str(key_file))
    got = []

    def received():
        right.send({"door": "open"})
        wrong.send({"door": "open"})
        if sub.poll(50):
            got.append(json.loads(sub.recv()))
        return any(m["ns"] == "porch" for m in got)

    eventually(received, "the CURVE input to receive the adaptor's update")
    assert all(m["ns"] == "porch" for m in got), got
    assert got[0]["data"] == {"door": "open"}
    right.close(0.5)
    wrong.close(0.1)
    sub.close()


def test_client_with_server_key_mirrors_a_curve_directory():
    pub, public, url = curve_server(zmq.PUB)
    stop = threading.Event()

    def publish():
        seq = 0
        while not stop.is_set():
            seq += 1
            pub.send_string(json.dumps({"type": "thing_update", "ns": "secret.thing",
                                        "data": {"n": seq}, "ts": time.time()}))
            time.sleep(0.02)

    t = threading.Thread(target=publish)
    t.start()
    try:
        wrong = thingsbus_rs.Client(url=url, server_key=zmq.curve_keypair()[0].decode())
        right = thingsbus_rs.Client(url=url, server_key=public)
        eventually(lambda: right.get("secret.thing"), "the CURVE client to mirror the thing")
        assert wrong.get("secret.thing") is None
        right.close()
        wrong.close()
    finally:
        stop.set()
        t.join()
        pub.close()


def test_bad_keys_are_named(tmp_path):
    with pytest.raises(ValueError, match="server key"):
        thingsbus_rs.Client(url="tcp://127.0.0.1:9", server_key="not a key")
    with pytest.raises(ValueError, match="/nonexistent"):
        thingsbus_rs.Adaptor("a", url="tcp://127.0.0.1:9", key_file="/nonexistent")
    # A key file alone serves a zone that publishes the broker's key; a URL has none.
    (tmp_path / "own.key").write_text(zmq.curve_keypair()[1].decode() + "\n")
    for make in (thingsbus_rs.Adaptor, thingsbus_rs.Client):
        args = ("a",) if make is thingsbus_rs.Adaptor else ()
        with pytest.raises(thingsbus_rs.ThingsbusError, match="server_key="):
            make(*args, url="tcp://127.0.0.1:9", key_file=str(tmp_path / "own.key"))
    with pytest.raises(ValueError):
        thingsbus_rs.Adaptor("a", url="tcp://127.0.0.1:9",
                             server_key=zmq.curve_keypair()[0].decode(), key_file="/nonexistent")
    with pytest.raises(thingsbus_rs.ThingsbusError, match="UDP"):
        thingsbus_rs.Adaptor("a", udp="127.0.0.1:9", server_key=zmq.curve_keypair()[0].decode())


def test_adaptor_and_client_with_keys_through_our_curve_broker(tmp_path):
    """Our broker with --curve-secret-file and an auth file: the adaptor's key file gives it
    its rights, a client with a key of its own reads as anonymous."""
    from conftest import Broker

    public, secret = zmq.curve_keypair()
    (tmp_path / "broker.key").write_text(secret.decode() + "\n")
    own_public, own_secret = zmq.curve_keypair()
    (tmp_path / "shed.key").write_text(own_secret.decode() + "\n")
    (tmp_path / "auth.toml").write_text(
        '[anonymous]\nread = true\n[keys.shed]\npublic = "%s"\npublish = ["shed"]\n'
        % own_public.decode()
    )
    broker = Broker(
        "--curve-secret-file", str(tmp_path / "broker.key"),
        "--auth-file", str(tmp_path / "auth.toml"),
    )
    try:
        server = public.decode()
        with thingsbus_rs.Adaptor("shed.light", url=broker.input, server_key=server,
                                  key_file=str(tmp_path / "shed.key")) as adaptor, \
                thingsbus_rs.Client(url=broker.directory, server_key=server) as client:
            def arrived():
                adaptor.send({"on": True})
                time.sleep(0.02)
                return client.get("shed.light")
            age, data = eventually(arrived, "shed.light through CURVE")
            assert data == {"on": True}
    finally:
        broker.stop()
