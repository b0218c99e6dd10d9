"""The public contract in protos/ follows the conventions clients in other languages rely on."""

from __future__ import annotations

import importlib
import os
import pkgutil
import shutil
import subprocess
from pathlib import Path

import pytest
from google.protobuf import descriptor

import omnirec.v1

ROOT = Path(__file__).resolve().parents[1]
FILES = [importlib.import_module(f"omnirec.v1.{m.name}") for m in pkgutil.iter_modules(omnirec.v1.__path__)
         if m.name.endswith("_pb2")]
BUF = os.environ.get("BUF") or shutil.which("buf")
LANGUAGE_OPTIONS = ("go_package", "java_package", "java_multiple_files", "java_outer_classname",
                    "csharp_namespace", "objc_class_prefix", "php_namespace", "ruby_package")


def _methods() -> list[descriptor.MethodDescriptor]:
    return [m for f in FILES for s in f.DESCRIPTOR.services_by_name.values() for m in s.methods]


@pytest.mark.skipif(BUF is None, reason="buf is not installed (`npm i -g @bufbuild/buf`; .ci/run installs it "
                                        "when npm is available), so `buf lint` cannot run")
def test_buf_lint_is_clean() -> None:
    result = subprocess.run([str(BUF), "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rpc_has_its_own_request_and_response_types() -> None:
    """buf's RPC_REQUEST_RESPONSE_UNIQUE and *_STANDARD_NAME rules, checked even where buf is not installed."""
    methods = _methods()
    types = [t for m in methods for t in (m.input_type.full_name, m.output_type.full_name)]
    assert len(types) == len(set(types))
    for m in methods:
        assert (m.input_type.name, m.output_type.name) == (f"{m.name}Request", f"{m.name}Response")


def test_every_file_carries_the_same_language_options() -> None:
    options = [f.DESCRIPTOR.GetOptions() for f in FILES]
    for name in LANGUAGE_OPTIONS:
        if name == "java_outer_classname":
            assert all(o.HasField(name) for o in options)
        else:
            assert len({getattr(o, name) for o in options}) == 1 and options[0].HasField(name), name


def test_money_and_times_are_not_floating_point_or_bare_integers() -> None:
    """Amounts are integer minor units (`*_minor_units`); times are google.protobuf.Timestamp."""
    for f in FILES:
        for message in f.DESCRIPTOR.message_types_by_name.values():
            for field in message.fields:
                name = field.name
                if name.endswith(("_value", "price", "_amount")):
                    pytest.fail(f"{message.full_name}.{name}: money must be int64 *_minor_units")
                if name.endswith("_minor_units"):
                    assert field.type == descriptor.FieldDescriptor.TYPE_INT64, name
                if name == "ts" or name.endswith(("_time", "_at", "_ts")):
                    assert field.message_type is not None, name
                    assert field.message_type.full_name == "google.protobuf.Timestamp", name
