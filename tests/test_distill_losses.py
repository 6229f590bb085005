"""Distillation losses against torch references (BCEWithLogitsLoss, adaptive_avg_pool2d, mse_loss, unfold, the seed's
normalisation), the alpha progression under jit, and the per-patch equivalences the original recipe relies on."""

import functools
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from distill import losses
from distill import models as dm

jax.config.update("jax_default_matmul_precision", "highest")

# The seed's recommended alpha_distill schedule (spec 002), as (fraction of training, alpha_distill).
SEED_PROGRESSION = ((0.0, 0.01), (0.25, 0.05), (0.5, 0.1), (0.75, 0.5))

_bce = jax.jit(losses.bce_with_logits)
_pool = jax.jit(losses.adaptive_avg_pool, static_argnums=1)
_normalize = jax.jit(losses.normalize_map)
_mse = jax.jit(losses.distill_mse, static_argnames=("normalize",))
_loss = jax.jit(losses.distillation_loss, static_argnames=("normalize",))
_alpha = jax.jit(losses.alpha_weights, static_argnums=(1, 2, 3, 4))  # step traced, the schedule static


def _t(x):
  return torch.from_numpy(np.asarray(x, np.float32))


# ---------------------------------------------------------------------------------------------------------------
# BCE


def test_bce_matches_torch_including_extreme_logits():
  rng = np.random.default_rng(0)
  logits = np.concatenate([rng.normal(0, 3, 60), [-1e4, -200.0, -40.0, -17.0, 0.0, 17.0, 40.0, 200.0, 1e4]])
  labels = rng.integers(0, 2, logits.size).astype(np.float32)
  labels[-9:] = [0, 1, 1, 0, 1, 1, 0, 0, 1]  # confident-right and confident-wrong extremes
  want = torch.nn.BCEWithLogitsLoss()(_t(logits), _t(labels)).item()
  got = float(_bce(logits, labels))
  assert np.isfinite(got)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Soft labels too (BCEWithLogitsLoss accepts them).
  soft = rng.uniform(0, 1, logits.size)
  np.testing.assert_allclose(float(_bce(logits, soft)),
                             torch.nn.BCEWithLogitsLoss()(_t(logits), _t(soft)).item(), rtol=1e-6)


def test_bce_gradient_finite_at_extremes():
  logits = jnp.array([-1e4, -50.0, 0.0, 50.0, 1e4])
  labels = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0])
  grad = jax.jit(jax.grad(losses.bce_with_logits))(logits, labels)
  np.testing.assert_allclose(grad, (jax.nn.sigmoid(logits) - labels) / logits.size, atol=1e-7)


def test_bce_mask_ignores_padding():
  rng = np.random.default_rng(1)
  logits, labels = rng.normal(0, 2, 6), rng.integers(0, 2, 6)
  padded_logits = np.concatenate([logits, [1e3, -1e3]])
  padded_labels = np.concatenate([labels, [0, 1]])  # confidently wrong padding: would dominate if counted
  mask = np.array([1, 1, 1, 1, 1, 1, 0, 0])
  np.testing.assert_allclose(float(_bce(padded_logits, padded_labels, mask)), float(_bce(logits, labels)),
                             rtol=1e-6)
  assert float(_bce(padded_logits, padded_labels, np.zeros(8))) == 0.0  # all padding: 0, not NaN


# ---------------------------------------------------------------------------------------------------------------
# Alignment, normalisation, MSE


@pytest.mark.parametrize("in_hw,out_hw", [((110, 110), (27, 27)), ((126, 126), (31, 31)), ((7, 7), (3, 3)),
                                          ((110, 126), (27, 31)), ((5, 9), (7, 4)), ((27, 27), (27, 27))])
def test_adaptive_avg_pool_matches_torch(in_hw, out_hw):
  x = np.random.default_rng(2).normal(0, 5, (3, *in_hw)).astype(np.float32)
  want = F.adaptive_avg_pool2d(_t(x)[:, None], out_hw)[:, 0].numpy()
  got = np.asarray(_pool(x, out_hw))
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def test_adaptive_avg_pool_bins_are_torch_bins():
  # 7 -> 3: bins [0, 3), [2, 5), [4, 7) (overlapping at rows 2 and 4), checked on a one-hot input.
  m = losses._pool_matrix(7, 3)  # pylint: disable=protected-access
  np.testing.assert_array_equal(m > 0, [[1, 1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 1]])
  # 110 -> 27: bin widths 5 or 6 (ceil/floor of 110/27 = 4.07 plus the shared edge), each row sums to 1.
  m = losses._pool_matrix(110, 27)  # pylint: disable=protected-access
  assert set((m > 0).sum(1)) <= {5, 6} and np.allclose(m.sum(1), 1)


def test_align_to_teacher_identity_and_pool():
  x = np.random.default_rng(3).normal(size=(2, 27, 27)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(losses.align_to_teacher(x, (27, 27))), x)
  s = np.random.default_rng(4).normal(size=(2, 110, 110)).astype(np.float32)
  assert losses.align_to_teacher(s, dm.patch_map_size(224, 224)).shape == (2, 27, 27)
  assert dm.patch_map_size(224, 224, "tiny_ladeda") == (110, 110)


def test_normalize_map_matches_seed_formula():
  x = np.random.default_rng(5).normal(3.0, 7.0, (4, 27, 27)).astype(np.float32)
  xt = _t(x)
  want = ((xt - xt.mean()) / (xt.std() + 1e-8)).numpy()  # spec 003, torch .std() is unbiased
  got = np.asarray(_normalize(x))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert abs(got.mean()) < 1e-6 and abs(got.std(ddof=1) - 1) < 1e-5


@pytest.mark.parametrize("normalize", [False, True])
def test_distill_mse_matches_torch_and_is_a_mean(normalize):
  rng = np.random.default_rng(6)
  student = rng.normal(0, 10, (3, 110, 110)).astype(np.float32)  # Tiny's map of a 224 crop
  teacher = rng.normal(0, 0.5, (3, 27, 27)).astype(np.float32)   # LaDeDa9's map of the same crop
  s, t = _t(student), _t(teacher)
  aligned = F.adaptive_avg_pool2d(s[:, None], (27, 27))[:, 0]
  if normalize:  # the seed's fix, spec 003
    aligned = (aligned - aligned.mean()) / (aligned.std() + 1e-8)
    t = (t - t.mean()) / (t.std() + 1e-8)
  want = F.mse_loss(aligned, t, reduction="mean").item()
  got = float(_mse(student, teacher, normalize=normalize))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # spec 002: averaged per patch cell, not summed; the sum would be 3 * 27 * 27 = 2187 times larger.
  summed = F.mse_loss(aligned, t, reduction="sum").item()
  np.testing.assert_allclose(summed / got, 3 * 27 * 27, rtol=1e-5)


def test_distill_mse_mask_and_teacher_gets_no_gradient():
  rng = np.random.default_rng(7)
  student = rng.normal(size=(3, 12, 12)).astype(np.float32)
  teacher = rng.normal(size=(3, 4, 4)).astype(np.float32)
  pad_s = np.concatenate([student, np.full((1, 12, 12), 1e3, np.float32)])
  pad_t = np.concatenate([teacher, np.full((1, 4, 4), -1e3, np.float32)])
  mask = np.array([1, 1, 1, 0])
  for normalize in (False, True):  # padding changes neither the mean nor the normalisation statistics
    np.testing.assert_allclose(float(_mse(pad_s, pad_t, normalize=normalize, mask=mask)),
                               float(_mse(student, teacher, normalize=normalize)), rtol=1e-5)
  g_s, g_t = jax.jit(jax.grad(losses.distill_mse, argnums=(0, 1)))(student, teacher)
  assert np.abs(g_s).max() > 0 and np.abs(g_t).max() == 0


# ---------------------------------------------------------------------------------------------------------------
# Alpha progression


def _alpha_reference(step, total, alpha_distill, alpha_task, progression):
  """Exact-rational reading of the rule: the last pair whose fraction <= step / total."""
  frac = Fraction(step, total)
  active = [a for f, a in progression if Fraction(str(f)) <= frac]
  return (alpha_distill, alpha_task) if not active else (active[-1], 1 - active[-1])


@pytest.mark.parametrize("step,want", [(0, 0.01), (24, 0.01), (25, 0.05), (49, 0.05), (50, 0.1), (74, 0.1),
                                       (75, 0.5), (99, 0.5), (100, 0.5)])
def test_alpha_seed_progression_boundaries(step, want):
  a_d, a_t = _alpha(step, 100, 0.05, 0.95, SEED_PROGRESSION)
  np.testing.assert_allclose([float(a_d), float(a_t)], [want, 1 - want], rtol=1e-6)


def test_alpha_progression_under_jit_with_traced_step():
  for total, progression, base in [(100, SEED_PROGRESSION, (0.05, 0.95)), (30, ((0.1, 0.2), (0.7, 0.6)), (0.3, 0.8)),
                                   (7, ((1 / 3, 0.4),), (0.0, 1.0))]:
    fn = jax.jit(jax.vmap(functools.partial(losses.alpha_weights, total_steps=total, alpha_distill=base[0],
                                            alpha_task=base[1], progression=progression)))
    steps = np.arange(total + 2)
    a_d, a_t = fn(jnp.asarray(steps, jnp.int32))
    want = np.array([_alpha_reference(int(s), total, *base, progression) for s in steps])
    np.testing.assert_allclose(np.stack([a_d, a_t], 1), want, rtol=1e-6)
  # Before a progression that starts late, the constants hold (they need not sum to 1); 0.1 * 30 is step 3.
  a_d, a_t = jax.jit(lambda s: losses.alpha_weights(s, 30, 0.3, 0.8, ((0.1, 0.2),)))(jnp.int32(2))
  assert (float(a_d), float(a_t)) == pytest.approx((0.3, 0.8))
  a_d, a_t = jax.jit(lambda s: losses.alpha_weights(s, 30, 0.3, 0.8, ((0.1, 0.2),)))(jnp.int32(3))
  assert (float(a_d), float(a_t)) == pytest.approx((0.2, 0.8))


def test_alpha_constants_and_bad_progressions():
  a_d, a_t = jax.jit(lambda s: losses.alpha_weights(s, 10, 0.05, 0.95))(jnp.int32(7))
  assert (float(a_d), float(a_t)) == pytest.approx((0.05, 0.95))
  for bad in [((0.5, 0.1), (0.25, 0.05)), ((0.0, 0.1), (0.0, 0.2)), ((1.5, 0.1),)]:
    with pytest.raises(ValueError, match="increasing"):
      losses.alpha_weights(0, 10, 0.5, 0.5, bad)


# ---------------------------------------------------------------------------------------------------------------
# Combined loss


@pytest.mark.parametrize("normalize", [False, True])
def test_distillation_loss_combination(normalize):
  rng = np.random.default_rng(8)
  s_map = rng.normal(0, 4, (4, 110, 110)).astype(np.float32)
  t_map = rng.normal(0, 1, (4, 27, 27)).astype(np.float32)
  s_logit = rng.normal(0, 2, 4).astype(np.float32)
  labels = np.array([0, 1, 1, 0])
  total, parts = _loss(s_logit, s_map, t_map, labels, 0.1, 0.9, normalize=normalize)
  aligned = F.adaptive_avg_pool2d(_t(s_map)[:, None], (27, 27))[:, 0]
  t = _t(t_map)
  if normalize:
    aligned = (aligned - aligned.mean()) / (aligned.std() + 1e-8)
    t = (t - t.mean()) / (t.std() + 1e-8)
  distill = F.mse_loss(aligned, t).item()
  task = torch.nn.BCEWithLogitsLoss()(_t(s_logit), _t(labels)).item()
  np.testing.assert_allclose([float(parts["distill"]), float(parts["task"])], [distill, task], rtol=1e-5)
  np.testing.assert_allclose(float(total), 0.1 * distill + 0.9 * task, rtol=1e-5)
  assert float(parts["alpha_distill"]) == pytest.approx(0.1) and float(parts["alpha_task"]) == pytest.approx(0.9)


def test_distillation_loss_with_traced_alphas_and_mask():
  rng = np.random.default_rng(9)
  s_map = rng.normal(size=(3, 20, 20)).astype(np.float32)
  t_map = rng.normal(size=(3, 6, 6)).astype(np.float32)
  s_logit, labels = rng.normal(size=3).astype(np.float32), np.array([1, 0, 1])

  @jax.jit
  def step_loss(step, s_logit, s_map, t_map, labels, mask):
    a_d, a_t = losses.alpha_weights(step, 100, 0.05, 0.95, SEED_PROGRESSION)
    return losses.distillation_loss(s_logit, s_map, t_map, labels, a_d, a_t, mask=mask)

  pad = lambda a, v: np.concatenate([a, np.full((1, *a.shape[1:]), v, a.dtype)])
  ones = np.ones(3)
  for step, a_d in [(10, 0.01), (60, 0.1)]:
    total, parts = step_loss(step, s_logit, s_map, t_map, labels, ones)
    assert float(parts["alpha_distill"]) == pytest.approx(a_d)
    np.testing.assert_allclose(float(total), a_d * float(parts["distill"]) + (1 - a_d) * float(parts["task"]),
                               rtol=1e-6)
    padded, _ = step_loss(step, pad(s_logit, 50.0), pad(s_map, 1e3), pad(t_map, -1e3), pad(labels, 0),
                          np.array([1, 1, 1, 0]))
    np.testing.assert_allclose(float(padded), float(total), rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Patches and the per-patch recipe


@pytest.mark.parametrize("shape,size,stride", [((2, 40, 48, 3), 9, 8), ((2, 40, 48, 3), 10, 8),
                                               ((1, 11, 7, 2), 3, 2), ((1, 9, 9, 1), 9, 8)])
def test_extract_patches_matches_torch_unfold(shape, size, stride):
  x = np.random.default_rng(10).normal(size=shape).astype(np.float32)
  # Official extract_patches.py: NCHW .unfold(2, size, step).unfold(3, size, step) -> (B, C, nh, nw, size, size).
  want = _t(x).permute(0, 3, 1, 2).unfold(2, size, stride).unfold(3, size, stride).permute(0, 2, 3, 4, 5, 1).numpy()
  got = np.asarray(losses.extract_patches(x, size, stride))
  assert got.shape == want.shape == (shape[0], (shape[1] - size) // stride + 1, (shape[2] - size) // stride + 1,
                                     size, size, shape[3])
  np.testing.assert_array_equal(got, want)
  with pytest.raises(ValueError):
    losses.extract_patches(x, shape[1] + 1, stride)


def test_teacher_and_student_patch_grids_coincide():
  # 9x9 (teacher) and 10x10 (student) patches at stride 8 give LaDeDa9's map size for every even H.
  for h in range(10, 600, 2):
    assert (h - 9) // 8 + 1 == (h - 10) // 8 + 1 == dm.patch_map_size(h, h)[0], h


def test_patch_distillation_loss_matches_torch():
  rng = np.random.default_rng(11)
  s, t = rng.normal(size=729).astype(np.float32), rng.normal(0, 5, 729).astype(np.float32)
  np.testing.assert_allclose(float(losses.patch_distillation_loss(s, t)),
                             torch.nn.MSELoss()(_t(s), _t(t)).item(), rtol=1e-6)
  assert np.abs(jax.jit(jax.grad(losses.patch_distillation_loss, argnums=1))(s, t)).max() == 0


def _random_variables(module, x, seed):
  """Variables of `module` for input `x` with random kernels and non-trivial BatchNorm statistics.

  Filled from numpy on the eval_shape skeleton: a jitted LaDeDa9 init spends ~20 s of CPU drawing 13.6M normals.
  Kernels are N(0, 1 / fan_in) so the 16-block net keeps logits O(1); BN mean/var/scale/bias are random so
  eval-mode BN is a real per-channel affine map, not the identity of a fresh init.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith("['kernel']"):
      return rng.normal(0, 1 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)
    if name.endswith("['var']"):
      return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
    if name.endswith("['scale']"):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return rng.normal(0, 0.1, leaf.shape).astype(np.float32)  # BN bias / mean, fc bias

  return jax.tree_util.tree_map_with_path(fill, shapes)


def test_teacher_full_map_equals_per_patch_logits():
  """LaDeDa9 map cell (i, j) == LaDeDa9 on the NPR'd 9x9 patch at (8i, 8j): per-patch targets are the full map."""
  x = jnp.asarray(np.random.default_rng(12).normal(size=(2, 40, 48, 3)), jnp.float32)  # ImageNet-normalised scale
  teacher = dm.LaDeDa()
  variables = _random_variables(teacher, x, seed=13)
  _, aux = jax.jit(teacher.apply)(variables, x)
  full = np.asarray(aux["patch_logits"])
  assert full.shape == (2, *dm.patch_map_size(40, 48)) == (2, 4, 5)

  # The official extract_patches.py route: NPR on the full image, unfold 9x9 at step 8, the raw-input model.
  patches = losses.extract_patches(dm.npr(x), 9, 8)
  assert patches.shape[1:3] == full.shape[1:]
  logit, p_aux = jax.jit(dm.LaDeDa(preprocess_type="raw").apply)(variables, patches.reshape(-1, 9, 9, 3))
  assert p_aux["patch_logits"].shape == (patches.shape[0] * 4 * 5, 1, 1)
  per_patch = np.asarray(logit).reshape(full.shape)
  scale = np.abs(full).max()
  err = np.abs(per_patch - full).max()
  # Measured: max abs error 2.4e-6 on logits up to 3.4 (float32 summation order), i.e. 7e-7 relative.
  assert scale > 1.0 and err <= 1e-5 * scale, (err, scale)


def test_student_per_patch_logit():
  """Tiny-LaDeDa on a 10x10 patch: a 3x3 map whose mean is the patch logit; cells (k, l) with k, l >= 1 equal the
  full-image map cell (4i + k, 4j + l), while row/column 0 differ (right_diag zero-pads at the patch edge)."""
  x = jnp.asarray(np.random.default_rng(14).normal(size=(2, 40, 48, 3)), jnp.float32)
  student = dm.TinyLaDeDa()
  variables = _random_variables(student, x, seed=15)
  apply = jax.jit(student.apply)
  _, aux = apply(variables, x)
  full = np.asarray(aux["patch_logits"])
  assert full.shape == (2, *dm.patch_map_size(40, 48, "tiny_ladeda"))

  patches = losses.extract_patches(x, 10, 8)
  nh, nw = patches.shape[1:3]
  logit, p_aux = apply(variables, patches.reshape(-1, 10, 10, 3))
  maps = np.asarray(p_aux["patch_logits"])
  assert maps.shape == (2 * nh * nw, 3, 3)
  np.testing.assert_allclose(np.asarray(logit), maps.mean(axis=(1, 2)), rtol=1e-6, atol=1e-6)

  # A single patch on its own gives the same logit as in the batch (eval BN: no cross-example coupling).
  one, _ = apply(variables, patches[1, 2, 3][None])
  np.testing.assert_allclose(float(one[0]), float(logit.reshape(2, nh, nw)[1, 2, 3]), rtol=1e-6, atol=1e-6)

  maps = maps.reshape(2, nh, nw, 3, 3)
  i, j = np.arange(nh)[:, None], np.arange(nw)[None, :]
  for k in range(3):
    for l in range(3):
      err = np.abs(maps[..., k, l] - full[:, 4 * i + k, 4 * j + l]).max()
      if k and l:
        assert err <= 1e-5 * np.abs(full).max(), (k, l, err)
      else:
        assert err > 1e-3, (k, l, err)
