#!/usr/bin/env python3
"""Writes seed corpora for text_keys and cdb_parse into corpus/<target>/.

Run from fuzz/: python3 seeds/make_seeds.py. The layouts are documented at
the top of fuzz_targets/text_keys.rs and fuzz_targets/cdb_parse.rs.
"""
import hashlib
import os
import struct


def save(target, data):
    d = os.path.join('corpus', target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), 'wb') as f:
        f.write(data)


# ---- text_keys: [cfg] then steps [flags][len u16 le][text] ----
def step(t, c, csg, nsg, text, vmin=0):
    flags = t | c << 1 | csg << 2 | nsg << 4 | vmin << 6
    return bytes([flags]) + struct.pack('<H', len(text)) + text


def kv(*pairs):
    return b''.join(k.encode() + b'=' + v.encode() + b'\0' for k, v in pairs)


INIT = ('InitiatorName', 'iqn.2026-11.test:init')
OPER = kv(('HeaderDigest', 'None,CRC32C'), ('DataDigest', 'None'),
          ('MaxRecvDataSegmentLength', '65536'), ('ImmediateData', 'Yes'),
          ('InitialR2T', 'No'), ('MaxBurstLength', '262144'),
          ('FirstBurstLength', '65536'), ('ErrorRecoveryLevel', '0'),
          ('MaxConnections', '1'), ('DefaultTime2Wait', '2'),
          ('DefaultTime2Retain', '20'), ('MaxOutstandingR2T', '1'),
          ('DataPDUInOrder', 'Yes'), ('DataSequenceInOrder', 'Yes'))
for tgt in ('open', 'acl', 'nope'):
    first = kv(INIT, ('TargetName', 'iqn.2026-11.test:' + tgt),
               ('SessionType', 'Normal'), ('AuthMethod', 'None'))
    save('text_keys', b'\0' + step(1, 0, 0, 1, first) + step(1, 0, 1, 3, OPER))
    save('text_keys', b'\0' + step(1, 0, 0, 3, first))
save('text_keys', b'\0' + step(1, 0, 1, 3, kv(INIT, ('SessionType', 'Discovery')) + OPER))
save('text_keys', b'\x01' + step(0, 0, 0, 0, kv(INIT, ('SessionType', 'Discovery'),
                                                ('AuthMethod', 'CHAP')))
     + step(0, 0, 0, 0, kv(('CHAP_A', '5')))
     + step(1, 0, 0, 1, kv(('CHAP_N', 'fuzzuser'), ('CHAP_R', '?'))))
for tgt, alg in (('chap', '5'), ('mutual', '7,5')):
    extra = (('CHAP_I', '7'), ('CHAP_C', '0x' + '11' * 16)) if tgt == 'mutual' else ()
    save('text_keys', b'\0'
         + step(0, 0, 0, 0, kv(INIT, ('TargetName', 'iqn.2026-11.test:' + tgt),
                               ('AuthMethod', 'CHAP,None')))
         + step(0, 0, 0, 0, kv(('CHAP_A', alg)))
         + step(1, 0, 0, 1, kv(('CHAP_N', 'fuzzuser'), ('CHAP_R', '?'), *extra))
         + step(1, 0, 1, 3, OPER))
# continued text split over two PDUs, small text cap
first = kv(INIT, ('TargetName', 'iqn.2026-11.test:open'), ('AuthMethod', 'None'))
save('text_keys', b'\x02' + step(0, 1, 0, 0, first[:20]) + step(1, 0, 0, 1, first[20:])
     + step(1, 0, 1, 3, OPER))
save('text_keys', kv(('SendTargets', 'All'), ('TargetName', 'a'), ('TargetName', 'b')))


# ---- cdb_parse: [sel][e 24-bit be][cdb][rest] ----
def cdb_seed(cdb, data=b'', expected=None, nexus=0):
    assert 6 <= len(cdb) <= 32
    sel = (len(cdb) - 6) | nexus << 5
    if expected is None:          # write-shaped: expected = Data-Out = rest
        sel |= 0 << 6
        e = 0
    else:                         # read-shaped: expected from e, no Data-Out
        sel |= 3 << 6
        e = expected
    save('cdb_parse', bytes([sel]) + e.to_bytes(3, 'big') + bytes(cdb) + data)


be16 = lambda v: v.to_bytes(2, 'big')
be32 = lambda v: v.to_bytes(4, 'big')
be64 = lambda v: v.to_bytes(8, 'big')

cdb_seed(b'\0' * 6, expected=0)                                   # TEST UNIT READY
cdb_seed(b'\x03\0\0\0\x12\0', expected=18)                         # REQUEST SENSE
cdb_seed(b'\x12\0\0\0\xff\0', expected=255)                        # INQUIRY
for page in (0x00, 0x80, 0x83, 0x86, 0xb0, 0xb1, 0xb2):
    cdb_seed(bytes([0x12, 1, page, 0, 0xff, 0]), expected=255)     # INQUIRY VPD
cdb_seed(b'\x25' + b'\0' * 9, expected=8)                          # READ CAPACITY(10)
cdb_seed(b'\x9e\x10' + b'\0' * 8 + be32(32) + b'\0\0', expected=32)  # READ CAPACITY(16)
cdb_seed(b'\x1a\0\x3f\0\xff\0', expected=255)                      # MODE SENSE(6)
cdb_seed(b'\x5a\0\x08\0\0\0\0' + be16(512) + b'\0', expected=512)  # MODE SENSE(10)
cdb_seed(b'\xa0\0\0\0\0\0' + be32(256) + b'\0\0', expected=256)    # REPORT LUNS
cdb_seed(b'\xa3\x0c\0\0\0\0' + be32(4096) + b'\0\0', expected=4096)  # REPORT SUPPORTED OPS
for lba, n in ((0, 1), (100, 8)):
    cdb_seed(b'\x28\0' + be32(lba) + b'\0' + be16(n) + b'\0', expected=512 * n)
    cdb_seed(b'\x2a\0' + be32(lba) + b'\0' + be16(n) + b'\0', bytes(range(256)) * 2 * n)
    cdb_seed(b'\x88\0' + be64(lba) + be32(n) + b'\0\0', expected=512 * n)
    cdb_seed(b'\x8a\x08' + be64(lba) + be32(n) + b'\0\0', b'\xa5' * 512 * n)
cdb_seed(b'\x35\0' + b'\0' * 8, expected=0)                        # SYNCHRONIZE CACHE(10)
cdb_seed(b'\x93\x08' + be64(16) + be32(8) + b'\0\0', b'\0' * 512)  # WRITE SAME(16) UNMAP
unmap = be16(22) + be16(16) + b'\0' * 4 + be64(32) + be32(16) + b'\0' * 4
cdb_seed(b'\x42\0\0\0\0\0\0' + be16(len(unmap)) + b'\0', unmap)    # UNMAP
cdb_seed(b'\x89\0' + be64(0) + b'\0\0\0\x01\0\0', b'\0' * 512 + b'\x5a' * 512)  # COMPARE AND WRITE
cdb_seed(b'\x8f\0' + be64(0) + be32(8) + b'\0\0', expected=0)      # VERIFY(16)
# PERSISTENT RESERVE OUT: REGISTER, RESERVE (WE), then IN READ KEYS / READ RESERVATION
key = be64(0x1122334455667788)
def pr_out(sa, typ, params, nexus=0):
    cdb_seed(bytes([0x5f, sa, typ, 0, 0]) + be32(len(params)) + b'\0', params, nexus=nexus)
pr_out(0x00, 0, be64(0) + key + b'\0' * 8)
pr_out(0x01, 0x01, key + be64(0) + b'\0' * 8)
pr_out(0x00, 0, be64(0) + be64(0x99) + b'\0' * 8, nexus=1)
pr_out(0x04, 0x01, be64(0x99) + key + b'\0' * 8, nexus=1)           # PREEMPT
pr_out(0x02, 0x01, key + be64(0) + b'\0' * 8)                       # RELEASE
for sa in (0, 1, 2, 3):
    cdb_seed(bytes([0x5e, sa, 0, 0, 0, 0, 0]) + be16(1024) + b'\0', expected=1024)
cdb_seed(b'\x16\0\0\0\0\0', expected=0)                            # RESERVE(6)
cdb_seed(b'\x17\0\0\0\0\0', expected=0)                            # RELEASE(6)
cdb_seed(b'\x08\0\0\x10\x01\0', expected=512)                      # READ(6)
cdb_seed(b'\xa3\x0a\0\0\0\0' + be32(4096) + b'\0\0', expected=4096)  # REPORT TARGET PORT GROUPS
print('seeds written')
