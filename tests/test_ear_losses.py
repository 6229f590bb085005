"""Ear VAE losses: SSIM/PSNR against scikit-image, every loss term on inputs with known answers, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from skimage import metrics as skm

from common.models import vgg
from ear_teacher import losses

_H, _W = 40, 56  # non-square, larger than the 11x11 SSIM window

# Jitted once per shape: run eagerly, every primitive compiles on its own, which dominates the test time.
_weighted_l1 = jax.jit(losses.weighted_l1, static_argnames=("focal",))
_edge_loss = jax.jit(losses.edge_loss)
_kl = jax.jit(losses.kl_divergence)
_contrastive = jax.jit(losses.contrastive_loss)
_weight_map = jax.jit(losses.spatial_weight_map, static_argnums=(0, 1))
_ssim = jax.jit(losses.ssim, static_argnames=("return_map",))
_ssim_loss = jax.jit(losses.ssim_loss)
_psnr = jax.jit(losses.psnr)
_perceptual = jax.jit(losses.perceptual_loss)


def _image_pairs(channels: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """(reference, distorted) pairs covering flat, smooth, high-frequency, blurred and noisy content."""
  rng = np.random.default_rng(channels)
  shape = (_H, _W, channels)
  yy, xx = np.meshgrid(np.linspace(0, 1, _H), np.linspace(0, 1, _W), indexing="ij")
  tint = np.linspace(0.6, 1.0, channels)  # colour channels differ, so per-channel handling is exercised
  gradient = (0.5 * (yy + xx))[..., None] * tint
  checker = ((np.arange(_H)[:, None] // 6 + np.arange(_W)[None, :] // 6) % 2).astype(np.float64)[..., None] * tint
  random = rng.uniform(0, 1, shape)
  smooth = ndimage.gaussian_filter(rng.uniform(0, 1, shape), sigma=(3, 3, 0))
  smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
  blur = lambda im: ndimage.gaussian_filter(im, sigma=(1.5, 1.5, 0))
  noisy = lambda im: np.clip(im + rng.normal(0, 0.05, shape), 0, 1)
  pairs = [
      (random, rng.uniform(0, 1, shape)),
      (gradient, checker),
      (checker, blur(checker)),
      (checker, noisy(checker)),
      (smooth, blur(smooth)),
      (smooth, noisy(smooth)),
      (gradient, noisy(gradient)),
      (smooth, 0.8 * smooth + 0.1),  # contrast/brightness change only
      (smooth, smooth),
  ]
  return [(a.astype(np.float32), b.astype(np.float32)) for a, b in pairs]


def _skimage_ssim(a, b, **kwargs):
  # float64: skimage keeps float32 input in float32, and its own rounding would dominate the comparison.
  a, b = a.astype(np.float64), b.astype(np.float64)
  channel_axis = -1 if a.shape[-1] > 1 else None
  if channel_axis is None:
    a, b = a[..., 0], b[..., 0]
  return skm.structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                   use_sample_covariance=False, channel_axis=channel_axis, **kwargs)


# Measured max |ours (float32) - skimage (float64)| over these pairs: mean SSIM 2.7e-7 colour / 1.1e-7 grey,
# SSIM map 1.2e-5 (smooth pairs, where the variances are tiny); PSNR 1.9e-6 dB. Tolerances leave ~10x headroom.
@pytest.mark.parametrize("channels", [3, 1])
def test_ssim_matches_skimage(channels):
  pairs = _image_pairs(channels)
  x = jnp.stack([a for a, _ in pairs])
  y = jnp.stack([b for _, b in pairs])
  ours = np.asarray(_ssim(x, y))
  ref = np.array([_skimage_ssim(a, b) for a, b in pairs])
  assert ours.shape == (len(pairs),)
  np.testing.assert_allclose(ours, ref, rtol=0, atol=3e-6)
  assert ours[-1] == pytest.approx(1.0, abs=1e-6)


def test_ssim_map_matches_skimage():
  a, b = _image_pairs(3)[7]  # the worst pair for the map
  _, ours = _ssim(a[None], b[None], return_map=True)
  _, full = _skimage_ssim(a, b, full=True)
  pad = 5  # skimage computes the map everywhere and crops the window radius for the mean
  assert ours.shape == (1, _H - 2 * pad, _W - 2 * pad, 3)
  np.testing.assert_allclose(ours[0], full[pad:-pad, pad:-pad], rtol=0, atol=1e-4)


def test_ssim_rejects_small_images():
  with pytest.raises(ValueError, match="window"):
    losses.ssim(jnp.zeros((1, 10, 32, 3)), jnp.zeros((1, 10, 32, 3)))


def test_gaussian_window_matches_scipy():
  impulse = np.zeros(11)
  impulse[5] = 1.0
  ref = ndimage.gaussian_filter1d(impulse, 1.5, truncate=3.5)
  np.testing.assert_allclose(losses.gaussian_window(11, 1.5), ref, rtol=1e-6)


@pytest.mark.parametrize("channels", [3, 1])
def test_psnr_matches_skimage(channels):
  pairs = _image_pairs(channels)[:-1]  # identical images give inf in both
  x = jnp.stack([a for a, _ in pairs])
  y = jnp.stack([b for _, b in pairs])
  ref = [skm.peak_signal_noise_ratio(a.astype(np.float64), b.astype(np.float64), data_range=1.0) for a, b in pairs]
  np.testing.assert_allclose(_psnr(x, y), ref, rtol=0, atol=2e-5)
  assert np.isposinf(_psnr(x[:1], x[:1])[0])


def test_losses_vanish_on_identical_inputs():
  x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (2, _H, _W, 3)), jnp.float32)
  wmap = _weight_map(_H, _W)
  feats = {"relu1_2": x * 2.0, "relu2_2": x[:, ::2, ::2] + 1.0}
  assert float(_weighted_l1(x, x, wmap)) == 0.0
  assert float(_edge_loss(x, x, wmap)) == 0.0
  assert float(_perceptual(feats, feats)) == 0.0
  assert float(_ssim_loss(x, x)) == pytest.approx(0.0, abs=1e-6)


def test_weighted_l1_reduces_to_plain_l1():
  rng = np.random.default_rng(1)
  r, x = (jnp.asarray(rng.uniform(0, 1, (2, 16, 20, 3)), jnp.float32) for _ in range(2))
  plain = float(jnp.mean(jnp.abs(r - x)))
  assert float(_weighted_l1(r, x, None, focal=False)) == pytest.approx(plain, rel=1e-6)
  # A constant map is a no-op whatever its level, since the loss is a weighted mean.
  assert float(_weighted_l1(r, x, jnp.full((16, 20), 7.0), focal=False)) == pytest.approx(plain, rel=1e-6)
  # Centre emphasis: an error only at the centre costs more than the same error only at the border.
  centre = jnp.zeros((1, 16, 20, 3)).at[:, 6:10, 8:12].set(0.5)
  border = jnp.zeros((1, 16, 20, 3)).at[:, :4, :4].set(0.5)
  wmap = _weight_map(16, 20)
  zeros = jnp.zeros_like(centre)
  assert _weighted_l1(centre, zeros, wmap, focal=False) > 2 * _weighted_l1(border, zeros, wmap, focal=False)


def test_edge_loss_known_value():
  # recon - x is a horizontal ramp with step 0.1: every x-difference is 0.1, every y-difference 0.
  x = jnp.zeros((1, 8, 8, 1))
  recon = x + 0.1 * jnp.arange(8, dtype=jnp.float32)[None, None, :, None]
  assert float(_edge_loss(recon, x)) == pytest.approx(0.1, rel=1e-6)
  # A constant offset has no gradient, so it costs nothing here (L1 sees it, the edge term does not).
  assert float(_edge_loss(x + 0.3, x)) == 0.0


def test_kl_divergence():
  assert float(_kl(jnp.zeros((4, 1024)), jnp.zeros((4, 1024)))) == 0.0
  # Per dim: -0.5 (1 + logvar - mu^2 - exp(logvar)); mu=1, logvar=0 -> 0.5; mu=0, logvar=log 2 -> 0.5 (1 - log 2).
  mu = jnp.array([[1.0, 0.0], [0.0, 0.0]])
  logvar = jnp.array([[0.0, np.log(2.0)], [0.0, 0.0]])
  expected = ((0.5 + 0.5 * (1 - np.log(2.0))) + 0.0) / 2  # summed over dims, mean over the 2 samples
  assert float(_kl(mu, logvar)) == pytest.approx(expected, rel=1e-6)
  # Summed over dims: a 1024-d posterior with a modest offset lands in the spec's "healthy 100-300".
  assert 100 < float(_kl(jnp.full((2, 1024), 0.5), jnp.zeros((2, 1024)))) < 300


def test_contrastive_loss():
  v = jnp.array([1.0, 2.0, -3.0])
  assert float(_contrastive(jnp.stack([v, v, 2 * v]))) == pytest.approx(1.0, rel=1e-6)
  assert float(_contrastive(jnp.stack([v, -v]))) == pytest.approx(1.0, rel=1e-6)  # |cos| = 1
  assert float(_contrastive(jnp.eye(4, 8))) == 0.0
  assert float(_contrastive(v[None])) == 0.0
  # Hand-computed: cos(a, b) = 1/sqrt(2), cos(a, c) = 0, cos(b, c) = 0 -> mean over 6 ordered pairs = sqrt(2)/6.
  abc = jnp.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
  assert float(_contrastive(abc)) == pytest.approx(np.sqrt(2) / 6, rel=1e-6)


def test_focal_weights():
  err = jnp.asarray(np.random.default_rng(2).uniform(0, 1, (3, 8, 8, 3)) ** 3, jnp.float32)
  w = losses.focal_weights(err)
  np.testing.assert_allclose(jnp.mean(w, axis=(1, 2, 3)), 1.0, rtol=1e-6)
  for b in range(3):  # monotone in the error within each sample
    order = np.argsort(np.asarray(err[b]).ravel())
    assert np.all(np.diff(np.asarray(w[b]).ravel()[order]) >= 0)
  assert float(w.min()) > 0  # no pixel is dropped
  np.testing.assert_allclose(losses.focal_weights(err, gamma=0.0), 1.0)
  grad = jax.grad(lambda e: jnp.sum(losses.focal_weights(e) * jnp.arange(e.size).reshape(e.shape)))(err)
  assert not np.any(grad)


def test_spatial_weight_map():
  for h, w in ((64, 64), (40, 56), (33, 47)):
    m = np.asarray(_weight_map(h, w, center_weight=3.0))
    assert m.shape == (h, w)
    assert m.mean() == pytest.approx(1.0, rel=1e-6)
    peak = np.unravel_index(np.argmax(m), m.shape)
    assert abs(peak[0] - (h - 1) / 2) <= 0.5 and abs(peak[1] - (w - 1) / 2) <= 0.5
    np.testing.assert_allclose(m, m[::-1, ::-1], rtol=1e-6)  # symmetric about the centre
    assert m.max() / m.min() == pytest.approx(3.0, rel=0.05)  # centre vs corner ~ center_weight : 1
  np.testing.assert_allclose(_weight_map(16, 16, center_weight=1.0), 1.0, rtol=1e-6)


def test_total_loss():
  terms = {"l1": jnp.float32(0.5), "ssim": jnp.float32(0.2), "kl": jnp.float32(jnp.nan)}
  total, metrics = losses.total_loss(terms, {"l1": 1.0, "ssim": 0.4, "kl": 0.0, "perceptual": 0.0})
  assert float(total) == pytest.approx(0.5 + 0.4 * 0.2, rel=1e-6)  # the NaN term has weight 0: skipped
  assert set(metrics) == {"l1", "ssim", "kl", "total"} and np.isnan(metrics["kl"])
  with pytest.raises(KeyError, match="without a weight"):
    losses.total_loss(terms, {"l1": 1.0, "ssim": 0.4})
  with pytest.raises(KeyError, match="without a computed term"):
    losses.total_loss(terms, {"l1": 1.0, "ssim": 0.4, "kl": 0.0, "edge": 0.1})


# The spec-000 recipe weights.
_WEIGHTS = {"l1": 1.0, "perceptual": 1.0, "ssim": 0.4, "edge": 0.1, "kl": 5e-6, "contrastive": 0.1}
_VGG = vgg.VGG16(taps=("relu1_2", "relu2_2"))


@jax.jit
def _loss_and_grads(recon, x, mu, logvar, vgg_vars):
  wmap = losses.spatial_weight_map(*x.shape[1:3])

  def loss_fn(recon, mu, logvar):
    terms = {
        "l1": losses.weighted_l1(recon, x, wmap),
        "perceptual": losses.perceptual_loss(_VGG.apply(vgg_vars, recon), _VGG.apply(vgg_vars, x)),
        "ssim": losses.ssim_loss(recon, x),
        "edge": losses.edge_loss(recon, x, wmap),
        "kl": losses.kl_divergence(mu, logvar),
        "contrastive": losses.contrastive_loss(mu),
    }
    return losses.total_loss(terms, _WEIGHTS)

  return jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True)(recon, mu, logvar)


@pytest.mark.parametrize("identical", [False, True])
def test_total_loss_gradients_finite(identical):
  # recon == x and mu == 0 are where |.|, norms and ratios are non-differentiable or 0/0.
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.uniform(0, 1, (2, 32, 32, 3)), jnp.float32)
  recon = x if identical else jnp.asarray(rng.uniform(0, 1, x.shape), jnp.float32)
  mu = jnp.zeros((2, 16)) if identical else jnp.asarray(rng.normal(size=(2, 16)), jnp.float32)
  logvar = jnp.zeros((2, 16))
  # He-scaled random weights from the shapes alone: compiling the Flax initialisers would cost seconds.
  shapes = jax.eval_shape(_VGG.init, jax.random.key(0), x)
  vgg_vars = jax.tree.map(
      lambda a: (rng.normal(0, np.sqrt(2 / np.prod(a.shape[:-1])), a.shape) if a.ndim > 1 else np.zeros(a.shape))
      .astype(np.float32), shapes)
  (total, metrics), grads = _loss_and_grads(recon, x, mu, logvar, vgg_vars)
  assert np.isfinite(total) and all(np.isfinite(v) for v in metrics.values())
  for g in grads:
    assert np.all(np.isfinite(g))
  if not identical:
    assert np.any(grads[0]) and np.any(grads[1])
