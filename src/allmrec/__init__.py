"""A-LLMRec: an all-round LLM-based recommender built on a frozen CF model and a frozen LLM."""

import os

# OpenMP threads that spin-wait for a peer make every PyTorch op many times slower once another
# process shares the cores (a 577-token SmolLM2 forward: 8.1 s instead of 0.33 s beside one
# CPU-bound job). A passive wait policy costs little on an idle machine and removes that; it only
# takes effect when set before torch starts OpenMP, i.e. when allmrec is imported before torch
# (the CLI always is). Set OMP_WAIT_POLICY yourself to choose otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
