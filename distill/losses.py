"""Loss terms of LaDeDa -> Tiny-LaDeDa distillation (spec 002/003 and the original per-patch recipe).

All functions are pure jax.numpy and jit-able; arithmetic runs in float32 whatever the input dtype. Maps are
(B, h, w) patch-logit maps as the models return them (`aux["patch_logits"]`, distill/models.py).

Two recipes:

* **The seed's image-level recipe** (spec 002/003), used by the trainer's loss_fn:

      a_d, a_t = alpha_weights(step, total_steps, alpha_distill, alpha_task, progression)
      total, parts = distillation_loss(student_logit, student_map, teacher_map, labels, a_d, a_t, normalize)

  total = a_d * MSE(align(student_map), teacher_map) + a_t * BCE(student_logit, labels). The student's map
  (110x110 for a 224 crop) is adaptive-average-pooled onto the teacher's grid (27x27) as torch
  `F.adaptive_avg_pool2d` does; the MSE is a mean over batch x h x w (spec 002: `reduction='mean'`, the fix
  for a distillation term that swamped the BCE); `normalize` standardises both maps first (spec 003's fix for
  a logit scale mismatch).

* **The original per-patch recipe** (shared/research/ladeda.md section 3): the student sees each 10x10
  patch of the normalised image at stride 8 and regresses the teacher's logit of the 9x9 patch with the same
  top-left corner; plain MSE, no BCE. The teacher's targets need no patch loop: for LaDeDa9 in eval mode the
  full-image map cell (i, j) *is* the teacher applied to the 9x9 NPR'd patch at (8i, 8j) (valid convs and
  per-pixel eval BatchNorm; NPR's 2x2 blocks never straddle a patch edge because 8i is even), checked in
  tests/test_distill_losses.py. So, for images with even H and W:

      _, t_aux = teacher.apply(t_vars, images)                            # (B, nh, nw) targets
      patches = extract_patches(images, 10, 8)                            # (B, nh, nw, 10, 10, 3)
      s_logit, _ = student.apply(s_vars, patches.reshape(-1, 10, 10, 3))   # 3x3 map each, mean -> (B*nh*nw,)
      loss = patch_distillation_loss(s_logit, t_aux["patch_logits"].reshape(-1))

  10x10 at stride 8 and 9x9 at stride 8 give the same grid ((H - 10)//8 == (H - 9)//8 for even H).
"""

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

_f32 = jnp.float32
_HIGHEST = jax.lax.Precision.HIGHEST


def _masked_mean(values: jax.Array, mask) -> jax.Array:
  """Mean of (B,) `values`, or sum(mask * values) / sum(mask) over the examples where mask is set.

  An all-zero mask gives 0, not NaN: a batch that is entirely padding contributes nothing instead of poisoning
  the step.
  """
  if mask is None:
    return jnp.mean(values)
  mask = jnp.asarray(mask, _f32)
  if mask.shape != values.shape:
    raise ValueError(f"mask shape {mask.shape} must match the per-example values {values.shape}")
  return jnp.sum(mask * values) / jnp.maximum(jnp.sum(mask), 1.0)


def bce_with_logits(logits, labels, mask=None) -> jax.Array:
  """Binary cross-entropy on logits, mean over examples (masked mean with a (B,) `mask`); = torch BCEWithLogitsLoss.

  Uses softplus(x) - x y (softplus as logaddexp(x, 0)), exact for any finite logit: the naive
  -y log s - (1 - y) log(1 - s) turns into log(0) = -inf once sigmoid saturates in float32 (|x| > ~17). Its
  gradient is exactly sigmoid(x) - y, also at x = 0, where the max(x, 0) + log1p(exp(-|x|)) form has kinks whose
  subgradients JAX does not combine into that. Labels may be soft (in [0, 1]).
  Unlike torch's `weight`, which still divides by the batch size, `mask` divides by the number of kept examples,
  so padding a batch does not change its loss.
  """
  x = jnp.asarray(logits, _f32)
  y = jnp.asarray(labels, _f32)
  if x.shape != y.shape:
    raise ValueError(f"logits {x.shape} and labels {y.shape} must have the same shape")
  per_example = jax.nn.softplus(x) - x * y
  if mask is not None and per_example.ndim > 1:
    per_example = per_example.reshape(per_example.shape[0], -1).mean(axis=1)
  return _masked_mean(per_example, mask)


def _pool_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) averaging matrix of torch's adaptive pooling: row i averages [floor(i n/m), ceil((i+1) n/m))."""
  m = np.zeros((n_out, n_in), np.float32)
  for i in range(n_out):
    start = (i * n_in) // n_out
    end = -((-(i + 1) * n_in) // n_out)  # integer ceil: float division misplaces bin edges for large sizes
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_avg_pool(maps, out_hw: Sequence[int]) -> jax.Array:
  """(B, H, W) -> (B, h, w) average pooling with torch `F.adaptive_avg_pool2d` bins.

  Output cell i averages input rows [floor(i H / h), ceil((i + 1) H / h)); when h does not divide H, bins differ
  in width (110 -> 27: 4 or 5 rows) and neighbours may share a row. Written as two small averaging matrices
  (separable, exact up to float32 summation order), which is static-shaped and differentiable; h > H
  (upsampling by replication) works too, as in torch.
  """
  x = jnp.asarray(maps, _f32)
  if x.ndim != 3:
    raise ValueError(f"adaptive_avg_pool expects (B, H, W) maps, got shape {x.shape}")
  h, w = (int(v) for v in out_hw)
  if h < 1 or w < 1:
    raise ValueError(f"output size must be positive, got {out_hw}")
  ph = jnp.asarray(_pool_matrix(x.shape[1], h))
  pw = jnp.asarray(_pool_matrix(x.shape[2], w))
  # HIGHEST: on GPU the default would run these contractions in TF32/bf16, a 1e-3 relative error on the targets.
  return jnp.einsum("iy,byx,jx->bij", ph, x, pw, precision=_HIGHEST)


def align_to_teacher(student_map, teacher_hw: Sequence[int]) -> jax.Array:
  """The seed's alignment: the student's map adaptive-average-pooled onto the teacher's (h, w) grid.

  Identity when the sizes already agree. For a 224 crop this pools Tiny's 110x110 onto LaDeDa9's 27x27; note
  that these bins (4-5 student cells, i.e. ~8-10 input pixels) only roughly cover each teacher cell's 9x9
  patch, unlike the per-patch recipe, where the two see the same pixels.
  """
  x = jnp.asarray(student_map, _f32)
  if tuple(x.shape[1:]) == tuple(int(v) for v in teacher_hw):
    return x
  return adaptive_avg_pool(x, teacher_hw)


def normalize_map(x, mask=None) -> jax.Array:
  """(x - mean) / (std + 1e-8) over the whole batch tensor, unbiased std like torch `.std()` (spec 003).

  One mean and std for the batch, not per image: per-image standardisation would also erase how confident the
  teacher is about one image relative to another, which is the signal being distilled. With a (B,) `mask` the
  statistics come from the kept examples only (padding must not shift them); masked-out rows are still
  transformed but carry no weight downstream. A single element has no unbiased std (NaN, as in torch).
  """
  x = jnp.asarray(x, _f32)
  if mask is None:
    return (x - jnp.mean(x)) / (jnp.std(x, ddof=1) + 1e-8)
  m = jnp.broadcast_to(jnp.asarray(mask, _f32).reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)
  n = jnp.sum(m)
  mean = jnp.sum(m * x) / jnp.maximum(n, 1.0)
  var = jnp.sum(m * (x - mean) ** 2) / jnp.maximum(n - 1.0, 1.0)
  return (x - mean) / (jnp.sqrt(var) + 1e-8)


def distill_mse(student_map, teacher_map, normalize: bool = False, mask=None) -> jax.Array:
  """MSE between the aligned student map and the teacher map, reduction 'mean' over batch x h x w (spec 002).

  The student map is pooled onto the teacher grid (`align_to_teacher`); with `normalize` both are standardised
  first (`normalize_map`), which makes the term scale-free (about 2 (1 - correlation)) whatever the logit
  ranges. The teacher is frozen, so its map is stop_gradient-ed here as well: a trainer that forgets to
  exclude it cannot leak gradients into it. `mask` (B,) drops padded examples from the mean and the statistics.
  """
  t = jax.lax.stop_gradient(jnp.asarray(teacher_map, _f32))
  if t.ndim != 3:
    raise ValueError(f"teacher map must be (B, h, w), got shape {t.shape}")
  s = align_to_teacher(student_map, t.shape[1:])
  if s.shape != t.shape:
    raise ValueError(f"student map {s.shape} and teacher map {t.shape} disagree after alignment")
  if normalize:
    s, t = normalize_map(s, mask), normalize_map(t, mask)
  sq = (s - t) ** 2
  if mask is None:
    return jnp.mean(sq)
  return _masked_mean(jnp.mean(sq, axis=(1, 2)), mask)


def alpha_weights(step, total_steps: int, alpha_distill: float, alpha_task: float,
                  progression: Sequence[tuple[float, float]] = ()) -> tuple[jax.Array, jax.Array]:
  """(alpha_distill, alpha_task) at `step` (a traced int is fine), as float32 scalars.

  Without a progression: the two constants. With one, e.g. the seed's ((0, .01), (.25, .05), (.5, .1),
  (.75, .5)) (spec 002: confirm BCE learns first, then raise the distillation signal), alpha_distill is
  piecewise constant in step / total_steps: pair (f, a) applies from the first step with step / total_steps >= f
  up to the next pair, and alpha_task = 1 - alpha_distill there. Before the first fraction (if it is > 0) the
  constants apply. `total_steps` must be a Python int (from the config): the boundaries become integer steps
  ceil(f * total_steps) on the host, so float rounding of step / total_steps cannot move a boundary by a step.
  """
  if not progression:
    return jnp.asarray(alpha_distill, _f32), jnp.asarray(alpha_task, _f32)
  fractions = [float(f) for f, _ in progression]
  if any(not 0.0 <= f <= 1.0 for f in fractions) or any(a >= b for a, b in zip(fractions, fractions[1:])):
    raise ValueError(f"progression fractions must be strictly increasing in [0, 1], got {fractions}")
  total_steps = int(total_steps)
  if total_steps < 1:
    raise ValueError(f"total_steps must be positive, got {total_steps}")
  # 1e-9 absorbs float error in f * total (0.1 * 30 = 3.0000000000000004 must give step 3, not 4).
  boundaries = jnp.asarray([math.ceil(f * total_steps - 1e-9) for f in fractions], jnp.int32)
  values = jnp.asarray([alpha_distill] + [float(a) for _, a in progression], _f32)
  # Number of boundaries passed = index into values (0: before the progression starts).
  idx = jnp.sum(jnp.asarray(step, jnp.int32) >= boundaries)
  a_distill = values[idx]
  a_task = jnp.where(idx == 0, jnp.asarray(alpha_task, _f32), 1.0 - a_distill)
  return a_distill, a_task


def distillation_loss(student_logit, student_map, teacher_map, labels, a_distill, a_task,
                      normalize: bool = False, mask=None) -> tuple[jax.Array, dict]:
  """The seed's student objective: a_distill * distill_mse + a_task * BCE(student image logit, labels).

  Returns (total, {"distill", "task", "alpha_distill", "alpha_task"}), all float32 scalars, so the trainer can
  log each term: spec 003's diagnosis ("total ~225, task ~0.7") needs the unweighted terms. `mask` (B,) drops
  padded examples from both terms.
  """
  distill = distill_mse(student_map, teacher_map, normalize=normalize, mask=mask)
  task = bce_with_logits(student_logit, labels, mask=mask)
  a_distill = jnp.asarray(a_distill, _f32)
  a_task = jnp.asarray(a_task, _f32)
  total = a_distill * distill + a_task * task
  return total, {"distill": distill, "task": task, "alpha_distill": a_distill, "alpha_task": a_task}


def extract_patches(x, size: int, stride: int) -> jax.Array:
  """(B, H, W, C) -> (B, nh, nw, size, size, C) patches anchored top-left, nh = (H - size) // stride + 1.

  Same patches and order as torch `x.unfold(2, size, stride).unfold(3, size, stride)` on NCHW (the official
  `extract_patches.py`); trailing rows/columns that do not fill a patch are dropped. A gather, so it keeps the
  input dtype and is differentiable.
  """
  x = jnp.asarray(x)
  if x.ndim != 4:
    raise ValueError(f"extract_patches expects (B, H, W, C), got shape {x.shape}")
  _, h, w, _ = x.shape
  if size < 1 or stride < 1 or size > h or size > w:
    raise ValueError(f"cannot take {size}x{size} patches at stride {stride} from a {h}x{w} image")
  nh, nw = (h - size) // stride + 1, (w - size) // stride + 1
  rows = (np.arange(nh) * stride)[:, None] + np.arange(size)[None, :]  # (nh, size)
  cols = (np.arange(nw) * stride)[:, None] + np.arange(size)[None, :]  # (nw, size)
  # Index arrays broadcast to (nh, nw, size, size): rows vary along axes 0 and 2, columns along 1 and 3.
  return x[:, rows[:, None, :, None], cols[None, :, None, :], :]


def patch_distillation_loss(student_patch_logits, teacher_patch_logits) -> jax.Array:
  """The original per-patch objective: nn.MSELoss() between student and teacher patch logits (N,), no BCE term.

  The teacher's logits are stop_gradient-ed (it is frozen).
  """
  s = jnp.asarray(student_patch_logits, _f32)
  t = jax.lax.stop_gradient(jnp.asarray(teacher_patch_logits, _f32))
  if s.shape != t.shape:
    raise ValueError(f"student {s.shape} and teacher {t.shape} patch logits must have the same shape")
  return jnp.mean((s - t) ** 2)
