"""Request bytes -> message, where bytes that do not decode are the caller's error, not the server's.

grpc decodes a request before any handler runs, and a failure there answers UNKNOWN. The interceptor
decodes instead, through `decode`, so a malformed body or a string field holding invalid UTF-8 answers
INVALID_ARGUMENT naming the field (`events[3].member_id`), like every other bad input.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, MutableSequence
from typing import Any

from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, message, message_factory

from omnirec.domain.errors import InvalidArgument

_STRING, _BYTES = descriptor.FieldDescriptor.TYPE_STRING, descriptor.FieldDescriptor.TYPE_BYTES


def decode(parse: Callable[[bytes], Any] | None, raw: bytes) -> Any:
    """`parse(raw)` (a generated `Message.FromString`; None passes the bytes through), or InvalidArgument
    naming the field, or `request` when the body is not that message at all."""
    if parse is None:
        return raw
    try:
        return parse(raw)
    except message.DecodeError:
        desc = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
        if not isinstance(desc, descriptor.Descriptor):
            raise InvalidArgument("request", "the request body could not be decoded") from None
        raise _undecodable(desc, raw) from None


def _undecodable(desc: descriptor.Descriptor, raw: bytes) -> InvalidArgument:
    """Why `raw` is not a `desc`: re-read with every string field as bytes to find one that is not UTF-8."""
    try:
        lenient = _bytes_twin(desc.file.pool, desc.full_name).FromString(raw)
    except message.DecodeError:
        return InvalidArgument("request", f"not a valid {desc.full_name} message (malformed protobuf)")
    field = _first_bad_utf8(desc, lenient, "")
    if field is None:
        return InvalidArgument("request", f"not a valid {desc.full_name} message")
    return InvalidArgument(field, "not valid UTF-8")


def _first_bad_utf8(desc: descriptor.Descriptor, msg: message.Message, prefix: str) -> str | None:
    """Path of the first string field (in the original `desc`) whose bytes in the twin `msg` are not UTF-8.

    A map is named as a whole (`context`): its entries are the twin's repeated key/value messages.
    """
    for twin_field, value in msg.ListFields():
        field = desc.fields_by_name[twin_field.name]
        path = f"{prefix}{field.name}"
        repeated = isinstance(value, MutableSequence)  # a repeated field's container
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        for i, item in enumerate(value if repeated else [value]):
            at = f"{path}[{i}]" if repeated and not is_map else path
            if field.message_type is not None:
                if bad := _first_bad_utf8(field.message_type, item, f"{at}."):
                    return at if is_map else bad
            elif field.type == _STRING and not _utf8(item):
                return at
    return None


def _utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@functools.cache
def _bytes_twin(pool: descriptor_pool.DescriptorPool, full_name: str) -> type[message.Message]:
    """A class with `full_name`'s layout in which every string field is bytes, so any bytes decode.

    Built (once per message type) in a private pool from copies of the file and its imports.
    """
    twin_pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: descriptor.FileDescriptor) -> None:
        if file.name in added:
            return
        for dep in file.dependencies:
            add(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        for msg in proto.message_type:
            _strings_to_bytes(msg)
        twin_pool.Add(proto)
        added.add(file.name)

    add(pool.FindMessageTypeByName(full_name).file)
    return message_factory.GetMessageClass(twin_pool.FindMessageTypeByName(full_name))


def _strings_to_bytes(msg: descriptor_pb2.DescriptorProto) -> None:
    """String fields become bytes; map entries plain messages (same wire format), since map keys cannot be bytes."""
    msg.options.ClearField("map_entry")
    for f in msg.field:
        if f.type == _STRING:
            f.type = _BYTES
    for nested in msg.nested_type:
        _strings_to_bytes(nested)
