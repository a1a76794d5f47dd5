"""The network topology gpusched reads from node labels by default: the keys that clusters carry
already, outermost first, so gangs are placed by the real fabric without any `topologyTiers`.

- `topology.kubernetes.io/zone`: the well-known zone label (cloud providers, kubelet).
- NVIDIA Topograph (`network.topology.nvidia.com/`): `core`, `spine` and `leaf` switches, then
  `accelerator`, the NVLink domain.
- GKE (`cloud.google.com/gce-topology-`): `block`, `subblock`, `host`.
- `nvidia.com/gpu.clique`: the NVLink domain that spans nodes (multi-node NVLink, GB200 NVL72), as
  NVIDIA's GPU feature discovery labels it.
- `kubernetes.io/hostname`: the node.

A node carries only the keys of its provider; `tier_domains` (snapshot.py) puts a node that lacks a
key in a domain of its own at that tier, and still groups it at the inner tiers by the labels it
has. A tier no node carries therefore never holds two nodes, and gang planning (gang.py), which
takes the innermost tier with a domain that fits the gang, passes over it: a cluster labelled by
Topograph alone is planned by leaf, spine and core; one labelled by GKE alone by subblock and block.
"""

from __future__ import annotations

ZONE = "topology.kubernetes.io/zone"
HOSTNAME = "kubernetes.io/hostname"
TOPOGRAPH_CORE = "network.topology.nvidia.com/core"
TOPOGRAPH_SPINE = "network.topology.nvidia.com/spine"
TOPOGRAPH_LEAF = "network.topology.nvidia.com/leaf"
TOPOGRAPH_ACCELERATOR = "network.topology.nvidia.com/accelerator"
GKE_BLOCK = "cloud.google.com/gce-topology-block"
GKE_SUBBLOCK = "cloud.google.com/gce-topology-subblock"
GKE_HOST = "cloud.google.com/gce-topology-host"
GPU_CLIQUE = "nvidia.com/gpu.clique"

DEFAULT_TIERS = (
    ZONE,
    TOPOGRAPH_CORE,
    TOPOGRAPH_SPINE,
    TOPOGRAPH_LEAF,
    TOPOGRAPH_ACCELERATOR,
    GKE_BLOCK,
    GKE_SUBBLOCK,
    GKE_HOST,
    GPU_CLIQUE,
    HOSTNAME,
)

# The switch under which a rack's nodes sit, per labelling: what the simulator counts as a rack.
RACK_KEYS = (TOPOGRAPH_LEAF, GKE_SUBBLOCK)
