"""Scoring and filtering signals, one module each; each module docstring gives its formula."""
