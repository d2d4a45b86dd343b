"""Running: a rendered stack loaded, started, checked stage by stage, measured and backed up.

The only callers of the seams.
"""
