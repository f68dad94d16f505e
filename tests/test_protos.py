"""The committed generated code must match a fresh `python -m protos.generate`."""

from __future__ import annotations

from protos.generate import PROTO_FILES, generate
from tests.conftest import REPO


def test_generated_code_is_up_to_date(tmp_path):
    generate(tmp_path)
    for proto in PROTO_FILES:
        stem = proto.removesuffix(".proto")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            fresh = (tmp_path / (stem + suffix)).read_bytes()
            committed = (REPO / (stem + suffix)).read_bytes()
            assert fresh == committed, f"{stem + suffix} is stale: run `make protos` and commit the result"
