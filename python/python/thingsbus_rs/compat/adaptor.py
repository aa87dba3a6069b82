"""``thingsbus.adaptor`` of 0.2.x on the Rust adaptor: ``Adaptor(ns, documentation_url,
broker_input_url=..., zone=...)`` and ``send(data, ns=None, ts=None)``."""

import pprint
import threading
import time

from .. import _native
from . import service_discovery, thing


class Adaptor(threading.Thread):
    def __init__(self, ns, documentation_url, broker_input_url=None, zone=None, verbose=False):
        if (zone is None) and (broker_input_url is None):
            raise RuntimeError("Must supply zone or broker_input_url")
        if not ns:
            raise RuntimeError("ns must be set.")
        self.verbose = verbose
        self.zone = zone
        self._broker_input_url = broker_input_url
        self.ns = ns
        self.ns_parts = thing.parse_ns(ns)
        self.documentation_url = documentation_url
        self.ok = True
        self._stopped = threading.Event()
        if broker_input_url is not None:
            self._native = _native.Adaptor(
                ns, url=broker_input_url, documentation_url=documentation_url or None
            )
        else:
            self._native = _native.Adaptor(
                ns,
                zone=zone,
                documentation_url=documentation_url or None,
                nameserver=service_discovery.ServiceFinder.RESOLVER.nameserver(),
            )
        threading.Thread.__init__(self)
        self.daemon = True
        self.start()

    def stop(self):
        """Stops the adaptor; what is queued is delivered first (for up to 2 seconds, by the
        adaptor's thread: join() waits for it)."""
        self.ok = False
        self._stopped.set()

    @property
    def broker_input_url(self):
        if self._broker_input_url is not None:
            return self._broker_input_url
        return service_discovery.ServiceFinder.broker_input_url(self.zone)

    def __repr__(self):
        s = "Adaptor<ns=%s" % self.ns
        if self._broker_input_url is not None:
            s += ", broker_input_url=" + self._broker_input_url
        if self.zone is not None:
            s += ", zone=" + self.zone
        return s + ">"

    def run(self):
        if self.verbose:
            print("%s connected" % self)
        self._stopped.wait()
        self._native.close(2.0)

    def send(self, data, ns=None, ts=None):
        if ts is None:
            ts = time.time()
        sub_ns = "" if ns is None else thing.stringify_ns(thing.parse_ns(ns))
        if self.verbose:
            print("%s sending message..." % self)
            pprint.pprint({"ns": sub_ns, "data": data, "ts": ts})
        try:
            self._native.send_to(sub_ns, data, float(ts))
        except _native.ClosedError:
            pass  # after stop(), as in 0.2.x: the update is not sent
