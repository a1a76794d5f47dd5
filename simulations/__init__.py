"""gpusched's what-if simulator: replays scenarios and public traces through the scheduling core.

    gpusched-sim whatif SCENARIO      a scenario's workload under several policies (whatif.py, report.py)
    gpusched-sim whatif --kubeconfig  the same from a live cluster's snapshot (live.py)
    gpusched-sim fgd / fgd-table      the FGD protocol on the Alibaba GPU trace (fgd.py, traces.py)

Every policy (policies.py) is a registry config of the core's plugins, so every placement here is
decided by the same `Framework.decide` the extender runs.
"""
