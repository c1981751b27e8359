"""A BARE codec driven by a schema table (``schema_v8.TYPES``), for the Rivet engine's envoy
protocol.

BARE (https://baremessages.org): unsigned varints for lengths, little-endian fixed-width
integers, length-prefixed ``data`` and UTF-8 ``str``, a one-byte presence flag for optionals,
a tag before a union's value, no framing of its own (one WebSocket message is one value).

Values in Python: a struct is a ``dict`` of its fields, a union an :class:`Variant` (``tag``
is the variant's type name, ``val`` its value or None for a void variant), an enum its member
name (``str``), an optional None or the value, a list a ``list``, a map a ``dict``, ``data``
and fixed data ``bytes``, integers ``int``. Each type's encoder and decoder are closures made
once, at import, from the table: no schema lookups per message.

Bad input raises :class:`BareError` (never IndexError or struct.error): truncated data, an
unknown union tag or enum value, a bool that is neither 0 nor 1, invalid UTF-8, a duplicate
map key, trailing bytes, a varint longer than 10 bytes, or a value that does not fit its type
when encoding.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final

import attrs

from .schema_v8 import TYPES, VERSION

__all__ = ["VERSION", "BareError", "Variant", "decode", "encode"]


class BareError(ValueError):
    """Bytes that are not a valid value of the expected type (or a value that cannot be
    encoded as it)."""


@attrs.frozen(slots=True)
class Variant:
    """A union's value: ``tag`` names the variant, ``val`` is its value (None if void)."""

    tag: str
    val: Any = None


_Reader = Callable[[memoryview, int], tuple[Any, int]]
_Writer = Callable[[bytearray, Any], None]

_FIXED: Final = {
    "u8": struct.Struct("<B"),
    "u16": struct.Struct("<H"),
    "u32": struct.Struct("<I"),
    "u64": struct.Struct("<Q"),
    "i64": struct.Struct("<q"),
}

#: The longest uvarint of a 64-bit value.
_MAX_VARINT = 10


def _read_uint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    for i in range(_MAX_VARINT):
        if pos >= len(buf):
            raise BareError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if i > 0 and byte == 0:
                raise BareError("varint is not minimally encoded")
            return result, pos
        shift += 7
    raise BareError("varint longer than 10 bytes")


def _write_uint(out: bytearray, value: int) -> None:
    if value < 0 or value >= 1 << 64:
        raise BareError(f"{value} does not fit a uint")
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _take(buf: memoryview, pos: int, size: int) -> tuple[bytes, int]:
    end = pos + size
    if end > len(buf):
        raise BareError(f"truncated: {size} bytes wanted, {len(buf) - pos} left")
    return bytes(buf[pos:end]), end


def _fixed_int(codec: struct.Struct) -> tuple[_Reader, _Writer]:
    size = codec.size

    def read(buf: memoryview, pos: int) -> tuple[Any, int]:
        if pos + size > len(buf):
            raise BareError("truncated integer")
        return codec.unpack_from(buf, pos)[0], pos + size

    def write(out: bytearray, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BareError(f"expected an integer, got {type(value).__name__}")
        try:
            out += codec.pack(value)
        except struct.error as exc:
            raise BareError(f"{value} does not fit: {exc}") from None

    return read, write


def _read_bool(buf: memoryview, pos: int) -> tuple[Any, int]:
    if pos >= len(buf):
        raise BareError("truncated bool")
    byte = buf[pos]
    if byte > 1:
        raise BareError(f"bool byte {byte} is neither 0 nor 1")
    return byte == 1, pos + 1


def _write_bool(out: bytearray, value: Any) -> None:
    if not isinstance(value, bool):
        raise BareError(f"expected a bool, got {type(value).__name__}")
    out.append(1 if value else 0)


def _read_data(buf: memoryview, pos: int) -> tuple[Any, int]:
    size, pos = _read_uint(buf, pos)
    return _take(buf, pos, size)


def _write_data(out: bytearray, value: Any) -> None:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise BareError(f"expected bytes, got {type(value).__name__}")
    _write_uint(out, len(value))
    out += value


def _read_str(buf: memoryview, pos: int) -> tuple[Any, int]:
    raw, pos = _read_data(buf, pos)
    try:
        return raw.decode("utf-8"), pos
    except UnicodeDecodeError as exc:
        raise BareError(f"invalid UTF-8 in a string: {exc}") from None


def _write_str(out: bytearray, value: Any) -> None:
    if not isinstance(value, str):
        raise BareError(f"expected a str, got {type(value).__name__}")
    _write_data(out, value.encode("utf-8"))


def _read_uint_value(buf: memoryview, pos: int) -> tuple[Any, int]:
    return _read_uint(buf, pos)


def _write_uint_value(out: bytearray, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BareError(f"expected an integer, got {type(value).__name__}")
    _write_uint(out, value)


_PRIMITIVES: dict[str, tuple[_Reader, _Writer]] = {
    name: _fixed_int(codec) for name, codec in _FIXED.items()
}
_PRIMITIVES["bool"] = (_read_bool, _write_bool)
_PRIMITIVES["data"] = (_read_data, _write_data)
_PRIMITIVES["str"] = (_read_str, _write_str)
_PRIMITIVES["uint"] = (_read_uint_value, _write_uint_value)


class _Codecs:
    """Builds (once) the reader and writer of every type in a schema table."""

    def __init__(self, types: dict[str, Any]) -> None:
        self._types = types
        self._built: dict[str, tuple[_Reader, _Writer]] = {}

    def get(self, ref: Any) -> tuple[_Reader, _Writer]:
        if isinstance(ref, tuple):  # ("fixed", n): inline
            return self._make(ref)
        built = self._built.get(ref)
        if built is not None:
            return built
        if ref in _PRIMITIVES:
            return _PRIMITIVES[ref]
        # Recursive types are looked up lazily through these trampolines.
        slot: list[tuple[_Reader, _Writer]] = []

        def read(buf: memoryview, pos: int) -> tuple[Any, int]:
            return slot[0][0](buf, pos)

        def write(out: bytearray, value: Any) -> None:
            slot[0][1](out, value)

        self._built[ref] = (read, write)
        made = self._make(self._types[ref])
        slot.append(made)
        self._built[ref] = made
        return made

    def _make(self, spec: Any) -> tuple[_Reader, _Writer]:
        kind = spec[0]
        if kind == "alias":
            return self.get(spec[1])
        if kind == "fixed":
            return _fixed_data(spec[1])
        if kind == "struct":
            return self._struct(spec[1])
        if kind == "union":
            return self._union(spec[1])
        if kind == "enum":
            return _enum(spec[1])
        if kind == "optional":
            return _optional(*self.get(spec[1]))
        if kind == "list":
            return _list(*self.get(spec[1]))
        if kind == "map":
            return _map(self.get(spec[1]), self.get(spec[2]))
        raise ValueError(f"unknown schema kind {kind!r}")

    def _struct(self, fields: tuple[tuple[str, Any], ...]) -> tuple[_Reader, _Writer]:
        parts = [(name, *self.get(ref)) for name, ref in fields]
        names = [name for name, _, _ in parts]

        def read(buf: memoryview, pos: int) -> tuple[Any, int]:
            value: dict[str, Any] = {}
            for name, reader, _ in parts:
                value[name], pos = reader(buf, pos)
            return value, pos

        def write(out: bytearray, value: Any) -> None:
            if not isinstance(value, dict):
                raise BareError(f"expected a dict of {names}, got {type(value).__name__}")
            for name, _, writer in parts:
                try:
                    field = value[name]
                except KeyError:
                    raise BareError(f"missing field {name!r}") from None
                writer(out, field)

        return read, write

    def _union(self, variants: tuple[tuple[int, str, Any], ...]) -> tuple[_Reader, _Writer]:
        by_tag: dict[int, tuple[str, _Reader | None]] = {}
        by_name: dict[str, tuple[int, _Writer | None]] = {}
        for tag, name, ref in variants:
            if ref is None:
                by_tag[tag] = (name, None)
                by_name[name] = (tag, None)
            else:
                reader, writer = self.get(ref)
                by_tag[tag] = (name, reader)
                by_name[name] = (tag, writer)

        def read(buf: memoryview, pos: int) -> tuple[Any, int]:
            tag, pos = _read_uint(buf, pos)
            try:
                name, reader = by_tag[tag]
            except KeyError:
                raise BareError(f"unknown union tag {tag}") from None
            if reader is None:
                return Variant(name), pos
            val, pos = reader(buf, pos)
            return Variant(name, val), pos

        def write(out: bytearray, value: Any) -> None:
            if not isinstance(value, Variant):
                raise BareError(f"expected a Variant, got {type(value).__name__}")
            try:
                tag, writer = by_name[value.tag]
            except KeyError:
                raise BareError(f"no variant named {value.tag!r}") from None
            _write_uint(out, tag)
            if writer is not None:
                writer(out, value.val)

        return read, write


def _fixed_data(size: int) -> tuple[_Reader, _Writer]:
    def read(buf: memoryview, pos: int) -> tuple[Any, int]:
        return _take(buf, pos, size)

    def write(out: bytearray, value: Any) -> None:
        if not isinstance(value, bytes | bytearray) or len(value) != size:
            raise BareError(f"expected {size} bytes")
        out += value

    return read, write


def _enum(names: tuple[str, ...]) -> tuple[_Reader, _Writer]:
    index = {name: i for i, name in enumerate(names)}

    def read(buf: memoryview, pos: int) -> tuple[Any, int]:
        value, pos = _read_uint(buf, pos)
        if value >= len(names):
            raise BareError(f"unknown enum value {value}")
        return names[value], pos

    def write(out: bytearray, value: Any) -> None:
        try:
            _write_uint(out, index[value])
        except (KeyError, TypeError):
            raise BareError(f"{value!r} is not one of {names}") from None

    return read, write


def _optional(reader: _Reader, writer: _Writer) -> tuple[_Reader, _Writer]:
    def read(buf: memoryview, pos: int) -> tuple[Any, int]:
        present, pos = _read_bool(buf, pos)
        if not present:
            return None, pos
        return reader(buf, pos)

    def write(out: bytearray, value: Any) -> None:
        if value is None:
            out.append(0)
        else:
            out.append(1)
            writer(out, value)

    return read, write


def _list(reader: _Reader, writer: _Writer) -> tuple[_Reader, _Writer]:
    def read(buf: memoryview, pos: int) -> tuple[Any, int]:
        count, pos = _read_uint(buf, pos)
        if count > len(buf) - pos:  # every item takes at least one byte
            raise BareError(f"list of {count} items in {len(buf) - pos} bytes")
        items = []
        for _ in range(count):
            item, pos = reader(buf, pos)
            items.append(item)
        return items, pos

    def write(out: bytearray, value: Any) -> None:
        if not isinstance(value, list | tuple):
            raise BareError(f"expected a list, got {type(value).__name__}")
        _write_uint(out, len(value))
        for item in value:
            writer(out, item)

    return read, write


def _map(key: tuple[_Reader, _Writer], value: tuple[_Reader, _Writer]) -> tuple[_Reader, _Writer]:
    read_key, write_key = key
    read_value, write_value = value

    def read(buf: memoryview, pos: int) -> tuple[Any, int]:
        count, pos = _read_uint(buf, pos)
        if count > len(buf) - pos:
            raise BareError(f"map of {count} entries in {len(buf) - pos} bytes")
        result: dict[Any, Any] = {}
        for _ in range(count):
            k, pos = read_key(buf, pos)
            if k in result:
                raise BareError(f"duplicate map key {k!r}")
            result[k], pos = read_value(buf, pos)
        return result, pos

    def write(out: bytearray, entries: Any) -> None:
        if not isinstance(entries, dict):
            raise BareError(f"expected a dict, got {type(entries).__name__}")
        _write_uint(out, len(entries))
        for k, v in entries.items():
            write_key(out, k)
            write_value(out, v)

    return read, write


_PRIMITIVES["u32_array"] = _list(*_PRIMITIVES["u32"])

_CODECS: Final = _Codecs(TYPES)
for _name in TYPES:
    _CODECS.get(_name)


def encode(type_name: str, value: Any) -> bytes:
    """``value`` encoded as the schema type ``type_name`` (e.g. ``"ToRivet"``)."""
    out = bytearray()
    _CODECS.get(type_name)[1](out, value)
    return bytes(out)


def decode(type_name: str, data: bytes | bytearray | memoryview) -> Any:
    """The value of schema type ``type_name`` that ``data`` holds, all of it."""
    buf = memoryview(data)
    value, pos = _CODECS.get(type_name)[0](buf, 0)
    if pos != len(buf):
        raise BareError(f"{len(buf) - pos} trailing bytes after a {type_name}")
    return value
