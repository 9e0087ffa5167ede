"""Networks of the Deep SAD / Deep SVDD and latent-norm autoencoder methods, for 2D slices and 3D volumes.

* :class:`DeepSAD`, :func:`deep_sad_loss`, :func:`soft_boundary_loss`, :func:`soft_boundary_radius`
  (Ruff et al., ICLR 2020 / ICML 2018);
* :class:`LatentNormAutoEncoder`, :func:`latent_norm_score` (Ghafourian et al., arXiv 2306.12627);
* their bias-free building blocks :class:`BiasFreeEncoder`, :class:`BiasFreeDecoder`, :class:`BiasFreeAutoEncoder`.
"""

from mri_anomaly.models.bias_free import BiasFreeAutoEncoder, BiasFreeDecoder, BiasFreeEncoder
from mri_anomaly.models.deep_sad import DeepSAD, deep_sad_loss, soft_boundary_loss, soft_boundary_radius
from mri_anomaly.models.latent_norm import LatentNormAutoEncoder, latent_norm_score

__all__ = [
    "BiasFreeAutoEncoder",
    "BiasFreeDecoder",
    "BiasFreeEncoder",
    "DeepSAD",
    "LatentNormAutoEncoder",
    "deep_sad_loss",
    "latent_norm_score",
    "soft_boundary_loss",
    "soft_boundary_radius",
]
