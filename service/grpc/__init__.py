"""The Open Inference Protocol v2 over gRPC (KServe's `inference.GRPCInferenceService`, Triton's port 8001).

`protocol`: the message classes, built from inference.proto's compiled descriptors; `server`: the
servicer, a codec over the data plane like the REST routes, and its grpc.aio server in the app's lifespan.
docs/protocol-oip.md is the user's page.
"""
