"""The committed generated code matches secure_fml_v1.proto (fails when stale)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROTO = "secure_fml/proto/secure_fml_v1.proto"
GENERATED = ("secure_fml_v1_pb2.py", "secure_fml_v1_pb2.pyi", "secure_fml_v1_pb2_grpc.py")


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    protoc = pytest.importorskip("grpc_tools.protoc")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{REPO}",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            str(REPO / PROTO),
        ]
    )
    assert rc == 0
    for name in GENERATED:
        fresh = (tmp_path / "secure_fml" / "proto" / name).read_text()
        committed = (REPO / "secure_fml" / "proto" / name).read_text()
        assert fresh == committed, (
            f"secure_fml/proto/{name} is stale; regenerate (see secure_fml/proto/__init__.py)"
        )


def test_service_is_versioned() -> None:
    import aggregation
    from secure_fml.deploy import PROTOCOL_VERSION
    from secure_fml.proto import secure_fml_v1_pb2 as pb

    # One version for the whole wire: the engine's messages and the aggregation ones.
    assert pb.DESCRIPTOR.package == "secure_fml.v1"
    assert PROTOCOL_VERSION == aggregation.PROTOCOL_VERSION == 3
    for m in ("JoinRequest", "PollRequest", "StatusRequest", "DownloadRequest", "Header"):
        assert "protocol_version" in pb.DESCRIPTOR.message_types_by_name[m].fields_by_name
