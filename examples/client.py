"""A minimal omnirec client: one Recommend call, printed.

    python examples/client.py --target 127.0.0.1:50051 --api-key KEY --member-id m000001

App and POS teams can copy this: generated stubs from `make protos`, an API key in `x-api-key`
metadata, a deadline on every call, and the gRPC status code on failure.
"""

from __future__ import annotations

import argparse
import sys

import grpc

from omnirec.v1 import common_pb2, recommendation_pb2, recommendation_pb2_grpc


def recommend(target: str, api_key: str, member_id: str, channel: str = "app", store_id: str = "", k: int = 5,
              timeout_s: float = 2.0) -> recommendation_pb2.RecommendResponse:
    request = recommendation_pb2.RecommendRequest(
        member_id=member_id, channel=common_pb2.Channel.Value(f"CHANNEL_{channel.upper()}"), store_id=store_id, k=k,
        filter=common_pb2.ItemFilter(in_stock_only=True), exclude_purchased=True)
    with grpc.insecure_channel(target) as channel_:
        stub = recommendation_pb2_grpc.RecommendationServiceStub(channel_)
        return stub.Recommend(request, metadata=[("x-api-key", api_key)], timeout=timeout_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--member-id", required=True)
    parser.add_argument("--channel", default="app", help="app, mini_program, web, pos or store")
    parser.add_argument("--store-id", default="", help="required for pos and store")
    parser.add_argument("-k", type=int, default=5)
    args = parser.parse_args()
    try:
        reply = recommend(args.target, args.api_key, args.member_id, args.channel, args.store_id, args.k)
    except grpc.RpcError as exc:
        print(f"{exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    info = reply.info
    print(f"member {reply.member_id or args.member_id}: model {info.model_version}"
          f"{' (degraded: ' + info.degraded_reason + ')' if info.degraded else ''}")
    for item_id, score, reason in zip(reply.items.item_ids, reply.items.scores, reply.items.reasons, strict=True):
        print(f"  {item_id:<12} {score:8.3f}  {common_pb2.Reason.Name(reason)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
