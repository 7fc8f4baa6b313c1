"""The one source of stable numpyro site names, so posteriors line up across runs and models.

Every model builds its site names here: a GP's kernel hyperparameters, noise and mean, a
BNN's layers, hyperpriors on any of them. ``role`` is the model's role ("terminal",
"world", "instrumental", "termination"); the ArviZ variable of a site replaces its "/"
by "." (:func:`variable`).

Example:
    >>> kernel_site("terminal", term_path(KERNEL, 0), "lengthscale")
    'terminal/kernel/terms/0/lengthscale'
    >>> hyperprior_site(kernel_site("terminal", KERNEL, "lengthscale"), "scale")
    'terminal/kernel/lengthscale/scale'
    >>> layer_site("world", 0, "lambda")
    'world/layer0/lambda'
    >>> variable("world/layer0/w")
    'world.layer0.w'
"""

from __future__ import annotations

#: The path of a model's kernel below its role.
KERNEL = "kernel"


def term_path(path: str, index: int) -> str:
    """The path of term ``index`` of the sum or product at ``path`` (``kernel/terms/0``)."""
    return f"{path}/terms/{index}"


def kernel_site(role: str, path: str, param: str) -> str:
    """A kernel hyperparameter: ``{role}/{path}/{param}``, e.g. ``terminal/kernel/lengthscale``."""
    return f"{role}/{path}/{param}"


def noise_site(role: str) -> str:
    """The observation noise (std): ``{role}/noise``."""
    return f"{role}/noise"


def mean_site(role: str) -> str:
    """A GP's constant mean: ``{role}/mean/constant``."""
    return f"{role}/mean/constant"


def layer_prefix(role: str, layer: int) -> str:
    """A network layer's prefix: ``{role}/layer{i}``."""
    return f"{role}/layer{layer}"


def layer_site(role: str, layer: int, leaf: str) -> str:
    """A network layer's site: ``w``, ``b``; under a horseshoe ``tau``, ``lambda``, ``w_raw`` (and
    ``c2`` when regularised); a hyperprior on a Normal weight samples ``w_decentered``."""
    return f"{layer_prefix(role, layer)}/{leaf}"


def hyperprior_site(site: str, param: str) -> str:
    """A hyperprior on parameter ``param`` of the prior at ``site``: ``{site}/{param}``."""
    return f"{site}/{param}"


def observation_site(role: str) -> str:
    """A BNN's observed outputs: ``{role}/y``."""
    return f"{role}/y"


def observation_plate(role: str) -> str:
    """A BNN's plate over observations: ``{role}/obs``."""
    return f"{role}/obs"


def depth_site(role: str) -> str:
    """The depth chosen under a speed prior: ``{role}/depth``."""
    return f"{role}/depth"


def marginal_likelihood_site(role: str) -> str:
    """A GP's marginal likelihood factor: ``{role}/marginal_likelihood``."""
    return f"{role}/marginal_likelihood"


def variable(site: str) -> str:
    """The ArviZ variable name of a site (``terminal/kernel/lengthscale`` -> ``terminal.kernel.lengthscale``)."""
    return site.replace("/", ".")
