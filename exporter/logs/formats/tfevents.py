"""TensorBoard event files (``events.out.tfevents.*``), decoded without tensorflow or protobuf.

An event file is a sequence of TFRecords::

    uint64 length | uint32 masked_crc32c(length) | data[length] | uint32 masked_crc32c(data)

each holding one serialized ``tensorflow.Event``. Only the few protobuf fields a scalar needs are
read, with a small wire-format reader; images, histograms, graphs and text are skipped by length.

Scalars come in two shapes: ``simple_value`` (TF1, tensorboardX, ``torch.utils.tensorboard``) and
a one-element ``TensorProto`` (TF2's ``tf.summary.scalar``, ``add_scalar(new_style=True)``).

Corruption (a bad CRC, an absurd length, a torn write) is never fatal: the decoder counts it,
skips forward to the next byte position where a record header checks out, and carries on.
"""

from __future__ import annotations

import math
import re
import struct

from .base import Kind, ParseError, Record, is_eval_key

MAX_RECORD = 64 << 20  # larger is corruption, not a real event
_HEADER = 12  # length (8) + its masked CRC (4)
_FOOTER = 4

# ---- CRC32C (Castagnoli), table-driven. Pure Python runs at ~4-5 MB/s, so the data CRC is
# ---- checked only for records that yield scalars (~50 bytes each); images, histograms and
# ---- graphs, which can be megabytes, are skipped by length without being checksummed.


def _make_table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _make_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ---- protobuf wire format


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ParseError("bad varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """Yield (field number, wire type, value) for one message; bytes fields come as bytes."""
    pos, end = 0, len(buf)
    value: int | bytes
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:  # never valid; also stops a zero-filled blob being walked byte by byte
            raise ParseError("protobuf field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > end:
                raise ParseError("truncated fixed64")
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise ParseError("truncated length-delimited field")
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            if pos + 4 > end:
                raise ParseError("truncated fixed32")
            value, pos = buf[pos : pos + 4], pos + 4
        else:  # groups (3, 4) are not used by any of these messages
            raise ParseError(f"unsupported wire type {wire}")
        yield field, wire, value


def _packed(wire: int, value, fmt: str, size: int) -> list[float]:
    """A repeated numeric field, packed (one bytes blob) or not (one element per occurrence)."""
    if wire == 2:
        if len(value) % size:
            raise ParseError("bad packed field")
        return [v for (v,) in struct.iter_unpack("<" + fmt, value)]
    if wire == 0 or len(value) == size:
        return [value] if wire == 0 else [struct.unpack("<" + fmt, value)[0]]
    raise ParseError("bad repeated field")


def _packed_varints(wire: int, value) -> list[int]:
    if wire == 0:
        return [value]
    if wire != 2:
        raise ParseError("bad repeated varint field")
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(v)
    return out


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value >= 1 << (bits - 1) else value


# TensorProto dtype -> struct format of one element in tensor_content. bfloat16 is handled apart.
_DTYPES = {1: "f", 2: "d", 3: "i", 4: "B", 5: "h", 6: "b", 9: "q", 17: "H", 19: "e", 22: "I",
           23: "Q"}
_BFLOAT16 = 14


def _shape_size(buf: bytes) -> int | None:
    """Element count of a TensorShapeProto (dim=2 -> size=1); None if unknown."""
    count = 1
    for field, wire, value in _fields(buf):
        if field == 3 and wire == 0 and value:  # unknown_rank
            return None
        if field == 2 and wire == 2:
            size = 0
            for f, w, v in _fields(value):
                if f == 1 and w == 0:
                    size = _signed(v, 64)
            if size < 0:
                return None
            count *= size
    return count


def _tensor_scalar(buf: bytes) -> float | None:
    """The value of a one-element numeric TensorProto, or None for anything else."""
    dtype, content = 0, None
    count: int | None = 1
    vals: list[float] = []
    for field, wire, value in _fields(buf):
        if field == 1 and wire == 0:
            dtype = value
        elif field == 2 and wire == 2:
            count = _shape_size(value)
        elif field == 4 and wire == 2:
            content = value
        elif field == 5:  # float_val
            vals += _packed(wire, value, "f", 4)
        elif field == 6:  # double_val
            vals += _packed(wire, value, "d", 8)
        elif field in (7, 10):  # int_val (int32), int64_val
            vals += [_signed(v, 64) for v in _packed_varints(wire, value)]
        elif field in (16, 17):  # uint32_val, uint64_val
            vals += _packed_varints(wire, value)
        elif field == 13:  # half_val: fp16 or bfloat16 bits held in an int32
            for bits in _packed_varints(wire, value):
                if dtype == _BFLOAT16:
                    vals.append(struct.unpack("<f", struct.pack("<I", (bits & 0xFFFF) << 16))[0])
                else:
                    vals.append(struct.unpack("<e", struct.pack("<H", bits & 0xFFFF))[0])
    if count != 1:
        return None  # histograms, images as tensors, vectors: not a scalar
    if content is not None:
        if dtype == _BFLOAT16 and len(content) == 2:
            return struct.unpack("<f", b"\0\0" + content)[0]
        fmt = _DTYPES.get(dtype)
        if fmt is None or len(content) != struct.calcsize("<" + fmt):
            return None
        return float(struct.unpack("<" + fmt, content)[0])
    if dtype not in _DTYPES and dtype != _BFLOAT16:
        return None  # strings, bools, complex, resources
    # With version 0 semantics one element fills the whole (here one-element) shape.
    return float(vals[0]) if vals else None


def _summary_values(buf: bytes) -> dict[str, float]:
    values: dict[str, float] = {}
    for field, wire, value in _fields(buf):
        if field != 1 or wire != 2:
            continue
        tag, scalar, tensor = None, None, None
        for f, w, v in _fields(value):
            if f == 1 and w == 2:
                tag = v
            elif f == 2 and w == 5:
                scalar = struct.unpack("<f", v)[0]
            elif f == 8 and w == 2:
                tensor = v
        if scalar is None and tensor is not None:
            scalar = _tensor_scalar(tensor)
        if tag is None or scalar is None:
            continue
        try:
            values[tag.decode("utf-8")] = float(scalar)
        except UnicodeDecodeError:
            raise ParseError("tag is not UTF-8") from None
    return values


# The end-of-run aggregates that Hugging Face's TensorBoard callback writes under "train/" (its
# logs dict's keys, namespaced): the whole run's mean loss must not replace the last training loss.
_SUMMARY_TAGS = frozenset({"train/train_loss", "train/train_runtime", "train/train_samples_per_second",
                           "train/train_steps_per_second", "train/total_flos"})


def decode_event(data: bytes) -> Record | None:
    """One serialized Event -> a Record of its scalars, or None when it has none."""
    wall_time, step, summary = None, 0, None  # proto3 leaves step 0 out of the wire
    for field, wire, value in _fields(data):
        if field == 1 and wire == 1:
            wall_time = struct.unpack("<d", value)[0]
        elif field == 2 and wire == 0:
            step = _signed(value, 64)
        elif field == 5 and wire == 2:
            summary = value
    if summary is None:
        return None
    values = _summary_values(summary)
    if not values:
        return None
    kind = Kind.SUMMARY if _SUMMARY_TAGS.issuperset(values) else Kind.EVAL if all(map(is_eval_key, values)) \
        else Kind.TRAIN
    if wall_time is not None and not math.isfinite(wall_time):
        wall_time = None
    return Record(values=values, kind=kind, step=step, wall_time=wall_time)


# ---- framing

# A plausible header has a length below MAX_RECORD: its upper 4 bytes are zero. Used to jump
# from candidate to candidate at C speed while resynchronising.
_NONZERO = re.compile(rb"[^\x00]")


def _header_ok(buf: bytearray | bytes, pos: int) -> int | None:
    """The record length if a valid header starts at pos, else None."""
    (length,) = struct.unpack_from("<Q", buf, pos)
    if length > MAX_RECORD:
        return None
    (crc,) = struct.unpack_from("<I", buf, pos + 8)
    return length if masked_crc32c(bytes(buf[pos : pos + 8])) == crc else None


class TfEventsDecoder:
    """Incremental decoder: feed it bytes as the file grows, get Records back.

    ``feed`` never raises. Each corrupt stretch or undecodable record is counted in
    ``error_count`` and kept, as a ParseError, for ``pop_errors`` so the caller can count it.
    """

    name = "tensorboard"

    def __init__(self) -> None:
        self._buf = bytearray()
        self._resyncing = False
        self._errors: list[ParseError] = []
        self.error_count = 0

    def pop_errors(self) -> list[ParseError]:
        errors, self._errors = self._errors, []
        return errors

    def _error(self, message: str) -> None:
        self.error_count += 1
        if len(self._errors) < 100:  # bounded even if nobody collects them
            self._errors.append(ParseError(message))

    def feed(self, data: bytes) -> list[Record]:
        self._buf += data
        buf = self._buf
        records: list[Record] = []
        pos = 0
        while len(buf) - pos >= _HEADER:
            length = _header_ok(buf, pos)
            if length is None:
                if not self._resyncing:
                    self._error(f"bad record header at buffered offset {pos}")
                    self._resyncing = True
                pos = self._next_candidate(buf, pos + 1)
                continue
            self._resyncing = False
            end = pos + _HEADER + length + _FOOTER
            if end > len(buf):
                break  # the rest of this record has not been written yet
            payload = bytes(buf[pos + _HEADER : end - _FOOTER])
            (data_crc,) = struct.unpack_from("<I", buf, end - _FOOTER)
            pos = end
            try:
                record = decode_event(payload)
                # Verify the data CRC only where it matters: records that produce values.
                if record is not None and masked_crc32c(payload) != data_crc:
                    raise ParseError("bad record data CRC")
            except ParseError as exc:
                self._error(str(exc))
                continue
            if record is not None:
                records.append(record)
        del buf[:pos]
        return records

    @staticmethod
    def _next_candidate(buf: bytearray, pos: int) -> int:
        """The next offset at or after pos that might start a header (or where to wait)."""
        limit = len(buf) - _HEADER
        while pos <= limit:
            # Skip long zero runs at once (preallocated or torn files are often zero-filled):
            # a window of twelve zero bytes is never a valid header.
            if buf[pos] == 0 and buf[pos : pos + _HEADER] == bytes(_HEADER):
                found = _NONZERO.search(buf, pos)
                if found is None:
                    return max(pos, len(buf) - _HEADER + 1)
                pos = max(pos + 1, found.start() - _HEADER + 1)
                continue
            # The high four bytes of a real length are zero: find the next such spot.
            zeros = buf.find(b"\0\0\0\0", pos + 4)
            if zeros < 0:
                return max(pos, len(buf) - _HEADER + 1)
            pos = max(pos, zeros - 4)
            if pos > limit:
                break
            if buf[pos + 3] <= (MAX_RECORD >> 24) and _header_ok(buf, pos) is not None:
                return pos
            pos += 1
        return pos


def parse_bytes(data: bytes) -> list[Record]:
    """Decode a whole event file; corrupt parts are skipped (use TfEventsDecoder to count them)."""
    return TfEventsDecoder().feed(data)
