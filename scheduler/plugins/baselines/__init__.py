"""Baselines: the trace policies of the FGD paper and kube-scheduler stand-ins.

They exist so that the simulator can replay the FGD evaluation protocol (`gpusched-sim fgd`) and
compare gpusched's default policy with what others do. They are registered like every plugin
(scheduler/plugins/registry.py) and usable in the extender's config, but gpusched's own policy
(scheduler/core/config.py, DEFAULT_FILTERS and DEFAULT_SCORES) uses none of them.
"""
