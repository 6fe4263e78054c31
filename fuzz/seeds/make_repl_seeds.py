#!/usr/bin/env python3
"""Writes the committed seeds of repl_frame into seeds/repl_frame/.

Run from fuzz/: python3 seeds/make_repl_seeds.py. Each seed is a selector
byte (see fuzz_targets/repl_frame.rs) and a byte stream of frames laid out
as in the module doc of drbd-like-sync/src/proto/mod.rs: body_len u32,
opcode u16, body; integers big-endian.
"""
import hashlib
import os
import struct

OUT = os.path.join('seeds', 'repl_frame')
MAGIC = b'LOCUSRPL'


def be16(v): return struct.pack('>H', v)
def be32(v): return struct.pack('>I', v)
def be64(v): return struct.pack('>Q', v)
def name(s): return bytes([len(s)]) + s
def text(s): return be16(len(s)) + s


def frame(op, body):
    return be32(len(body)) + be16(op) + body


def req(op, rid, rest, image=b'vm1', gen=3):
    return frame(op, be64(rid) + name(image) + be64(gen) + rest)


def save(stream, sel=0):
    os.makedirs(OUT, exist_ok=True)
    data = bytes([sel]) + stream
    with open(os.path.join(OUT, hashlib.sha1(data).hexdigest()[:16]), 'wb') as f:
        f.write(data)


client_hello = frame(0x0001, MAGIC + be16(1) + name(b'writer') + b'\xc1' * 32)
server_hello = frame(0x0002, MAGIC + be16(1) + name(b'store1') + b'\x5e' * 32 + b'\xaa' * 32)
proof = frame(0x0003, b'\xbb' * 32)
accept = frame(0x0004, b'')
fatal = frame(0x0005, be16(0x0101) + be16(1) + text(b'version mismatch: we speak 1, peer 2'))
ping = frame(0x0100, be64(1))
read = req(0x0101, 2, be64(4096) + be32(512))
write = req(0x0102, 3, be64(8192) + b'\x01' + b'data' * 16)
flush = req(0x0103, 4, b'')
zeroes = req(0x0104, 5, be64(0) + be64(1 << 20))
discard = req(0x0105, 6, be64(1 << 20) + be64(1 << 20))
checksum = req(0x0106, 7, be64(0) + be64(1 << 22) + be32(1 << 16))
stream = req(0x0107, 8, be64(0) + be64(1 << 22))
ok = frame(0x0200, be64(2) + b'\0' * 512)
sums = frame(0x0201, be64(7) + be32(1 << 16) + be32(3) + be64(1) + be64(2) + be64(3))
chunk = frame(0x0202, be64(8) + be64(0) + b'\x5a' * 100)
hole = frame(0x0203, be64(8) + be64(100) + be64(1 << 20))
end = frame(0x0204, be64(8))
fenced = frame(0x0205, be64(3) + be16(1) + be64(9) + text(b'fenced: generation 9 seen'))
unknown = frame(0x01f0, be64(10) + b'future')

every = [client_hello, server_hello, proof, accept, fatal, ping, read, write, flush,
         zeroes, discard, checksum, stream, ok, sums, chunk, hole, end, fenced, unknown]
for f in every:
    save(f)
    save(f, sel=2)                      # 64-byte limit
save(client_hello + proof + ping + read + write + flush)          # a client's stream
save(server_hello + accept + ok + sums + chunk + hole + end + fenced, sel=0x15)  # server's, cut
save(write[:-5])                                                   # truncated
save(be32(0xffffffff) + be16(0x0102))                              # oversized
print(f'{len(os.listdir(OUT))} seeds in {OUT}')
