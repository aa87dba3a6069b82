"""zone=: the broker found through its SRV record, from a DNS server the test runs."""

import json
import subprocess

import pytest

import thingsbus_rs
from thingsbus_rs.compat import adaptor, client, service_discovery
from conftest import DEADLINE, ROOT, eventually
from dns import SrvServer

ZONE = "example.test"


@pytest.fixture
def dns(broker):
    server = SrvServer(ZONE, broker.port)
    yield server
    server.stop()


def test_client_and_adaptor_by_zone(broker, dns):
    found = thingsbus_rs.find_brokers(ZONE, nameserver=dns.addr)
    assert [(b["host"].rstrip("."), b["port"]) for b in found] == [("broker." + ZONE, broker.port)]
    assert found[0]["input_url"].endswith(":%d" % (broker.port + 1))
    c = thingsbus_rs.Client(zone=ZONE, nameserver=dns.addr)
    a = thingsbus_rs.Adaptor("attic", zone=ZONE, nameserver=dns.addr)
    a.send_to("fan", "on")
    assert eventually(lambda: c.get("attic.fan"), "attic.fan by zone")[1] == "on"
    # The command endpoint comes from the SRV record too.
    a.serve("fan", lambda ns, data: {"fan": data})

    def reply():
        try:
            return c.command("attic.fan", "off", timeout=5.0)
        except thingsbus_rs.NoRoute:
            return None

    assert eventually(reply, "a command by zone") == {"fan": "off"}
    a.close()
    c.close()


def test_compat_service_finder_and_zone(broker, dns, py02):
    finder = service_discovery.ServiceFinder
    old = (finder.RESOLVER.nameservers, finder.RESOLVER.port)
    finder.RESOLVER.nameservers = ["127.0.0.1"]
    finder.RESOLVER.port = dns.port
    try:
        ours = {"broker_url": finder.broker_url(ZONE), "broker_input_url": finder.broker_input_url(ZONE)}
        # The original's answer, from tests/py/peer.py's srv role.
        out = subprocess.run([py02, str(ROOT / "tests" / "py" / "peer.py"), "srv", "--zone", ZONE,
                              "--nameserver", dns.addr], capture_output=True, text=True,
                             timeout=DEADLINE, check=True).stdout
        theirs = json.loads(out.splitlines()[0])
        assert ours == {k: theirs[k] for k in ours}
        c = client.Client(zone=ZONE)
        a = adaptor.Adaptor("porch", None, zone=ZONE)
        assert a.broker_input_url == ours["broker_input_url"]
        a.send({"light": True})
        thing = c.directory.get_thing("porch")
        assert eventually(lambda: thing.get_data(), "porch through compat by zone")[1] == {"light": True}
        assert c.broker_url == ours["broker_url"]
        a.stop()
        c.stop()
    finally:
        finder.RESOLVER.nameservers, finder.RESOLVER.port = old
