"""A board's signed datagram in Python, standard library only (docs/authenticated-datagrams.md).

    THINGSBUS_BOARD_SECRET=<64 hex digits> python3 udp_signed.py 127.0.0.1:7955 porch BOOT COUNTER MSGPACK_HEX
"""
import hashlib, hmac, os, socket, struct, sys

host, port = sys.argv[1].rsplit(":", 1)
name, boot, counter = sys.argv[2].encode(), int(sys.argv[3]), int(sys.argv[4])
update = bytes.fromhex(sys.argv[5])  # the MessagePack datagram the board sends today
key = bytes.fromhex(os.environ["THINGSBUS_BOARD_SECRET"])  # 32 bytes, not the hex text
signed = bytes([0xC1, 0x01, len(name)]) + name + struct.pack(">II", boot, counter) + update
datagram = signed + hmac.new(key, signed, hashlib.sha256).digest()
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(datagram, (host, int(port)))
