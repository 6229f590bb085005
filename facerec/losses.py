"""Losses for fine-tuning EdgeFace behind the DSR front end (spec 004), pure jnp and jit-able.

Spec 004's lesson: ArcFace fine-tuning plus a paired DSR-vs-HR similarity metric produced a recogniser that
classified HR faces and matched each DSR output to its own HR twin, yet put DSR probes and HR gallery images of
the same person 0.18 apart. The fix is a supervised contrastive loss over *different images* of each subject,
with DSR and HR embeddings in one pool (`cross_resolution_infonce`). ArcFace and the paired identity term stay
available for comparison and as auxiliary terms.

All losses compute in float32 whatever the embedding dtype (bf16 logits divided by a 0.07 temperature lose the
differences that matter) and with HIGHEST-precision matmuls. Each returns a scalar mean over the batch.
"""

import math

import jax
import jax.numpy as jnp

_f32 = jnp.float32
_HIGHEST = jax.lax.Precision.HIGHEST


def l2_normalize(x, eps: float = 1e-12, axis: int = -1):
  """x / max(|x|, eps) along `axis` (torch `F.normalize`), in float32.

  Written as x * rsqrt(max(|x|^2, eps^2)) so an all-zero row (a padded batch slot) has a zero gradient
  instead of the NaN that differentiating `norm` at 0 gives.
  """
  x = jnp.asarray(x, _f32)
  sq = jnp.sum(x * x, axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def supcon_loss(embeddings, labels, temperature: float = 0.07, base_temperature: float = 0.07, mask=None):
  """Supervised contrastive loss (Khosla et al. 2020) over N embeddings, HobbitLong/SupContrast semantics.

  For anchor i with positives P(i) = {p != i: labels[p] == labels[i]} and contrast set A(i) = {a != i}:
      L_i = -(temperature / base_temperature) * mean_{p in P(i)} log( exp(z_i.z_p / t) / sum_{a in A(i)} exp(z_i.z_a / t) )
  with z the L2-normalised embeddings (normalised here, unlike SupConLoss, whose caller normalises).

  Args:
    embeddings: (N, d), any float dtype.
    labels: (N,) integer subject ids.
    temperature, base_temperature: as SupConLoss; their ratio scales the loss (1 by default).
    mask: optional (N,) bool, False for padded rows: these are neither anchors, positives nor in any denominator,
      so a padded batch gives exactly the loss of its valid rows.

  Returns:
    The mean of L_i over valid anchors that have at least one positive; 0 if there are none. SupConLoss
    divides by |P(i)| = 0 for such anchors (NaN; newer forks count them as 0 in the mean); here they are left out
    of the mean, so the loss does not shrink as singletons are added to a batch.
  """
  z = l2_normalize(embeddings)
  n = z.shape[0]
  labels = jnp.asarray(labels)
  valid = jnp.ones((n,), bool) if mask is None else jnp.asarray(mask, bool)
  sim = jnp.matmul(z, z.T, precision=_HIGHEST) / temperature
  contrast = ~jnp.eye(n, dtype=bool) & valid[:, None] & valid[None, :]
  positive = contrast & (labels[:, None] == labels[None, :])

  # log-softmax over the contrast set. Excluded entries become exp(-inf) = 0 inside the exp (a multiply by the
  # mask could meet inf * 0 when 2 / temperature > 88), and empty rows get a finite shift, so no NaN reaches
  # the gradient.
  row_max = jax.lax.stop_gradient(jnp.max(jnp.where(contrast, sim, -jnp.inf), axis=1, keepdims=True))
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  logits = sim - row_max
  denom = jnp.sum(jnp.exp(jnp.where(contrast, logits, -jnp.inf)), axis=1, keepdims=True)
  log_prob = logits - jnp.log(jnp.where(denom > 0, denom, 1.0))

  n_pos = jnp.sum(positive, axis=1)
  mean_log_prob_pos = jnp.sum(jnp.where(positive, log_prob, 0.0), axis=1) / jnp.maximum(n_pos, 1)
  per_anchor = -(temperature / base_temperature) * mean_log_prob_pos
  has_pos = valid & (n_pos > 0)
  return jnp.sum(jnp.where(has_pos, per_anchor, 0.0)) / jnp.maximum(jnp.sum(has_pos), 1)


def cross_resolution_infonce(sr_emb, hr_emb, labels, temperature: float = 0.07, mask=None):
  """The seed's fine-tuning loss: SupCon over the 2B stacked [sr; hr] embeddings with labels [labels; labels].

  Every DSR(VLR) and HR embedding of a subject is a positive for every other one, within and across resolutions
  and across different images, so the recogniser learns one cluster per person, not a DSR -> own-HR pairing
  (what the failed run learned, spec 004). Each anchor always has a positive (its other-resolution twin), so
  this equals SupConLoss(temperature, base_temperature=temperature)(features=stack([sr, hr], 1), labels); the
  loss is not rescaled by temperature / 0.07, like the seed's plain InfoNCE. `mask` (B,) drops padded pairs
  from both halves.
  """
  emb = jnp.concatenate([jnp.asarray(sr_emb, _f32), jnp.asarray(hr_emb, _f32)], axis=0)
  labels2 = jnp.concatenate([jnp.asarray(labels), jnp.asarray(labels)], axis=0)
  mask2 = None if mask is None else jnp.concatenate([jnp.asarray(mask, bool)] * 2, axis=0)
  return supcon_loss(emb, labels2, temperature=temperature, base_temperature=temperature, mask=mask2)


def identity_loss(sr_emb, hr_emb):
  """mean(1 - cos(sr, hr)) over paired rows: the SR identity-preservation term (SR_LRFR, Idiap-LRFR stage 1).

  Only pulls each DSR output to its own HR image; spec 004 shows this alone (as a metric, or a loss) does not
  make the probe match other images of the subject.
  """
  cos = jnp.sum(l2_normalize(sr_emb) * l2_normalize(hr_emb), axis=-1)
  return jnp.mean(1.0 - cos)


def arcface_logits(embeddings, weight, labels, s: float = 64.0, m: float = 0.5):
  """ArcFace logits (Deng et al. 2019), the classic differentiable form (edgeface.md section 4).

  cos_j = <x/|x|, w_j/|w_j|> clipped to [-1, 1]; the target logit is s * cos(theta_y + m) =
  s * (cos_y cos m - sin_y sin m) while theta_y + m <= pi, i.e. cos_y > cos(pi - m); beyond that it falls back to
  s * (cos_y - m sin m) so the target logit keeps decreasing in theta (cos(theta + m) would turn back up past pi).
  Other classes get s * cos_j. insightface's in-place no_grad variant has the same forward but a straight-through
  backward; this one differentiates the margin too.

  Args:
    embeddings: (B, d); weight: (C, d) class centres (no bias); labels: (B,) ints in [0, C).
  Returns:
    (B, C) float32 logits.
  """
  x = l2_normalize(embeddings)
  w = l2_normalize(weight)
  cos = jnp.clip(jnp.matmul(x, w.T, precision=_HIGHEST), -1.0, 1.0)
  onehot = jax.nn.one_hot(labels, w.shape[0], dtype=bool)
  cos_y = jnp.sum(jnp.where(onehot, cos, 0.0), axis=-1)
  sin2 = 1.0 - cos_y * cos_y
  # sqrt has an infinite slope at 0 (|cos| == 1, e.g. an embedding equal to its centre): zero gradient there.
  sin_y = jnp.where(sin2 > 0, jnp.sqrt(jnp.where(sin2 > 0, sin2, 1.0)), 0.0)
  phi = cos_y * math.cos(m) - sin_y * math.sin(m)
  phi = jnp.where(cos_y > math.cos(math.pi - m), phi, cos_y - m * math.sin(m))
  return s * jnp.where(onehot, phi[:, None], cos)


def arcface_loss(embeddings, weight, labels, s: float = 64.0, m: float = 0.5):
  """Softmax cross-entropy of `arcface_logits`, mean over the batch."""
  logits = arcface_logits(embeddings, weight, labels, s, m)
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(labels)[:, None], axis=-1))
