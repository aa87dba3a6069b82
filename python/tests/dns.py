"""A tiny DNS server on 127.0.0.1 for the zone tests: answers the SRV record
`_thingsbus._tcp.<zone>` (target `broker.<zone>.`, the broker's directory port) and that
target's A record (127.0.0.1); NXDOMAIN for any other name, no records for other types."""

import socket
import struct
import threading

SRV, A = 33, 1


def encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def read_question(msg):
    """(qname, qtype, end offset) of the first question."""
    labels, i = [], 12
    while msg[i] != 0:
        n = msg[i]
        labels.append(msg[i + 1:i + 1 + n].decode())
        i += 1 + n
    qtype = struct.unpack("!H", msg[i + 1:i + 3])[0]
    return ".".join(labels).lower(), qtype, i + 5


class SrvServer:
    def __init__(self, zone, port):
        self.zone = zone
        self.broker_port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.port = self.sock.getsockname()[1]
        self.running = True
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def answer(self, query):
        qname, qtype, end = read_question(query)
        target = "broker." + self.zone
        answers = []
        if qname == "_thingsbus._tcp." + self.zone:
            if qtype == SRV:
                rdata = struct.pack("!HHH", 0, 0, self.broker_port) + encode_name(target)
                answers.append((SRV, rdata))
            rcode = 0
        elif qname == target:
            if qtype == A:
                answers.append((A, socket.inet_aton("127.0.0.1")))
            rcode = 0
        else:
            rcode = 3
        flags = 0x8400 | (struct.unpack("!H", query[2:4])[0] & 0x0100) | rcode
        head = query[:2] + struct.pack("!HHHHH", flags, 1, len(answers), 0, 0)
        body = query[12:end]
        for rtype, rdata in answers:
            body += struct.pack("!HHHIH", 0xC00C, rtype, 1, 60, len(rdata)) + rdata
        return head + body

    def serve(self):
        while self.running:
            try:
                query, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                self.sock.sendto(self.answer(query), peer)
            except Exception:  # a malformed query: no answer, as a real server might
                continue

    def stop(self):
        self.running = False
        self.thread.join()
        self.sock.close()
