"""Build hook: the gRPC stubs are generated from `protos/` into `omnirec/v1` before the package is
collected, so `pip install .` from a clean clone (and `pip install -e .`) ships working stubs."""

from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
PROTOS = ROOT / "protos"
STUBS = ROOT / "omnirec" / "v1"


def generate_stubs() -> None:
    from grpc_tools import protoc

    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "omnirec" / "v1").glob("*.proto"))
    STUBS.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{PROTOS}", f"-I{Path(protoc.__file__).parent / '_proto'}",
            f"--python_out={ROOT}", f"--pyi_out={ROOT}", f"--grpc_python_out={ROOT}", *sources]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed on protos/omnirec/v1")
    (STUBS / "__init__.py").write_text('"""Generated from protos/omnirec/v1 at build time; do not edit."""\n')


if PROTOS.is_dir():
    generate_stubs()
setup()
