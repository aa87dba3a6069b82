"""``thingsbus.client`` of 0.2.x on the Rust client: ``Client(zone=..., broker_url=...)``,
``client.directory.get_thing(ns).get_data()``, ``thing.subscribe(listener, flags)``."""

import threading

from .. import _native
from . import service_discovery, thing

F_NONE = 0
F_SNAPSHOT = 1
F_TREE = 2
FLAG_REPR = [
    (F_SNAPSHOT, "F_SNAPSHOT"),
    (F_TREE, "F_TREE"),
]

# Events that may wait for the listeners' thread before the oldest are dropped: room for a whole
# snapshot of a large directory.
_QUEUE = 200000


def repr_flag(flags):
    return "|".join(name for flag, name in FLAG_REPR if flags & flag)


def chk_flag(flags, flag):
    return (flags & flag) != 0


class ThingEvent(object):
    def __init__(self, thing_obj, ts, data, flags):
        self.thing = thing_obj
        self.ts = ts
        self.data = data
        self.flags = flags

    def __repr__(self):
        return "ThingEvent<%s, ts=%0.3f, flags=%s, data=%s>" % (
            repr(self.thing),
            self.ts,
            repr_flag(self.flags),
            repr(self.data),
        )

    @property
    def is_snapshot(self):
        return chk_flag(self.flags, F_SNAPSHOT)


class Thing(thing.Thing):
    """A thing whose value is read from the live mirror, with 0.2.x's listeners."""

    HAS_EVENT_HOOK = True

    def __init__(self, *a, **kw):
        thing.Thing.__init__(self, *a, **kw)
        self.event_listeners = []

    def _mirrored(self):
        found = self.directory._client_thing(self.ns)
        if found is None:
            return None
        return found.data, found.ts, found.documentation_url

    @property
    def children(self):
        # The mirror's children, and any made here first (get_thing on an unknown name).
        names = self.directory._client_children(self.ns)
        mine = {c.ns for c in self._children}
        for name in names:
            if name not in mine:
                self.directory.get_thing(name)
        return list(self._children)

    def subscribe(self, callable_function, flags=F_NONE):
        self.event_listeners.append((callable_function, flags))
        self.directory._listening()

    def unsubscribe(self, callable_function):
        self.event_listeners = [
            (f, fl) for (f, fl) in self.event_listeners if f != callable_function
        ]

    def _event_handle(self, event, tree_mode):
        needed = []
        if event.is_snapshot:
            needed.append(F_SNAPSHOT)
        if tree_mode:
            needed.append(F_TREE)
        for listener, flags in list(self.event_listeners):
            if all(chk_flag(flags, f) for f in needed):
                listener(event)
        if self.parent is not None:
            self.parent._event_handle(event, True)

    def _event_hook(self, is_new, ts, data):
        flags = F_NONE if is_new else F_SNAPSHOT
        self._event_handle(ThingEvent(self, ts, data, flags), False)


class Directory(thing.Directory):
    def __init__(self, native=None):
        self._native = native
        self._wake = None
        self._sub = None
        thing.Directory.__init__(self, thing_class=Thing)

    def _client_thing(self, ns):
        if self._native is None:
            return None
        try:
            return self._native.thing(ns)
        except _native.ClosedError:
            return None

    def _client_children(self, ns):
        if self._native is None:
            return []
        try:
            return [c for c in self._native.children(ns)]
        except _native.ClosedError:
            return []

    def _known(self, ns):
        if self._native is None:
            return False
        try:
            return self._native.exists(ns)
        except _native.ClosedError:
            return False

    def _listening(self):
        # Subscribed here, in the caller's thread, so that nothing sent after subscribe()
        # returns is missed; the client's thread takes the events from it.
        with self._lock:
            if self._native is not None and self._sub is None:
                self._sub = self._native.subscribe("", tree=True, snapshots=True, capacity=_QUEUE)
        if self._wake is not None:
            self._wake.set()

    @property
    def all_things(self):
        if self._native is not None:
            try:
                for t in self._native.walk(""):
                    self.get_thing(t.ns)
            except _native.ClosedError:
                pass
        return thing.Directory.all_things.fget(self)


class Client(threading.Thread):
    def __init__(self, zone=None, broker_url=None, context=None):
        """
        @param context ignored (0.2.x took a zeromq context; the Rust client has its own)
        @param zone the zone to use SRV records to locate the broker for
        @param broker_url the broker url to use, if you'd prefer not to use service discovery
        """
        self.ok = True
        self.zone = zone
        self._broker_url = broker_url
        if broker_url is not None:
            native = _native.Client(url=broker_url)
        elif zone is not None:
            native = _native.Client(
                zone=zone, nameserver=service_discovery.ServiceFinder.RESOLVER.nameserver()
            )
        else:
            raise RuntimeError("Must supply zone or broker_url")
        self._native = native
        self.directory = Directory(native)
        self.directory._wake = threading.Event()
        threading.Thread.__init__(self)
        self.daemon = True
        self.start()

    @property
    def broker_url(self):
        if self._broker_url is not None:
            return self._broker_url
        # As 0.2.x: asked of DNS on each use (the client itself follows its own SRV lookup).
        return service_discovery.ServiceFinder.broker_url(self.zone)

    def stop(self):
        self.ok = False
        self.directory._wake.set()

    def run(self):
        # The listeners' thread, as 0.2.x's receive thread was: every listener runs here, in
        # order. It subscribes to the whole tree once somebody listens.
        wake = self.directory._wake
        while self.ok and self.directory._sub is None:
            wake.wait(0.1)
            wake.clear()
        sub = self.directory._sub
        while self.ok and sub is not None:
            event = sub.next(timeout=0.05)
            if event is None:
                if sub.closed:
                    break
                continue
            if event.kind == "expired":
                continue
            try:
                target = self.directory.get_thing(event.ns)
            except thing.BadNamespaceException:
                continue
            target._event_hook(event.kind == "update", event.ts, event.data)
        if sub is not None:
            sub.close()
