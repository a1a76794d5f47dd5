"""Container images on the node, through the CRI image service (runtime.v1.ImageService).

``api.proto`` is the part of the CRI's own (k8s.io/cri-api pkg/apis/runtime/v1) that the agent
calls, ListImages and ImageFsInfo, trimmed from upstream with package and field numbers unchanged;
the ``api_pb2*`` modules are generated from it by ``gpu_agent/tools/gen_protos.sh``. The client is
in :mod:`gpu_agent.cri.client`; it is used only when a CRI socket is configured.
"""
