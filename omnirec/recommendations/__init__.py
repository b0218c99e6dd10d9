"""Recommendation decisions as plain typed code: which candidates a member gets and why.

No grpc and no Redis: `service/recommendation_servicer.py` converts protos to these types and back, and
the feature store is reached only through the `MemberSource` the service passes in.
"""
