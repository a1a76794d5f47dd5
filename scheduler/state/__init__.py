"""Informers that keep the extender's view of the cluster current, and the assume-cache."""
