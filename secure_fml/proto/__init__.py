"""Generated gRPC code for the versioned deployment protocol (``secure_fml_v1.proto``).

Regenerate from the repository root with::

    python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. \
        secure_fml/proto/secure_fml_v1.proto

``tests/deploy/test_proto.py`` fails when the committed files are stale.
"""
