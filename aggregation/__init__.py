"""Secure aggregation (SecAgg, SecAgg+): the server only ever sees the sum.

Public protocol layer: client/server sessions and config. Cryptographic
primitives live in the private ``aggregation._primitives`` module. This package
never imports ``secure_fml`` or ``audits``; it may import ``privacy`` (errors).
"""

__all__: list[str] = []
