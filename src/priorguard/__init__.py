"""priorguard: explicit priors for goal learning, and planners that veto on posterior doubt.

Subpackages: :mod:`priorguard.priors` (the spec: distributions, kernels,
simplicity and speed priors), :mod:`priorguard.models` (T, I, W and D as GPs or
BNNs), :mod:`priorguard.planners` (one-step, MCTS, CEM, vetoes, audits),
:mod:`priorguard.envs` (environments with train/deploy splits; importing it
registers them with gymnasium), :mod:`priorguard.experiments` (runner, sweeps,
result store) and :mod:`priorguard.analysis` (ArviZ diagnostics, reports).
Importing priorguard registers the environments, so
``gymnasium.make("priorguard/CoinShift-v1", split="deploy")`` works after it.
"""

from priorguard import envs

__version__ = "0.1.0"

__all__ = ["__version__", "envs"]
