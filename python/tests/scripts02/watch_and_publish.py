"""A script written for the original thingsbus 0.2.x, using every part of its API a script uses:
an Adaptor publishing under a base namespace, a Client found by URL, a tree listener, get_data,
children, all_things, repr. It prints one JSON line of what it saw, the same under either
package. The tests run it unchanged under 0.2.1 and, with its import line changed, under
thingsbus_rs.compat.

    python watch_and_publish.py DIRECTORY_URL INPUT_URL
"""

import json
import sys
import threading
import time

from thingsbus import client, adaptor

directory_url, input_url = sys.argv[1], sys.argv[2]

c = client.Client(broker_url=directory_url)
got = threading.Event()
events = []


def on_event(event):
    events.append(event)
    if event.thing.ns == "demo.sensor" and not event.is_snapshot:
        got.set()


root = c.directory.get_thing("demo")
root.subscribe(on_event, client.F_TREE)
a = adaptor.Adaptor("demo", "http://example.org/demo", broker_input_url=input_url)

# ZMQ PUB/SUB drops what is sent before the connection is up: send until the listener hears.
deadline = time.time() + 60
while not got.is_set() and time.time() < deadline:
    a.send({"light": 31.8}, ns="sensor")
    got.wait(0.1)

thing = c.directory.get_thing("demo.sensor")
age, data = thing.get_data()
first = [e for e in events if e.thing.ns == "demo.sensor"][0]
print(json.dumps({
    "heard": got.is_set(),
    "data": data,
    "age_ok": -5 < age < 60,
    "documentation_url": thing.documentation_url,
    "children": sorted(t.ns for t in root.children),
    "parent": repr(thing.parent),
    "repr": repr(thing),
    "event_flags": client.repr_flag(first.flags),
    "event_data": first.data,
    "missing": c.directory.get_thing("demo.nothing", create_on_missing=False) is None,
    "in_all_things": "demo.sensor" in [t.ns for t in c.directory.all_things],
    "root": repr(c.directory.root),
    "parse_ns": client.thing.parse_ns("demo.sensor"),
}, sort_keys=True))
a.stop()
c.stop()
