"""The pure placement core shared by the extender and the simulator.

Nothing here imports FastAPI, the kubernetes client, pynvml or touches the file system.
"""
