"""Which pod holds which GPU: a client for the kubelet's PodResources v1 gRPC API.

``api.proto`` is the kubelet's own (k8s.io/kubelet pkg/apis/podresources/v1), vendored; the
``api_pb2*`` modules are generated from it by ``gpu_agent/tools/gen_protos.sh``. The client is
in :mod:`gpu_agent.podresources.client`; importing this package needs nothing beyond the
standard library, so the agent runs where grpcio is not installed (then pods are left out).
"""
