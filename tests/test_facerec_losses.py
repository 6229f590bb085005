"""facerec.losses against plain references: HobbitLong's SupConLoss (torch) and a direct numpy ArcFace."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facerec import losses

torch = pytest.importorskip("torch")


def supcon_reference(features, labels, temperature=0.07, base_temperature=0.07, per_anchor=False):
  """HobbitLong/SupContrast losses.py SupConLoss.forward (contrast_mode='all'), features [bsz, n_views, d]
  already L2-normalised. per_anchor=True returns the (n_views * bsz,) anchor losses before the final mean (NaN
  for anchors without a positive, where the original divides 0 by 0)."""
  features = torch.as_tensor(np.asarray(features, np.float64))
  labels = torch.as_tensor(np.asarray(labels)).contiguous().view(-1, 1)
  batch_size, contrast_count = features.shape[0], features.shape[1]
  mask = torch.eq(labels, labels.T).double()
  contrast_feature = torch.cat(torch.unbind(features, dim=1), dim=0)
  anchor_feature, anchor_count = contrast_feature, contrast_count
  anchor_dot_contrast = torch.div(torch.matmul(anchor_feature, contrast_feature.T), temperature)
  logits_max, _ = torch.max(anchor_dot_contrast, dim=1, keepdim=True)
  logits = anchor_dot_contrast - logits_max.detach()
  mask = mask.repeat(anchor_count, contrast_count)
  logits_mask = torch.scatter(torch.ones_like(mask), 1, torch.arange(batch_size * anchor_count).view(-1, 1), 0)
  mask = mask * logits_mask
  exp_logits = torch.exp(logits) * logits_mask
  log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True) + 1e-9)
  mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
  loss = -(temperature / base_temperature) * mean_log_prob_pos
  if per_anchor:
    return loss.numpy()
  return float(loss.view(anchor_count, batch_size).mean())


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _clustered(rng, labels, d=16, spread=0.6):
  centres = rng.normal(size=(int(np.max(labels)) + 1, d))
  return (centres[labels] + spread * rng.normal(size=(len(labels), d))).astype(np.float32)


# 1e-9 inside the reference's log and float32 vs float64: ~1e-6 relative on losses of ~2-4
_TOL = dict(rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("temperature,base", [(0.07, 0.07), (0.1, 0.07), (0.5, 1.0)])
def test_supcon_matches_reference(temperature, base):
  rng = np.random.default_rng(0)
  labels = np.array([0, 1, 2, 0, 1, 2, 0, 3, 3, 1])  # every anchor has a positive
  emb = _clustered(rng, labels) * rng.uniform(0.5, 3, size=(10, 1)).astype(np.float32)  # normalised inside
  ref = supcon_reference(_unit(emb)[:, None], labels, temperature, base)
  got = jax.jit(losses.supcon_loss, static_argnames=("temperature", "base_temperature"))(
      emb, labels, temperature=temperature, base_temperature=base)
  np.testing.assert_allclose(float(got), ref, **_TOL)


def test_supcon_anchors_without_positive_are_excluded():
  rng = np.random.default_rng(1)
  labels = np.array([0, 0, 1, 2, 2, 2, 3, 4])  # 1, 3, 4 are singletons: in denominators, not anchors
  emb = _clustered(rng, labels)
  per_anchor = supcon_reference(_unit(emb)[:, None], labels, per_anchor=True)
  assert np.isnan(per_anchor[[2, 6, 7]]).all() and np.isfinite(np.delete(per_anchor, [2, 6, 7])).all()
  np.testing.assert_allclose(float(losses.supcon_loss(emb, labels)), np.nanmean(per_anchor), **_TOL)
  # no positives at all: 0, with finite (zero) gradients
  singles = np.arange(8)
  assert float(losses.supcon_loss(emb, singles)) == 0.0
  g = jax.grad(losses.supcon_loss)(jnp.asarray(emb), singles)
  assert np.all(np.asarray(g) == 0)


def test_supcon_mask_drops_padded_rows():
  rng = np.random.default_rng(2)
  labels = np.array([0, 1, 0, 2, 1, 2, 2])
  emb = _clustered(rng, labels)
  ref = supcon_reference(_unit(emb)[:, None], labels)
  # pad with zero rows, rows sharing real labels and a duplicate of a real row: all must be ignored
  pad = np.concatenate([np.zeros((2, 16)), emb[:1] * 5, rng.normal(size=(1, 16))]).astype(np.float32)
  emb_p = np.concatenate([emb[:3], pad, emb[3:]])
  labels_p = np.concatenate([labels[:3], [0, 0, 0, 1], labels[3:]])
  mask = np.array([True] * 3 + [False] * 4 + [True] * 4)
  loss_fn = jax.jit(losses.supcon_loss)
  np.testing.assert_allclose(float(loss_fn(emb_p, labels_p, mask=mask)), ref, **_TOL)
  assert abs(float(loss_fn(emb_p, labels_p)) - ref) > 1e-3  # the padding would matter without the mask
  g = np.asarray(jax.grad(losses.supcon_loss)(jnp.asarray(emb_p), labels_p, mask=mask))
  assert np.isfinite(g).all() and np.all(g[~mask] == 0)  # zero rows do not poison the gradient with NaN


def test_supcon_small_temperature_is_finite():
  rng = np.random.default_rng(3)
  labels = np.array([0, 0, 1, 1])
  emb = jnp.asarray(_clustered(rng, labels))
  mask = jnp.array([True, True, True, False])
  loss, g = jax.value_and_grad(losses.supcon_loss)(emb, labels, temperature=0.005, base_temperature=0.005,
                                                   mask=mask)
  assert np.isfinite(float(loss)) and np.isfinite(np.asarray(g)).all()


def test_cross_resolution_infonce():
  rng = np.random.default_rng(4)
  labels = np.array([0, 1, 2, 3, 0, 1, 5, 6])
  hr = _clustered(rng, labels, spread=0.3)
  aligned = hr + 0.05 * rng.normal(size=hr.shape).astype(np.float32)  # DSR embedding ~ its own HR
  loss = float(losses.cross_resolution_infonce(aligned, hr, labels))
  stacked = float(losses.supcon_loss(np.concatenate([aligned, hr]), np.concatenate([labels, labels])))
  np.testing.assert_allclose(loss, stacked, rtol=1e-6)
  # HobbitLong with 2 views (sr, hr) per sample, unmodified: every anchor has its twin as a positive
  ref = supcon_reference(np.stack([_unit(aligned), _unit(hr)], axis=1), labels)
  np.testing.assert_allclose(loss, ref, **_TOL)
  # lower when SR embeddings sit with their subject than when they are unrelated or swapped between subjects
  unrelated = rng.normal(size=hr.shape).astype(np.float32)
  swapped = np.roll(hr, 1, axis=0)
  assert loss < float(losses.cross_resolution_infonce(unrelated, hr, labels)) - 0.5
  assert loss < float(losses.cross_resolution_infonce(swapped, hr, labels)) - 0.5
  # temperature is not rescaled by a base temperature (plain InfoNCE)
  t = 0.2
  np.testing.assert_allclose(float(losses.cross_resolution_infonce(aligned, hr, labels, temperature=t)),
                             supcon_reference(np.stack([_unit(aligned), _unit(hr)], 1), labels, t, t), **_TOL)
  # masked pairs drop from both halves
  mask = np.array([True] * 6 + [False] * 2)
  np.testing.assert_allclose(float(losses.cross_resolution_infonce(aligned, hr, labels, mask=mask)),
                             float(losses.cross_resolution_infonce(aligned[:6], hr[:6], labels[:6])), rtol=1e-6)


def test_identity_loss():
  rng = np.random.default_rng(5)
  a = rng.normal(size=(4, 8)).astype(np.float32)
  assert abs(float(losses.identity_loss(a, 3 * a))) < 1e-6
  np.testing.assert_allclose(float(losses.identity_loss(a, -a)), 2.0, rtol=1e-6)
  e = np.eye(8, dtype=np.float32)
  np.testing.assert_allclose(float(losses.identity_loss(e[:4], e[4:])), 1.0, rtol=1e-6)
  b = rng.normal(size=(4, 8)).astype(np.float32)
  np.testing.assert_allclose(float(losses.identity_loss(a, b)), np.mean(1 - np.sum(_unit(a) * _unit(b), -1)),
                             rtol=1e-5)


def arcface_reference(emb, weight, labels, s, m):
  """Direct: angles by arccos, target s cos(theta + m) while theta + m < pi, else s (cos - m sin m)."""
  cos = np.clip(_unit(emb.astype(np.float64)) @ _unit(weight.astype(np.float64)).T, -1, 1)
  theta = np.arccos(cos)
  target = np.where(theta + m < np.pi, np.cos(theta + m), cos - m * np.sin(m))
  onehot = np.eye(weight.shape[0], dtype=bool)[labels]
  logits = s * np.where(onehot, target, cos)
  lse = np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1)) + logits.max(1)
  return logits, float(np.mean(lse - logits[np.arange(len(labels)), labels])), theta[onehot]


@pytest.mark.parametrize("s,m", [(64.0, 0.5), (30.0, 0.3)])
def test_arcface_matches_direct_computation(s, m):
  rng = np.random.default_rng(6)
  n_cls, d = 5, 8
  weight = rng.normal(size=(n_cls, d)).astype(np.float32)
  labels = np.array([0, 1, 2, 3, 4, 0, 1, 2])
  w = _unit(weight)
  emb = np.concatenate([
      w[labels[:3]] * 2 + 0.3 * rng.normal(size=(3, d)),  # close to their centre: theta small
      rng.normal(size=(3, d)),  # random: theta near pi / 2
      -w[labels[6:]] + 0.1 * rng.normal(size=(2, d)),  # opposite their centre: theta + m > pi, the fallback
  ]).astype(np.float32)
  ref_logits, ref_loss, theta = arcface_reference(emb, weight, labels, s, m)
  assert np.sum(theta + m > np.pi) == 2 and np.sum(theta < 0.5) >= 3  # both branches are exercised
  logits = jax.jit(losses.arcface_logits, static_argnames=("s", "m"))(emb, weight, labels, s=s, m=m)
  assert logits.shape == (8, n_cls) and logits.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=2e-4 * s / 64)
  np.testing.assert_allclose(float(losses.arcface_loss(emb, weight, labels, s, m)), ref_loss, rtol=1e-5,
                             atol=1e-4)
  # the margin only touches the target column
  plain = s * _unit(emb.astype(np.float64)) @ w.T.astype(np.float64)
  off = ~np.eye(n_cls, dtype=bool)[labels]
  np.testing.assert_allclose(np.asarray(logits)[off], plain[off], atol=2e-4 * s / 64)


def test_arcface_target_is_monotone_and_gradients_finite():
  # sweep theta over [0, pi] in a 2-d plane: the target logit must fall monotonically (the fallback's purpose)
  theta = np.linspace(0, np.pi, 401)
  emb = np.stack([np.cos(theta), np.sin(theta)], 1).astype(np.float32)
  weight = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
  labels = np.zeros(len(theta), np.int32)
  target = np.asarray(losses.arcface_logits(emb, weight, labels))[:, 0]
  assert np.all(np.diff(target) < 1e-4)
  np.testing.assert_allclose(target[0], 64 * math.cos(0.5), rtol=1e-6)  # theta = 0 exactly: cos(m)
  # an embedding equal to its centre (cos = 1, sin = 0) must not give NaN gradients
  g = jax.grad(losses.arcface_loss)(jnp.asarray(emb[:3]), jnp.asarray(weight), labels[:3])
  assert np.isfinite(np.asarray(g)).all()
  gw = jax.grad(losses.arcface_loss, argnums=1)(jnp.asarray(emb), jnp.asarray(weight), labels)
  assert np.isfinite(np.asarray(gw)).all()


def test_l2_normalize():
  x = jnp.array([[3.0, 4.0], [0.0, 0.0]])
  np.testing.assert_allclose(np.asarray(losses.l2_normalize(x)), [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
  g = jax.grad(lambda v: jnp.sum(losses.l2_normalize(v)))(x)
  assert np.isfinite(np.asarray(g)).all()
  assert losses.l2_normalize(jnp.ones((2, 3), jnp.bfloat16)).dtype == jnp.float32
