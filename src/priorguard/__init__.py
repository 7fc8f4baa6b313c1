"""priorguard: explicit priors for goal learning, and planners that veto on posterior doubt."""

__version__ = "0.1.0"
