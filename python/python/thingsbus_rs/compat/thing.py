"""``thingsbus.thing`` of 0.2.x: namespace helpers, exceptions, the Thing and Directory bases."""

import re
import threading
import time

NS_PART_REGEXSTR = r"([a-z]{1}[a-z0-9\-\_]{0,63})"
NS_PART_REGEX = re.compile("^%s$" % NS_PART_REGEXSTR)


class InternalException(Exception):
    pass


class BadMessageException(Exception):
    pass


class BadNamespaceException(Exception):
    pass


def parse_ns(ns):
    """'a.b.c' -> ['a', 'b', 'c']; '' -> []. Raises BadNamespaceException on a bad part."""
    if ns == "":
        return []
    parts = ns.split(".")
    for part in parts:
        if NS_PART_REGEX.match(part) is None:
            raise BadNamespaceException()
    return parts


def stringify_ns(nsl):
    """['a', 'b'] -> 'a.b'. Raises BadNamespaceException on a bad part."""
    for part in nsl:
        if not NS_PART_REGEX.match(part):
            raise BadNamespaceException
    return ".".join(nsl)


class Thing(object):
    """A node of the tree: a thing, or a prefix of things, or the root (ns '')."""

    HAS_EVENT_HOOK = False

    def __init__(self, directory, ns):
        self.directory = directory
        self.ns = ns
        self.ns_parts = parse_ns(ns)
        self._children = []
        self.data_lock = threading.Lock()
        self._local = None  # (data, ts) given to set_data
        self._documentation_url = None
        if ns:
            self.parent = directory.get_thing(stringify_ns(self.ns_parts[:-1]))
            self.parent._register_child(self)
        else:
            self.parent = None

    def _register_child(self, child):
        self._children.append(child)

    def _mirrored(self):
        """(data, ts, documentation_url) from the live mirror, or None."""
        return None

    def _current(self):
        mirrored = self._mirrored()
        with self.data_lock:
            local = self._local
        if local is not None and (mirrored is None or local[1] >= mirrored[1]):
            return local[0], local[1], self._documentation_url
        return mirrored

    @property
    def children(self):
        return list(self._children)

    @property
    def last_data(self):
        current = self._current()
        return None if current is None else current[0]

    @property
    def last_data_ts(self):
        current = self._current()
        return None if current is None else current[1]

    @property
    def documentation_url(self):
        current = self._current()
        if current is not None and current[2]:
            return current[2]
        return self._documentation_url

    @documentation_url.setter
    def documentation_url(self, url):
        self._documentation_url = url

    def set_data(self, data, ts, documentation_url=None):
        with self.data_lock:
            self._local = (data, ts)
            if documentation_url:
                self._documentation_url = documentation_url

    def get_data(self):
        """(age_seconds, data) of the last value, or None when there is none."""
        current = self._current()
        if current is None:
            return None
        return time.time() - current[1], current[0]

    def __repr__(self):
        return "Thing<%s>" % self.ns if self.ns else "RootThing"

    def __str__(self):
        return repr(self)


class Directory(object):
    """Every Thing by namespace, made on first use."""

    def __init__(self, thing_class=None):
        self._name_to_thing = {}
        self._lock = threading.RLock()
        self.thing_class = thing_class if thing_class is not None else Thing
        self.root = self.get_thing("")

    def _known(self, ns):
        return False

    def get_thing(self, ns, create_on_missing=True):
        with self._lock:
            found = self._name_to_thing.get(ns)
            if found is not None:
                return found
            if not create_on_missing and not self._known(ns):
                return None
            made = self.thing_class(self, ns)
            self._name_to_thing[ns] = made
            return made

    @property
    def all_things(self):
        with self._lock:
            return list(self._name_to_thing.values())
