"""A small strict ANSI/NIST-ITL 1-2011 reader written from the standard's traditional encoding,
sharing nothing with nistitl (which the kiosk writes with). PyPI has no maintained ANSI/NIST
parser besides nistitl, so the tests read transactions with this one as well.

Layout: records of tagged fields ``T.NNN:value``; fields end with GS (0x1D), the record with
FS (0x1C) in place of its last GS; field T.001 (LEN) is the record's length in bytes, FS
included; field 999 (image data) is last and binary up to the FS. Inside text fields, RS
(0x1E) separates subfields and US (0x1F) items. Field 1.003 (CNT) lists every record after
Type-1 as (type, IDC). Text is 7-bit ASCII unless 1.015 (DCS) declares character set index 3,
UTF-8; either way it is decoded strictly, so a wrong byte fails the test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FS, GS, RS, US = b"\x1c", b"\x1d", b"\x1e", b"\x1f"
TAG = re.compile(rb"(\d{1,2})\.(\d{3}):")


@dataclass
class Record:
    type: int
    fields: dict[int, bytes]


class Transaction:
    def __init__(self, records: list[Record]) -> None:
        self.records = records
        dcs = records[0].fields.get(15)
        self.encoding = "ascii"
        if dcs is not None:
            sets = [sub.split(US) for sub in dcs.split(RS)]
            if [b"3", b"UTF-8"] not in [s[:2] for s in sets]:
                raise ValueError(f"DCS {dcs!r} declares no UTF-8 (index 3)")
            self.encoding = "utf-8"

    def text(self, record: Record, field: int) -> str:
        return record.fields[field].decode(self.encoding, errors="strict")

    def items(self, record: Record, field: int) -> list[list[str]]:
        return [[item.decode(self.encoding) for item in sub.split(US)]
                for sub in record.fields[field].split(RS)]

    def of_type(self, kind: int) -> list[Record]:
        return [r for r in self.records if r.type == kind]


def _record(data: bytes, pos: int) -> tuple[Record, int]:
    head = TAG.match(data, pos)
    if head is None or int(head.group(2)) != 1:
        raise ValueError(f"record at byte {pos} does not start with its LEN field")
    end_of_len = data.find(GS, head.end())
    length = int(data[head.end():end_of_len])
    record = data[pos:pos + length]
    if len(record) != length or not record.endswith(FS):
        raise ValueError(f"record at byte {pos}: LEN {length} does not end on FS")
    kind, fields, cur, body = int(head.group(1)), {}, 0, record[:-1]
    while cur < len(body):
        tag = TAG.match(body, cur)
        if tag is None or int(tag.group(1)) != kind:
            raise ValueError(f"bad tag in a Type-{kind} record at byte {pos + cur}")
        number = int(tag.group(2))
        if fields and number <= max(fields):
            raise ValueError(f"field {kind}.{number:03d} out of order")
        if number == 999:  # binary image data: runs to the record's end
            fields[number], cur = body[tag.end():], len(body)
            continue
        stop = body.find(GS, tag.end())
        stop = len(body) if stop < 0 else stop
        fields[number], cur = body[tag.end():stop], stop + 1
    if int(fields[1]) != length:
        raise ValueError("LEN disagrees with the record")
    return Record(kind, fields), pos + length


def read(data: bytes) -> Transaction:
    records, pos = [], 0
    while pos < len(data):
        record, pos = _record(data, pos)
        records.append(record)
    if not records or records[0].type != 1:
        raise ValueError("a transaction starts with its Type-1 record")
    cnt = [sub.split(US) for sub in records[0].fields[3].split(RS)]
    if cnt[0] != [b"1", str(len(records) - 1).encode()]:
        raise ValueError(f"CNT counts {cnt[0]!r}, have {len(records) - 1} records after Type-1")
    listed = [(int(t), int(idc)) for t, idc in cnt[1:]]
    present = [(r.type, int(r.fields[2])) for r in records[1:]]
    if listed != present:
        raise ValueError(f"CNT lists {listed}, the transaction holds {present}")
    return Transaction(records)
