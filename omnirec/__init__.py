"""omnirec application package: the `omnirec` CLI, the root config, and (generated) gRPC stubs in `omnirec.v1`."""
