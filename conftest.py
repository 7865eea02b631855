"""Collection settings shared by the tests and the doctests of the package."""

import importlib.util

# The fused kernels import Triton at module level; without it their doctests cannot be collected
# (the library itself falls back to the reference backend and says why when Triton is asked for).
collect_ignore_glob = [] if importlib.util.find_spec("triton") else ["adaptive_contrastive/kernels/*"]
