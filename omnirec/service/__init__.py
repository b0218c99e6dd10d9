"""The gRPC service: thin servicers (proto <-> domain), interceptors, the server factory and `omnirec serve`.

Importing the package stays cheap (no grpc): `omnirec.config` imports `service.config` from here.
"""

__all__: list[str] = []
