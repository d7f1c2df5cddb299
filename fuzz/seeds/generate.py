#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets into the directories beside this script.

Seeds are small valid inputs that let the fuzzer start deep in each format instead of
rediscovering it: segment frames and files (storage-node/FORMAT.md), protobuf messages
(logbook/proto/tally.proto), JSON group events, invocation records. Run it again after a
format changes: `python3 fuzz/seeds/generate.py`.
"""

import json
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
SEPARATOR = b"TALLYSEG"  # fuzz_targets/segment_recovery.rs


def write(target, name, data):
    os.makedirs(os.path.join(HERE, target), exist_ok=True)
    with open(os.path.join(HERE, target, name), "wb") as f:
        f.write(data)


# ---- segment frames (storage-node/src/codec.rs) ----

def seq(view, position):
    return (view << 48) | position


def metalog(position, view, start, cuts):
    out = struct.pack("<QHQI", position, view, seq(view, start), len(cuts))
    for shard, first, delta in cuts:
        out += struct.pack("<IQQ", shard, first, delta)
    return out


def opt_metalog(entry):
    return b"\x00" if entry is None else b"\x01" + entry


def frame(kind, body):
    payload = bytes([kind]) + body
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def header(segment, max_view, last, shards):
    body = struct.pack("<IQH", 1, segment, max_view) + opt_metalog(last)
    body += struct.pack("<I", len(shards))
    for shard, view, next_counter in shards:
        body += struct.pack("<IHQ", shard, view, next_counter)
    return frame(1, body)


def record(shard, view, counter, book, tags, data, kind=b"\x00"):
    body = struct.pack("<IQI", shard, (view << 48) | counter, book) + kind
    body += struct.pack("<H", len(tags)) + b"".join(struct.pack("<Q", t) for t in tags)
    return frame(2, body + struct.pack("<I", len(data)) + data)


def cond(tag, position):
    return b"\x01" + struct.pack("<QQ", tag, position)


def trim(tag, below):
    return b"\x02" + struct.pack("<QQ", tag, below)


def checkpoint(below, data, last):
    return frame(4, struct.pack("<QI", below, len(data)) + data + opt_metalog(last))


entry0 = metalog(0, 1, 0, [(0, 0, 2)])
entry1 = metalog(1, 1, 2, [(0, 2, 1), (1, 0, 1)])
seg0 = (
    header(0, 1, None, [])
    + record(0, 1, 0, 0, [7], b"first")
    + record(0, 1, 1, 0, [7, 8], b"second", cond(7, 1))
    + frame(3, entry0)
    + record(0, 1, 2, 3, [], b"", trim(0, seq(1, 1)))
    + record(1, 1, 0, 0, [9], b"other shard")
    + frame(3, entry1)
)
seg1 = (
    header(1, 1, entry1, [(0, 1, 3), (1, 1, 1)])
    + checkpoint(seq(1, 2), b'{"books":{}}', entry1)
    + record(0, 2, 0, 0, [7], b"new view")
)

frames = {
    "header": header(0, 1, entry1, [(0, 1, 3)]),
    "record": record(0, 1, 0, 0, [7], b"data"),
    "record-cond": record(0, 1, 1, 0, [7, 8], b"c", cond(7, 1)),
    "record-trim": record(0, 1, 2, 0, [], b"", trim(7, seq(1, 1))),
    "metalog": frame(3, entry1),
    "checkpoint": checkpoint(seq(1, 2), b"{}", entry0),
}
for name, data in frames.items():
    # codec_decode tries each input as it is and as the kind and body of a frame.
    write("codec_decode", name, data)
    write("codec_decode", name + "-body", data[8:])

# segment_recovery: a flags byte (bit i: fix the CRCs of file i; bits 5..7: the first
# segment's number), then the files separated by SEPARATOR.
write("segment_recovery", "one-segment", b"\x01" + seg0)
write("segment_recovery", "two-segments", b"\x03" + seg0 + SEPARATOR + seg1)
write("segment_recovery", "torn-tail", b"\x01" + seg0 + seg1[:-3])
write("segment_recovery", "zero-tail", b"\x01" + seg0 + bytes(64))
write("segment_recovery", "reclaimed-prefix", b"\x22" + seg0 + SEPARATOR + seg1)
# Found by the fuzzer: a CRC-valid metalog entry whose cuts overflow (recovery panicked).
write("segment_recovery", "metalog-overflow", b"\x01" + seg0 + frame(3, metalog(2, 1, 3, [(0, 3, 2**64 - 1), (1, 1, 2)])))


# ---- protobuf (logbook/proto/tally.proto) ----

def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field_varint(number, value):
    return varint(number << 3) + varint(value)


def field_bytes(number, data):
    return varint((number << 3) | 2) + varint(len(data)) + data


def pb_entry(position, view, start, cuts):
    out = field_varint(1, position) + field_varint(2, view) + field_varint(3, seq(view, start))
    for shard, first, delta in cuts:
        out += field_bytes(4, field_varint(1, shard) + field_varint(2, first) + field_varint(3, delta))
    return out


def pb_view(view):
    out = field_varint(1, view) + field_varint(2, 5) + field_varint(3, 2)
    out += field_bytes(4, field_varint(1, 20) + field_bytes(2, varint(10) + varint(11)))
    out += field_bytes(5, field_varint(1, 20) + field_varint(2, 99) + field_bytes(3, b"127.0.0.1:8080"))
    out += field_bytes(6, field_varint(1, 10) + field_bytes(2, b"127.0.0.1:7100"))
    return out


def pb_record(book, tags, data, cond=None, trim=None):
    out = field_varint(1, book)
    if tags:
        out += field_bytes(2, b"".join(varint(t) for t in tags))
    out += field_bytes(3, data)
    if cond:
        out += field_bytes(4, field_varint(1, cond[0]) + field_varint(2, cond[1]))
    if trim:
        out += field_bytes(5, field_varint(1, trim[0]) + field_varint(2, trim[1]))
    return out


write("rpc_decode", "event-metalog", field_varint(1, 3) + field_bytes(2, pb_entry(5, 2, 10, [(20, 3, 4), (21, 0, 1)])))
write("rpc_decode", "event-view", field_varint(1, 4) + field_bytes(3, pb_view(2)))
write("rpc_decode", "metalog-entry", pb_entry(1, 1, 0, [(0, 0, 2)]))
# Found by the fuzzer: entries that a gateway's engine panicked on.
write("rpc_decode", "shard-cut-twice", pb_entry(1, 1, 0, [(0, 0, 2), (0, 0, 2)]))
write("rpc_decode", "counter-past-view", pb_entry(1, 1, 0, [(0, 2**48, 1)]))
write("rpc_decode", "replicate-batch",
      field_varint(1, 20) + field_varint(2, (1 << 48) | 7)
      + field_bytes(3, pb_record(0, [7], b"x")) + field_bytes(3, pb_record(1, [7, 8], b"y", cond=(7, 0))))
write("rpc_decode", "fetch-reply",
      field_bytes(1, field_varint(1, seq(1, 4)) + field_varint(2, 20) + field_varint(3, 3)
                  + field_bytes(4, pb_record(0, [], b"", trim=(0, seq(1, 2)))))
      + field_varint(2, 9))
write("rpc_decode", "progress-report",
      field_varint(1, 10) + field_bytes(2, field_varint(1, 20) + field_varint(2, 1) + field_varint(3, 8)) + field_varint(3, 4))


# ---- JSON group events (logbook::wire::GroupEvent, the sequencer's Raft entries) ----

view_json = {
    "id": 2,
    "start_position": 5,
    "write_quorum": 2,
    "shards": {"20": [10, 11]},
    "gateways": {"20": {"incarnation": 99, "http_addr": "127.0.0.1:8080"}},
    "storage": {"10": "127.0.0.1:7100", "11": "127.0.0.1:7101"},
}
metalog_json = {
    "position": 5,
    "view": 2,
    "start_seqnum": seq(2, 10),
    "cuts": [{"shard": 20, "start": 3, "delta": 4}],
}
write("group_event_json", "metalog", json.dumps({"Metalog": metalog_json}).encode())
write("group_event_json", "view", json.dumps({"View": view_json}).encode())
write("group_event_json", "bare-view", json.dumps(view_json).encode())


# ---- invocation records (gateway/src/invocations.rs) ----

def invocation(entry, payload):
    header = json.dumps(entry).encode()
    return struct.pack("<I", len(header)) + header + payload


write("invocation_record", "owner", invocation({"kind": "owner", "name": "g20.0000000000000063", "at_ms": 1}, b""))
write("invocation_record", "accepted", invocation({
    "kind": "accepted", "id": "0000000100000002", "function": "echo", "book": 0, "owner": 1,
    "key": {"scope": "echo\u00000\u0000k", "generation": 0}, "input_hash": 42, "retried": True,
    "depth": 0, "at_ms": 1}, b"input"))
write("invocation_record", "claimed", invocation({"kind": "claimed", "id": "0000000100000002", "owner": 3, "at_ms": 2}, b""))
write("invocation_record", "finished", invocation({
    "kind": "finished", "id": "0000000100000002", "owner": 1, "ok": True, "bad_input": False,
    "unavailable": False, "attempts": 1, "started_at_ms": 1, "at_ms": 2}, b"output"))
write("invocation_record", "retired", invocation({"kind": "retired", "owner": 1, "at_ms": 3}, b""))
