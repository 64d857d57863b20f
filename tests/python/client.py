"""A gRPC client written with Python's grpcio (not our code) against an HRU node.

Usage: client.py STUBS ADDR CA CERT KEY OTHER_CERT OTHER_KEY
Prints one JSON object: what each attempt returned.
"""
import json
import sys

import grpc

stubs, addr, ca, cert, key, other_cert, other_key = sys.argv[1:8]
sys.path.insert(0, stubs)

from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc  # noqa: E402
from hru.v1 import services_pb2, services_pb2_grpc  # noqa: E402


def read(path):
    with open(path, "rb") as f:
        return f.read()


def channel(cert_path=None, key_path=None):
    creds = grpc.ssl_channel_credentials(
        root_certificates=read(ca),
        private_key=read(key_path) if key_path else None,
        certificate_chain=read(cert_path) if cert_path else None,
    )
    return grpc.secure_channel(addr, creds, options=(("grpc.ssl_target_name_override", "localhost"),))


def list_cases(ch):
    stub = services_pb2_grpc.CaseServiceStub(ch)
    request = services_pb2.ListCasesRequest(view="case-board", purpose="risk-management")
    try:
        reply = stub.ListCases(request, metadata=[("x-hru-person", "PC 7")], timeout=10)
        return {"ok": True, "rows": len(reply.rows), "json": [r.json for r in reply.rows]}
    except grpc.RpcError as e:
        return {"ok": False, "code": e.code().name, "details": e.details()}


result = {
    "with_certificate": list_cases(channel(cert, key)),
    "without_certificate": list_cases(channel()),
    "with_another_partys_certificate": list_cases(channel(other_cert, other_key)),
}
reflection = reflection_pb2_grpc.ServerReflectionStub(channel(cert, key))
responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
result["reflection"] = sorted(s.name for r in responses for s in r.list_services_response.service)
print(json.dumps(result))
