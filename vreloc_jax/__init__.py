"""vreloc_jax: weakly- and fully-supervised video re-localization in JAX/Flax.

A reimplementation of Huang et al., "Weakly-Supervised Video Re-Localization with
Multiscale Attention Model" (AAAI 2020), evaluated on the ActivityNet
re-localization benchmark of Feng et al. (ECCV 2018).
"""

__version__ = "0.1.0"
