"""Drives the original Python thingsbus 0.2.1 for the interoperability tests.

Run with the interpreter that scripts/python-peers.sh installs. Every role talks JSON lines:
commands on stdin, results and events on stdout, one object per line.

  peer.py client (--url URL | --zone ZONE) [--nameserver IP:PORT] [--watch NS:FLAGS ...]
      FLAGS: a subset of "tree,snapshot" or "none". Prints {"event": ...} for each event of each
      watch; answers "get NS", "things", "alive" and "quit" on stdin.
  peer.py adaptor --url URL --ns NS [--doc URL]
      Reads {"ns": SUB_OR_NULL, "data": ..., "ts": ...} lines and sends each through Adaptor.send.
  peer.py srv --zone ZONE --nameserver IP:PORT
      Prints {"broker_url": ..., "broker_input_url": ...} as ServiceFinder computes them.
  peer.py broker --directory-port P --input-port I [--interval S]
      Runs the 0.2.1 Broker on 127.0.0.1 (its UDP input follows INPUT_PORT).

Nothing in thingsbus itself is changed here; only the dnspython resolver is pointed at the test
name server, as /etc/resolv.conf would in a deployment.
"""

import argparse
import json
import sys
import threading
import time


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def use_nameserver(spec):
    from thingsbus import service_discovery as sd

    host, port = spec.rsplit(":", 1)
    sd.ServiceFinder.RESOLVER.nameservers = [host]
    sd.ServiceFinder.RESOLVER.port = int(port)


def run_client(args):
    from thingsbus import client as tbc

    if args.nameserver:
        use_nameserver(args.nameserver)
    c = tbc.Client(zone=args.zone, broker_url=args.url)
    for spec in args.watch:
        ns, _, flags_text = spec.partition(":")
        flags = tbc.F_NONE
        for f in flags_text.split(","):
            if f == "tree":
                flags |= tbc.F_TREE
            elif f == "snapshot":
                flags |= tbc.F_SNAPSHOT

        def listener(event, watch=spec):
            emit({
                "event": watch,
                "ns": event.thing.ns,
                "data": event.data,
                "ts": event.ts,
                "snapshot": event.is_snapshot,
            })

        c.directory.get_thing(ns).subscribe(listener, flags)
    emit({"ready": True, "url": c.broker_url})
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "get":
            t = c.directory.get_thing(arg, create_on_missing=False)
            value = t.get_data() if t is not None else None
            emit({
                "get": arg,
                "value": list(value) if value is not None else None,
                "documentation_url": t.documentation_url if t is not None else None,
            })
        elif cmd == "things":
            emit({"things": {
                t.ns: t.get_data()[1]
                for t in c.directory.all_things
                if t.get_data() is not None
            }})
        elif cmd == "alive":
            emit({"alive": c.is_alive()})
        elif cmd == "quit":
            break


def run_adaptor(args):
    import thingsbus.adaptor

    a = thingsbus.adaptor.Adaptor(args.ns, args.doc, broker_input_url=args.url)
    emit({"ready": True})
    for line in sys.stdin:
        msg = json.loads(line)
        a.send(msg["data"], ns=msg.get("ns"), ts=msg.get("ts"))
    time.sleep(0.5)
    a.stop()


def run_srv(args):
    from thingsbus import service_discovery as sd

    use_nameserver(args.nameserver)
    emit({
        "broker_url": sd.ServiceFinder.broker_url(args.zone),
        "broker_input_url": sd.ServiceFinder.broker_input_url(args.zone),
    })


def run_broker(args):
    import thingsbus.broker as b

    b.INPUT_PORT = args.input_port
    b.DIRECTORY_INTERVAL = args.interval
    broker = b.Broker(
        adaptor_url="tcp://127.0.0.1:%d" % args.input_port,
        directory_url="tcp://127.0.0.1:%d" % args.directory_port,
    )
    t = threading.Thread(target=broker.run, daemon=True)
    t.start()
    emit({"ready": True})
    for line in sys.stdin:
        if line.strip() == "quit":
            break
    broker.stop()


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="role", required=True)
    c = sub.add_parser("client")
    c.add_argument("--url")
    c.add_argument("--zone")
    c.add_argument("--nameserver")
    c.add_argument("--watch", action="append", default=[])
    a = sub.add_parser("adaptor")
    a.add_argument("--url", required=True)
    a.add_argument("--ns", required=True)
    a.add_argument("--doc")
    s = sub.add_parser("srv")
    s.add_argument("--zone", required=True)
    s.add_argument("--nameserver", required=True)
    b = sub.add_parser("broker")
    b.add_argument("--directory-port", type=int, required=True)
    b.add_argument("--input-port", type=int, required=True)
    b.add_argument("--interval", type=float, default=15.0)
    args = p.parse_args()
    {"client": run_client, "adaptor": run_adaptor, "srv": run_srv, "broker": run_broker}[args.role](args)


if __name__ == "__main__":
    main()
