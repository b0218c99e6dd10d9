"""`python -m omnirec.service.health_probe [host:port [service]]`: exit 0 if the server answers SERVING (Docker
HEALTHCHECK, a Kubernetes exec probe).

Without `service` it asks for the server as a whole (""), which follows RecommendationService; give a full
service name (`omnirec.v1.AudienceService`) to probe one service: the audience service, for instance, is
NOT_SERVING while the audience process is down or being replaced, when the rest of the server still serves.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def probe(target: str, service: str = "", timeout_s: float = 2.0) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=timeout_s)
        except grpc.RpcError as exc:
            print(f"{target} {service or '(server)'}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


if __name__ == "__main__":
    sys.exit(0 if probe(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051",
                        sys.argv[2] if len(sys.argv) > 2 else "") else 1)
