"""Loss terms and image metrics of the ear VAE teacher (spec 000/001: the "balanced" recipe).

All functions are pure JAX. Images are NHWC float in [0, 1]; per-pixel arithmetic runs in float32 whatever
the input dtype, because SSIM's variances and the small edge differences lose too much in bfloat16.
Each loss returns a scalar (mean over the batch); the metrics `ssim` / `psnr` return one value per image (B,).

The recipe (spec 000): total = 1.0 L1 + 1.0 perceptual + 0.4 (1 - SSIM) + 0.1 edge + 5e-6 KL + 0.1 contrastive,
with the pixel terms emphasising the image centre (centre weight 3) and hard pixels (automatic focal weights).
"""

from typing import Mapping

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def gaussian_window(size: int = 11, sigma: float = 1.5) -> jax.Array:
  """1-D Gaussian taps exp(-x^2 / 2 sigma^2) at x = -(size-1)/2 .. (size-1)/2, normalised to sum 1.

  These are the taps scipy.ndimage.gaussian_filter (and so skimage) uses for radius (size - 1) // 2; the 2-D
  window is their outer product, applied separably.
  """
  if size % 2 != 1:
    raise ValueError(f"window size must be odd, got {size}")
  x = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
  w = jnp.exp(-0.5 * (x / sigma) ** 2)
  return w / jnp.sum(w)


def _filter_valid(img: jax.Array, taps: jax.Array) -> jax.Array:
  """Separable depthwise 'valid' filtering of NHWC `img` with the 1-D `taps` along H then W."""
  c, k = img.shape[-1], taps.shape[0]
  dn = ("NHWC", "HWIO", "NHWC")
  # HIGHEST: SSIM takes E[x^2] - E[x]^2, which a TF32/bf16 conv pass would swamp with rounding error.
  conv = lambda z, kernel: jax.lax.conv_general_dilated(z, kernel, (1, 1), "VALID", dimension_numbers=dn,
                                                        feature_group_count=c, precision=_HIGHEST)
  img = conv(img, jnp.broadcast_to(taps.reshape(k, 1, 1, 1), (k, 1, 1, c)))
  return conv(img, jnp.broadcast_to(taps.reshape(1, k, 1, 1), (1, k, 1, c)))


def ssim(x: jax.Array, y: jax.Array, *, max_val: float = 1.0, window: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03, return_map: bool = False):
  """Structural similarity (Wang et al. 2004) with a Gaussian window; per-image mean SSIM, shape (B,).

  Local means, variances and covariance are Gaussian-weighted (population statistics, no N/(N-1)), each
  channel on its own, over the 'valid' region only (no padding: output (H-window+1, W-window+1)); the SSIM
  map is averaged over pixels and channels. With `return_map` also returns that map (B, H', W', C).

  Equals `skimage.metrics.structural_similarity(x, y, data_range=max_val, gaussian_weights=True, sigma=sigma,
  use_sample_covariance=False, channel_axis=-1)` given float64 input (skimage keeps float32 input in float32);
  measured ~3e-7 on the mean and ~1e-5 on the map. skimage filters with radius int(3.5 * sigma + 0.5) and
  crops that radius from each border, which is exactly 'valid' filtering with an 11-tap window at sigma 1.5;
  since it derives the window from sigma (`win_size` only sets the crop), the two agree for other sigmas only
  when window == 2 * int(3.5 * sigma + 0.5) + 1. skimage's default use_sample_covariance=True (N/(N-1)) is
  not Wang et al.'s definition and is not followed. This is also tf.image.ssim's convention (filter_size=11,
  filter_sigma=1.5).
  """
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  if x.shape != y.shape or x.ndim != 4:
    raise ValueError(f"ssim needs two NHWC images of one shape, got {x.shape} and {y.shape}")
  if min(x.shape[1:3]) < window:
    raise ValueError(f"images {x.shape[1:3]} are smaller than the {window}x{window} SSIM window")
  c = x.shape[-1]
  # (Co)variances come out as E[x^2] - E[x]^2, which cancels badly in float32 on smooth regions. They are
  # shift-invariant, so take them on images centred per channel (exact in real arithmetic; 10-20x less
  # error against float64) and add the offsets back only for the means.
  off_x = jnp.mean(x, axis=(1, 2), keepdims=True)
  off_y = jnp.mean(y, axis=(1, 2), keepdims=True)
  xc, yc = x - off_x, y - off_y
  # One filtering pass over the five statistics stacked along channels.
  stats = _filter_valid(jnp.concatenate([xc, yc, xc * xc, yc * yc, xc * yc], axis=-1),
                        gaussian_window(window, sigma))
  mu_xc, mu_yc, e_xx, e_yy, e_xy = (stats[..., i * c:(i + 1) * c] for i in range(5))
  var_x = e_xx - mu_xc * mu_xc
  var_y = e_yy - mu_yc * mu_yc
  cov = e_xy - mu_xc * mu_yc
  mu_x, mu_y = mu_xc + off_x, mu_yc + off_y
  c1 = (k1 * max_val) ** 2
  c2 = (k2 * max_val) ** 2
  ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
  per_image = jnp.mean(ssim_map, axis=(1, 2, 3))
  return (per_image, ssim_map) if return_map else per_image


def ssim_loss(recon: jax.Array, x: jax.Array, **ssim_kwargs) -> jax.Array:
  """1 - SSIM, averaged over the batch (0 for identical images)."""
  return jnp.mean(1.0 - ssim(recon, x, **ssim_kwargs))


def psnr(x: jax.Array, y: jax.Array, max_val: float = 1.0) -> jax.Array:
  """Peak signal-to-noise ratio in dB per image (B,): 10 log10(max_val^2 / MSE), MSE over H, W and C.

  As skimage.metrics.peak_signal_noise_ratio(x, y, data_range=max_val); identical images give +inf.
  """
  err = jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32)
  mse = jnp.mean(err * err, axis=tuple(range(1, err.ndim)))
  return 10.0 * jnp.log10(max_val ** 2 / mse)


def spatial_weight_map(h: int, w: int, center_weight: float = 3.0) -> jax.Array:
  """Centre-emphasis map (h, w), mean 1: a Gaussian bump 1 + (center_weight - 1) exp(-r^2 / 2 s^2).

  r is measured in normalised coordinates (each axis mapped to [-1, 1] at the image edges, so the bump is an
  ellipse matching the crop's aspect) with s = 0.5: the bump falls to exp(-2) = 0.14 of its height at the edge
  midpoints and exp(-4) = 0.02 at the corners, so for center_weight 3 the raw map goes 3 -> 1.27 -> 1.04.
  Ear crops are centred on the ear, so this weights the ear over the background ~3:1 without a hard mask
  that would need per-dataset tuning. The map is divided by its mean, so even as a plain multiplier
  (mean(w * err)) it keeps a term at the scale of its unweighted version, which the spec's weights assume.
  """
  u = (2.0 * (jnp.arange(h, dtype=jnp.float32) + 0.5) / h - 1.0)[:, None]
  v = (2.0 * (jnp.arange(w, dtype=jnp.float32) + 0.5) / w - 1.0)[None, :]
  bump = jnp.exp(-(u * u + v * v) / (2 * 0.5 ** 2))
  m = 1.0 + (center_weight - 1.0) * bump
  return m / jnp.mean(m)


def focal_weights(err: jax.Array, gamma: float = 1.0, eps: float = 1e-6) -> jax.Array:
  """Per-element weights (1 + err / mean(err))^gamma, renormalised to mean 1 per sample; no gradient.

  `err` is a non-negative per-element error with a leading batch axis (e.g. |recon - x|, (B, H, W, C)); the
  mean is taken per sample, so an easy image's hard pixels are still emphasised. Relative to the sample's
  mean error, a perfect pixel weighs 1 and a pixel at the mean error 2^gamma (before renormalising): bounded
  below (no pixel is dropped) and growing smoothly with the error. gamma = 1 (the default) makes an L1 term
  behave between L1 and L2 on the hard pixels; gamma = 0 turns the weighting off. The weights are
  stop_gradient-ed: they choose where the loss looks, they are not something to optimise.
  """
  err = jax.lax.stop_gradient(jnp.asarray(err, jnp.float32))
  axes = tuple(range(1, err.ndim))
  rel = err / (jnp.mean(err, axis=axes, keepdims=True) + eps)
  w = (1.0 + rel) ** gamma
  return w / jnp.mean(w, axis=axes, keepdims=True)


def _weighted_mean(err: jax.Array, weights: jax.Array) -> jax.Array:
  """Per-sample weighted mean sum(w e) / sum(w) of (B, ...) `err`, averaged over the batch."""
  weights = jnp.broadcast_to(weights, err.shape)
  axes = tuple(range(1, err.ndim))
  return jnp.mean(jnp.sum(weights * err, axis=axes) / jnp.sum(weights, axis=axes))


def _pixel_weights(weight_map, shape) -> jax.Array:
  """(H, W) or (B, H, W) map (None: uniform) -> broadcastable against NHWC `shape`."""
  if weight_map is None:
    return jnp.ones((1, *shape[1:3], 1), jnp.float32)
  weight_map = jnp.asarray(weight_map, jnp.float32)
  return weight_map[None, ..., None] if weight_map.ndim == 2 else weight_map[..., None]


def weighted_l1(recon: jax.Array, x: jax.Array, weight_map=None, focal: bool = True,
                gamma: float = 1.0) -> jax.Array:
  """Spatially (and optionally focally) weighted mean |recon - x|.

  `weight_map` is (H, W) or (B, H, W) (e.g. `spatial_weight_map`), None for uniform. With `focal`, it is
  multiplied by `focal_weights(|recon - x|, gamma)`. The result is a per-image weighted *mean*
  (sum w e / sum w), so with uniform weights it is exactly the plain L1 and weighting never rescales the term.
  """
  err = jnp.abs(jnp.asarray(recon, jnp.float32) - jnp.asarray(x, jnp.float32))
  weights = _pixel_weights(weight_map, err.shape)
  if focal:
    weights = weights * focal_weights(err, gamma)
  return _weighted_mean(err, weights)


def edge_loss(recon: jax.Array, x: jax.Array, weight_map=None) -> jax.Array:
  """Gradient-matching loss mean|d_x(recon - x)| + mean|d_y(recon - x)| (spec 001: |grad recon - grad x|).

  Gradients are forward differences between neighbouring pixels, not Sobel: Sobel smooths across three
  pixels, which discounts exactly the one-pixel-sharp edges this term exists to restore. The two directions
  are summed (anisotropic total variation of the error). `weight_map` (H, W) or (B, H, W) weights each
  difference by the mean of its two pixels' weights (weighted mean, as in `weighted_l1`).
  """
  d = jnp.asarray(recon, jnp.float32) - jnp.asarray(x, jnp.float32)
  w = _pixel_weights(weight_map, d.shape)
  dx = jnp.abs(d[:, :, 1:] - d[:, :, :-1])
  dy = jnp.abs(d[:, 1:] - d[:, :-1])
  wx = 0.5 * (w[:, :, 1:] + w[:, :, :-1])
  wy = 0.5 * (w[:, 1:] + w[:, :-1])
  return _weighted_mean(dx, wx) + _weighted_mean(dy, wy)


def kl_divergence(mu: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mu, exp(logvar)) || N(0, I)) summed over latent dims, averaged over the batch.

  Summing over dims (not averaging) is what puts a 1024-d latent's KL in the spec's "healthy 100-300" range,
  which its KL weight of 5e-6 is calibrated against.
  """
  mu = jnp.asarray(mu, jnp.float32)
  logvar = jnp.asarray(logvar, jnp.float32)
  per_sample = -0.5 * jnp.sum(1.0 + logvar - mu * mu - jnp.exp(logvar), axis=-1)
  return jnp.mean(per_sample)


def contrastive_loss(mu: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Mean |cosine similarity| over ordered pairs i != j of the batch's latent means (B, D); 0 for B = 1.

  Spec 000: `mean(|similarity(ear_i, ear_j)|)`, pushing different ears' codes towards orthogonal so the
  latents don't collapse. The norm is floored at `eps` so an all-zero code has a finite gradient.
  """
  mu = jnp.asarray(mu, jnp.float32)
  b = mu.shape[0]
  z = mu * jax.lax.rsqrt(jnp.maximum(jnp.sum(mu * mu, axis=-1, keepdims=True), eps * eps))
  sim = jnp.abs(jnp.matmul(z, z.T, precision=_HIGHEST))
  off_diagonal = 1.0 - jnp.eye(b, dtype=sim.dtype)
  return jnp.sum(sim * off_diagonal) / max(b * (b - 1), 1)


def perceptual_loss(feats_recon: Mapping[str, jax.Array], feats_x: Mapping[str, jax.Array],
                    layer_weights: Mapping[str, float] | None = None) -> jax.Array:
  """sum_k w_k mean|f_k(recon) - f_k(x)| over VGG taps k (e.g. `common.models.vgg.VGG16` outputs).

  Default w_k = 1 / #taps (a plain mean over taps); `layer_weights` gives the w_k per tap name and its keys
  select the taps used. The spec names the term ("VGG perceptual", "semantic feature matching") but gives no
  formula; L1 is chosen for the same robustness to outliers as the pixel term, and because VGG taps are
  unbounded, heavy-tailed ReLU outputs whose squared errors would let a few large activations dominate.
  Unlike LPIPS, features are not channel-normalised and there are no learned per-channel weights.
  """
  names = list(layer_weights) if layer_weights is not None else list(feats_recon)
  if not names:
    raise ValueError("perceptual_loss needs at least one feature tap")
  total = 0.0
  for name in names:
    w = layer_weights[name] if layer_weights is not None else 1.0 / len(names)
    diff = jnp.asarray(feats_recon[name], jnp.float32) - jnp.asarray(feats_x[name], jnp.float32)
    total = total + w * jnp.mean(jnp.abs(diff))
  return total


def total_loss(terms: Mapping[str, jax.Array], weights: Mapping[str, float]):
  """(sum_k weights[k] * terms[k], metrics) with metrics = every term plus "total".

  Zero-weight terms are left out of the sum rather than multiplied by 0, so a disabled term that comes out
  inf/NaN (e.g. KL in autoencoder mode) cannot poison the total; they are still reported. Weights must be
  Python numbers (config values) for that test to be static under jit. A term without a weight, or a
  non-zero weight without its term, is a config error and raises.
  """
  missing = sorted(set(terms) - set(weights))
  if missing:
    raise KeyError(f"loss terms without a weight: {missing}")
  absent = sorted(k for k, w in weights.items() if w != 0 and k not in terms)
  if absent:
    raise KeyError(f"non-zero loss weights without a computed term: {absent}")
  total = sum((weights[k] * jnp.asarray(v, jnp.float32) for k, v in terms.items() if weights[k] != 0),
              jnp.zeros((), jnp.float32))
  metrics = {k: jnp.asarray(v, jnp.float32) for k, v in terms.items()}
  metrics["total"] = total
  return total, metrics
