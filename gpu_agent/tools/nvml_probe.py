"""Dump every NVML query the agent's reader makes, with its raw answer or its error, as JSON.

    python3 -m gpu_agent.tools.nvml_probe [--fake-nvml NAME] > probe.json

Run on a real GPU machine, it shows what the hardware and driver answer (and which queries
they lack), to compare with a fake NVML machine fixture. Needs only the standard library and
pynvml.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any


def _plain(value: Any) -> Any:
    """ctypes structs and arrays -> JSON-friendly values."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    fields = getattr(value, "_fields_", None)
    if fields:
        return {name: _plain(getattr(value, name)) for name, *_ in fields}
    if hasattr(value, "value"):
        return _plain(value.value)
    try:
        return [_plain(v) for v in value]
    except TypeError:
        return repr(value)


def probe() -> dict[str, Any]:
    import pynvml as nvml

    def ask(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return {"ok": _plain(fn(*args))}
        except nvml.NVMLError as exc:
            return {"error": type(exc).__name__.removeprefix("NVMLError_"), "message": str(exc)}

    nvml.nvmlInit()
    try:
        out: dict[str, Any] = {
            "driverVersion": ask(nvml.nvmlSystemGetDriverVersion),
            "nvmlVersion": ask(nvml.nvmlSystemGetNVMLVersion),
            "cudaDriverVersion_v2": ask(nvml.nvmlSystemGetCudaDriverVersion_v2),
            "cudaDriverVersion": ask(nvml.nvmlSystemGetCudaDriverVersion),
            "gpus": [],
        }
        count = nvml.nvmlDeviceGetCount()
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        for index, h in enumerate(handles):
            gpu: dict[str, Any] = {
                "index": index,
                "name": ask(nvml.nvmlDeviceGetName, h),
                "uuid": ask(nvml.nvmlDeviceGetUUID, h),
                "pci": ask(nvml.nvmlDeviceGetPciInfo, h),
                "memory_v2": ask(nvml.nvmlDeviceGetMemoryInfo, h, getattr(nvml, "nvmlMemory_v2", None)),
                "memory": ask(nvml.nvmlDeviceGetMemoryInfo, h),
                "utilization": ask(nvml.nvmlDeviceGetUtilizationRates, h),
                "eccMode": ask(nvml.nvmlDeviceGetEccMode, h),
                "uncorrectedVolatileEcc": ask(nvml.nvmlDeviceGetTotalEccErrors, h, 1, 0),
                "retiredPagesPending": ask(nvml.nvmlDeviceGetRetiredPagesPendingStatus, h),
                "remappedRows": ask(nvml.nvmlDeviceGetRemappedRows, h),
                "migMode": ask(nvml.nvmlDeviceGetMigMode, h),
                "maxMigDevices": ask(nvml.nvmlDeviceGetMaxMigDeviceCount, h),
                "links": [],
                "mig": [],
            }
            for struct in ("c_nvmlGpuFabricInfo_v3_t", "c_nvmlGpuFabricInfo_v2_t"):
                if hasattr(nvml, struct):
                    info = getattr(nvml, struct)()
                    result = ask(nvml.nvmlDeviceGetGpuFabricInfoV, h, nvml.byref(info))
                    gpu[f"fabric_{struct}"] = {"ok": _plain(info)} if "ok" in result else result
            for link in range(int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18))):
                state = ask(nvml.nvmlDeviceGetNvLinkState, h, link)
                entry = {"link": link, "state": state}
                if "ok" in state:
                    entry["remoteType"] = ask(nvml.nvmlDeviceGetNvLinkRemoteDeviceType, h, link)
                    entry["remotePci"] = ask(nvml.nvmlDeviceGetNvLinkRemotePciInfo, h, link)
                    entry["version"] = ask(nvml.nvmlDeviceGetNvLinkVersion, h, link)
                gpu["links"].append(entry)
            max_mig = gpu["maxMigDevices"].get("ok") or 0
            for slot in range(int(max_mig)):
                try:
                    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(h, slot)
                except nvml.NVMLError as exc:
                    gpu["mig"].append({"slot": slot, "error": type(exc).__name__})
                    continue
                gpu["mig"].append(
                    {
                        "slot": slot,
                        "name": ask(nvml.nvmlDeviceGetName, mig),
                        "uuid": ask(nvml.nvmlDeviceGetUUID, mig),
                        "memory": ask(nvml.nvmlDeviceGetMemoryInfo, mig),
                        "gpuInstanceId": ask(nvml.nvmlDeviceGetGpuInstanceId, mig),
                        "computeInstanceId": ask(nvml.nvmlDeviceGetComputeInstanceId, mig),
                        "attributes": ask(nvml.nvmlDeviceGetAttributes, mig),
                    }
                )
            gpu["pairs"] = {
                str(other): {
                    "commonAncestor": ask(nvml.nvmlDeviceGetTopologyCommonAncestor, h, handles[other]),
                    "p2pNvlink": ask(nvml.nvmlDeviceGetP2PStatus, h, handles[other], nvml.NVML_P2P_CAPS_INDEX_NVLINK),
                }
                for other in range(count)
                if other != index
            }
            out["gpus"].append(gpu)
        return out
    finally:
        nvml.nvmlShutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nvml_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fake-nvml", metavar="NAME", help="probe a fake NVML machine instead")
    args = parser.parse_args(argv)
    if args.fake_nvml:
        from gpu_agent import fake_nvml

        fake_nvml.activate(args.fake_nvml)
    try:
        result = probe()
    except Exception as exc:  # report what failed instead of a traceback: this runs unattended
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
