"""Regenerate the committed gRPC code: ``python -m protos.generate [--out DIR]``.

Outputs feed_pb2.py, feed_pb2.pyi and feed_pb2_grpc.py next to each .proto, importable
as ``protos.feed.v1``. tests/test_protos.py fails when the committed files are stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_FILES = ("protos/feed/v1/feed.proto",)


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc  # dev/test dependency only

    for proto in PROTO_FILES:
        args = [
            "protoc",
            f"-I{ROOT}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(ROOT / proto),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed for {proto}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repository)")
    generate(parser.parse_args(argv).out)


if __name__ == "__main__":
    main(sys.argv[1:])
