"""Computes the signed datagrams of tests/data/signed-datagrams.json with the Python standard
library alone (hmac, hashlib, struct): an implementation independent of thingsbus_protocol::signed,
written from docs/authenticated-datagrams.md.

    python3 tests/py/signed_vectors.py tests/data/signed-datagrams.json

prints one JSON object a line: {"datagram": FILE, "hex": HEX}. With --write, writes FILE instead.
"""
import hashlib
import hmac
import json
import os
import struct
import sys


def sign(secret_hex, name, kind, boot, counter, payload):
    key = bytes.fromhex(secret_hex)  # the 32 bytes, not the hex text
    name = name.encode("ascii")
    head = bytes([0xC1, kind, len(name)]) + name + struct.pack(">II", boot, counter)
    signed = head + payload
    return signed + hmac.new(key, signed, hashlib.sha256).digest()


def main():
    path = sys.argv[1]
    write = "--write" in sys.argv[2:]
    folder = os.path.dirname(path)
    with open(path) as f:
        vectors = json.load(f)
    for case in vectors["cases"]:
        with open(os.path.join(folder, case["payload"])) as f:
            payload = bytes.fromhex(f.read().strip())
        datagram = sign(case["secret"], case["name"], case["kind"], case["boot"],
                        case["counter"], payload)
        if write:
            with open(os.path.join(folder, case["datagram"]), "w") as f:
                f.write(datagram.hex() + "\n")
        print(json.dumps({"datagram": case["datagram"], "hex": datagram.hex()}))


main()
