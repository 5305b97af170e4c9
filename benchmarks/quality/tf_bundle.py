"""TensorFlow TensorBundle checkpoints read and written with numpy alone.

A bundle is ``<prefix>.index``, an SSTable (LevelDB's table format, which TensorFlow forked)
mapping each variable name to a ``BundleEntryProto``, plus ``<prefix>.data-NNNNN-of-NNNNN``
shards holding the raw little-endian tensor bytes those entries point into. The key ``""``
holds the ``BundleHeaderProto``.

This module owns both directions of that format: :class:`BundleReader` for checkpoints that
TensorFlow wrote (TensorFlow itself is never imported), and :func:`write_bundle`, a single-shard
writer producing what ``BundleWriter`` writes, so tests can build checkpoints of their own.
Only what reading model weights needs is supported: uncompressed table blocks, unsliced
tensors of fixed-size dtypes. Anything else is refused by name rather than misread.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_LENGTH = 48  # two BlockHandles padded to 40 bytes, then the 8-byte magic
BLOCK_TRAILER_LENGTH = 5  # compression type byte + masked crc32c
HANDLE_AREA_LENGTH = FOOTER_LENGTH - 8
COMPRESSION_NAMES = {0: "none", 1: "snappy", 2: "zlib", 3: "bzip2", 4: "lz4", 7: "zstd"}
HEADER_KEY = b""

# DataType enum values of tensorflow/core/framework/types.proto with a fixed element size.
DTYPES: dict[int, np.dtype[np.generic]] = {
    1: np.dtype("<f4"),
    2: np.dtype("<f8"),
    3: np.dtype("<i4"),
    4: np.dtype("u1"),
    5: np.dtype("<i2"),
    6: np.dtype("i1"),
    9: np.dtype("<i8"),
    10: np.dtype("?"),
    17: np.dtype("<u2"),
    19: np.dtype("<f2"),
    22: np.dtype("<u4"),
    23: np.dtype("<u8"),
}
DT_BFLOAT16 = 14
DTYPE_NAMES = {7: "string", 14: "bfloat16", 20: "resource", 21: "variant"}
DTYPE_CODES = {dtype: code for code, dtype in DTYPES.items()}


class BundleFormatError(ValueError):
    """The file is not a TensorBundle this reader understands; the message says why."""


# --- crc32c (Castagnoli), masked the way LevelDB and TensorFlow store it -------------------


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C of ``data``; pure Python, so meant for index blocks and small tensors only."""
    crc ^= 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def mask_crc(crc: int) -> int:
    # Stored CRCs are rotated and offset so that a CRC of data containing CRCs stays strong.
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    rotated = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rotated >> 17) | (rotated << 15)) & 0xFFFFFFFF


# --- varints and the few protobuf messages a bundle holds ----------------------------------


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``buf[pos:]`` and the position after it."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise BundleFormatError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise BundleFormatError("varint longer than 64 bits")


def encode_varint(value: int) -> bytes:
    if value < 0:
        value &= 0xFFFFFFFFFFFFFFFF  # protobuf encodes negative int64 as ten-byte two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def proto_fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) for each field of a serialized message; fixed-width fields come
    back as ints, length-delimited ones as bytes."""
    pos = 0
    while pos < len(buf):
        tag, pos = read_varint(buf, pos)
        number, wire_type = tag >> 3, tag & 7
        value: int | bytes
        if wire_type == 0:
            value, pos = read_varint(buf, pos)
        elif wire_type == 1:
            (value,) = struct.unpack_from("<Q", buf, pos)
            pos += 8
        elif wire_type == 2:
            length, pos = read_varint(buf, pos)
            value = buf[pos : pos + length]
            if len(value) != length:
                raise BundleFormatError("truncated length-delimited protobuf field")
            pos += length
        elif wire_type == 5:
            (value,) = struct.unpack_from("<I", buf, pos)
            pos += 4
        else:
            raise BundleFormatError(f"unsupported protobuf wire type {wire_type}")
        yield number, value


def _varint_field(number: int, value: int) -> bytes:
    # proto3 leaves fields at their default out of the serialized message.
    return encode_varint(number << 3) + encode_varint(value) if value else b""


def _bytes_field(number: int, value: bytes) -> bytes:
    return encode_varint(number << 3 | 2) + encode_varint(len(value)) + value


@dataclass(frozen=True)
class BundleHeader:
    """``BundleHeaderProto``: shard count, byte order (0 little, 1 big) and format version."""

    num_shards: int = 1
    endianness: int = 0
    version_producer: int = 1

    @classmethod
    def parse(cls, buf: bytes) -> BundleHeader:
        num_shards = endianness = producer = 0
        for number, value in proto_fields(buf):
            if number == 1 and isinstance(value, int):
                num_shards = value
            elif number == 2 and isinstance(value, int):
                endianness = value
            elif number == 3 and isinstance(value, bytes):
                for sub_number, sub_value in proto_fields(value):
                    if sub_number == 1 and isinstance(sub_value, int):
                        producer = sub_value
        return cls(num_shards, endianness, producer)

    def serialize(self) -> bytes:
        version = _varint_field(1, self.version_producer)
        return (
            _varint_field(1, self.num_shards)
            + _varint_field(2, self.endianness)
            + _bytes_field(3, version)
        )


@dataclass(frozen=True)
class TensorEntry:
    """``BundleEntryProto``: where one tensor's bytes are and what they hold."""

    dtype: int
    shape: tuple[int, ...]
    shard_id: int = 0
    offset: int = 0
    size: int = 0
    crc32c: int | None = None  # masked, as stored
    num_slices: int = 0

    @classmethod
    def parse(cls, buf: bytes) -> TensorEntry:
        values: dict[str, int] = {"dtype": 0, "shard_id": 0, "offset": 0, "size": 0}
        shape: tuple[int, ...] = ()
        crc: int | None = None
        num_slices = 0
        names = {1: "dtype", 3: "shard_id", 4: "offset", 5: "size"}
        for number, value in proto_fields(buf):
            if number in names and isinstance(value, int):
                values[names[number]] = value
            elif number == 2 and isinstance(value, bytes):
                shape = _parse_shape(value)
            elif number == 6 and isinstance(value, int):
                crc = value
            elif number == 7:
                num_slices += 1
        return cls(shape=shape, crc32c=crc, num_slices=num_slices, **values)

    def serialize(self) -> bytes:
        shape = b"".join(_bytes_field(2, _varint_field(1, size)) for size in self.shape)
        out = _varint_field(1, self.dtype) + _bytes_field(2, shape)
        out += _varint_field(3, self.shard_id) + _varint_field(4, self.offset)
        out += _varint_field(5, self.size)
        if self.crc32c is not None:
            out += encode_varint(6 << 3 | 5) + struct.pack("<I", self.crc32c)
        return out


def _parse_shape(buf: bytes) -> tuple[int, ...]:
    """``TensorShapeProto``: repeated Dim (field 2), each with its size in field 1."""
    dims: list[int] = []
    for number, value in proto_fields(buf):
        if number == 2 and isinstance(value, bytes):
            size = 0
            for dim_number, dim_value in proto_fields(value):
                if dim_number == 1 and isinstance(dim_value, int):
                    size = dim_value
            dims.append(size)
        elif number == 3 and value:
            raise BundleFormatError("tensor shape of unknown rank")
    return tuple(dims)


# --- SSTable blocks -----------------------------------------------------------------------


def _decode_handle(buf: bytes, pos: int) -> tuple[int, int, int]:
    """A BlockHandle (offset, size) and the position after it."""
    offset, pos = read_varint(buf, pos)
    size, pos = read_varint(buf, pos)
    return offset, size, pos


def _encode_handle(offset: int, size: int) -> bytes:
    return encode_varint(offset) + encode_varint(size)


def _read_block(table: bytes, offset: int, size: int, what: str) -> bytes:
    """The contents of the block at ``offset``, its trailer's type and crc checked."""
    end = offset + size
    if end + BLOCK_TRAILER_LENGTH > len(table):
        raise BundleFormatError(f"{what} block at {offset} runs past the end of the file")
    compression = table[end]
    if compression != 0:
        name = COMPRESSION_NAMES.get(compression, "unknown")
        raise BundleFormatError(
            f"{what} block at {offset} is compressed ({name}, type {compression}); only "
            "uncompressed tables are supported, which is what TensorFlow writes for bundles"
        )
    (stored,) = struct.unpack_from("<I", table, end + 1)
    # The crc covers the contents and the type byte; index files are small, so always check.
    if unmask_crc(stored) != crc32c(table[offset : end + 1]):
        raise BundleFormatError(f"{what} block at {offset} fails its crc32c check")
    return table[offset:end]


def block_entries(block: bytes) -> tuple[list[tuple[bytes, bytes]], int]:
    """The (key, value) pairs of a block and its number of restart points.

    Keys are prefix-compressed against the previous key; a restart point is an entry that
    stores its key whole. Each one is checked to sit on an entry boundary with no shared
    prefix, which catches a misread restart array rather than returning garbled keys.
    """
    if len(block) < 4:
        raise BundleFormatError("block too short for its restart count")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    restarts_at = len(block) - 4 - 4 * num_restarts
    if num_restarts < 1 or restarts_at < 0:
        raise BundleFormatError(f"block has an invalid restart count {num_restarts}")
    restarts = set(struct.unpack_from(f"<{num_restarts}I", block, restarts_at))
    entries: list[tuple[bytes, bytes]] = []
    key = b""
    pos = 0
    while pos < restarts_at:
        entry_start = pos
        shared, pos = read_varint(block, pos)
        unshared, pos = read_varint(block, pos)
        value_length, pos = read_varint(block, pos)
        if entry_start in restarts and shared:
            raise BundleFormatError(f"restart point at {entry_start} shares a key prefix")
        if shared > len(key) or pos + unshared + value_length > restarts_at:
            raise BundleFormatError(f"corrupt block entry at {entry_start}")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        entries.append((key, block[pos : pos + value_length]))
        pos += value_length
        restarts.discard(entry_start)
    if restarts:
        raise BundleFormatError(f"restart points {sorted(restarts)} are not entry boundaries")
    return entries, num_restarts


@dataclass
class Table:
    """Every (key, value) of an SSTable in key order, and how it was laid out."""

    entries: list[tuple[bytes, bytes]]
    restarts_per_block: list[int] = field(default_factory=list)


def read_table(data: bytes) -> Table:
    """Parse a whole SSTable held in memory (a bundle index is a few tens of kilobytes)."""
    if len(data) < FOOTER_LENGTH:
        raise BundleFormatError(f"{len(data)} bytes is too short for an SSTable footer")
    footer = data[-FOOTER_LENGTH:]
    (magic,) = struct.unpack_from("<Q", footer, HANDLE_AREA_LENGTH)
    if magic != TABLE_MAGIC:
        raise BundleFormatError(
            f"bad SSTable magic number {magic:#018x} (expected {TABLE_MAGIC:#018x}): "
            "not a TensorFlow checkpoint index, or truncated"
        )
    _, _, pos = _decode_handle(footer, 0)  # the metaindex holds no filters in a bundle
    index_offset, index_size, _ = _decode_handle(footer, pos)
    index, _ = block_entries(_read_block(data, index_offset, index_size, "index"))
    table = Table(entries=[])
    for _, handle in index:
        offset, size, _ = _decode_handle(handle, 0)
        entries, restarts = block_entries(_read_block(data, offset, size, "data"))
        table.entries.extend(entries)
        table.restarts_per_block.append(restarts)
    return table


class _BlockBuilder:
    """LevelDB's block builder: prefix-compressed entries, a restart every N entries."""

    def __init__(self, restart_interval: int) -> None:
        self.restart_interval = restart_interval
        self.buffer = bytearray()
        self.restarts = [0]
        self.counter = 0
        self.last_key = b""

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self.counter < self.restart_interval:
            limit = min(len(key), len(self.last_key))
            while shared < limit and key[shared] == self.last_key[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buffer))
            self.counter = 0
        self.buffer += encode_varint(shared) + encode_varint(len(key) - shared)
        self.buffer += encode_varint(len(value)) + key[shared:] + value
        self.last_key = key
        self.counter += 1

    def size(self) -> int:
        return len(self.buffer) + 4 * len(self.restarts) + 4

    def finish(self) -> bytes:
        restarts = struct.pack(f"<{len(self.restarts)}I", *self.restarts)
        return bytes(self.buffer) + restarts + struct.pack("<I", len(self.restarts))


def write_table(
    entries: list[tuple[bytes, bytes]], *, block_size: int = 4096, restart_interval: int = 16
) -> bytes:
    """An uncompressed SSTable of ``entries`` (sorted by key, no duplicates)."""
    keys = [key for key, _ in entries]
    if keys != sorted(set(keys)):
        raise ValueError("SSTable keys must be unique and given in sorted order")
    out = bytearray()
    index = _BlockBuilder(restart_interval=1)

    def emit(block: _BlockBuilder) -> bytes:
        contents = block.finish() + b"\x00"  # type byte 0: no compression
        handle = _encode_handle(len(out), len(contents) - 1)
        out.extend(contents + struct.pack("<I", mask_crc(crc32c(contents))))
        return handle

    data = _BlockBuilder(restart_interval)
    for key, value in entries:
        data.add(key, value)
        if data.size() >= block_size:
            # The block's last key is a valid separator: >= its keys, < the next block's.
            index.add(data.last_key, emit(data))
            data = _BlockBuilder(restart_interval)
    if data.counter:
        index.add(data.last_key, emit(data))
    metaindex_handle = emit(_BlockBuilder(restart_interval))
    index_handle = emit(index)
    handles = (metaindex_handle + index_handle).ljust(HANDLE_AREA_LENGTH, b"\x00")
    out.extend(handles + struct.pack("<Q", TABLE_MAGIC))
    return bytes(out)


# --- bundles ------------------------------------------------------------------------------


def index_path(prefix: Path) -> Path:
    return prefix.with_name(prefix.name + ".index")


def data_path(prefix: Path, shard: int, num_shards: int) -> Path:
    return prefix.with_name(f"{prefix.name}.data-{shard:05d}-of-{num_shards:05d}")


class BundleReader:
    """The variables of the bundle at ``prefix`` (the path without ``.index``)."""

    def __init__(self, prefix: str | Path, *, verify_data_checksums: bool = False) -> None:
        self.prefix = Path(prefix)
        # Data crc32c checks run in pure Python (~1 MB/s): fine for tests, not for 400 MB.
        self.verify_data_checksums = verify_data_checksums
        path = index_path(self.prefix)
        if not path.is_file():
            raise BundleFormatError(f"no checkpoint index at {path}")
        table = read_table(path.read_bytes())
        if not table.entries or table.entries[0][0] != HEADER_KEY:
            raise BundleFormatError(f"{path} has no bundle header entry")
        self.header = BundleHeader.parse(table.entries[0][1])
        if self.header.endianness != 0:
            raise BundleFormatError(f"{path} holds big-endian tensors, which are not supported")
        self.entries = {
            key.decode("utf-8"): TensorEntry.parse(value) for key, value in table.entries[1:]
        }

    def names(self) -> list[str]:
        return sorted(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name].shape

    def read(self, name: str) -> npt.NDArray[np.generic]:
        """The tensor ``name``; bfloat16 comes back widened to float32 (numpy has none)."""
        entry = self.entries.get(name)
        if entry is None:
            raise KeyError(f"no variable {name!r} in {self.prefix}")
        if entry.num_slices:
            raise BundleFormatError(f"{name} is saved in {entry.num_slices} slices: unsupported")
        stored = np.dtype("<u2") if entry.dtype == DT_BFLOAT16 else DTYPES.get(entry.dtype)
        if stored is None:
            kind = DTYPE_NAMES.get(entry.dtype, "unknown")
            raise BundleFormatError(f"{name} has dtype {kind} (enum {entry.dtype}): unsupported")
        count = int(np.prod(entry.shape, dtype=np.int64))
        if count * stored.itemsize != entry.size:
            raise BundleFormatError(
                f"{name}: entry says {entry.size} bytes, shape {entry.shape} of "
                f"{stored} needs {count * stored.itemsize}"
            )
        array = self._read_bytes(name, entry, stored, count)
        if entry.dtype == DT_BFLOAT16:
            # bfloat16 is the upper half of a float32.
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array.reshape(entry.shape)

    def _read_bytes(
        self, name: str, entry: TensorEntry, stored: np.dtype[np.generic], count: int
    ) -> npt.NDArray[np.generic]:
        shard = data_path(self.prefix, entry.shard_id, self.header.num_shards)
        with shard.open("rb") as file:
            file.seek(entry.offset)
            if not self.verify_data_checksums:
                array = np.fromfile(file, dtype=stored, count=count)
            else:
                raw = file.read(entry.size)
                if entry.crc32c is not None and unmask_crc(entry.crc32c) != crc32c(raw):
                    raise BundleFormatError(f"{name} fails its crc32c check in {shard}")
                array = np.frombuffer(raw, dtype=stored, count=count).copy()
        if array.size != count:
            raise BundleFormatError(f"{name}: {shard} ends before the tensor does")
        return array


def write_bundle(
    prefix: str | Path,
    tensors: Mapping[str, npt.NDArray[np.generic]],
    *,
    block_size: int = 4096,
    restart_interval: int = 16,
) -> None:
    """Write ``tensors`` as a single-shard bundle at ``prefix``, laid out as TensorFlow does."""
    prefix = Path(prefix)
    entries: list[tuple[bytes, bytes]] = [(HEADER_KEY, BundleHeader().serialize())]
    offset = 0
    with data_path(prefix, 0, 1).open("wb") as data:
        for name in sorted(tensors):
            array = np.asarray(tensors[name])  # tobytes() below writes C order regardless
            code = DTYPE_CODES.get(array.dtype.newbyteorder("<"))
            if code is None:
                raise ValueError(f"{name}: dtype {array.dtype} cannot be written to a bundle")
            raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            entry = TensorEntry(
                code, tuple(array.shape), 0, offset, len(raw), mask_crc(crc32c(raw))
            )
            entries.append((name.encode("utf-8"), entry.serialize()))
            data.write(raw)
            offset += len(raw)
    table = write_table(entries, block_size=block_size, restart_interval=restart_interval)
    index_path(prefix).write_bytes(table)
