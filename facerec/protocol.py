"""Gallery-probe evaluation of a face recogniser (spec 004's "realistic" validation), host-side numpy.

The failed seed run looked perfect on its training metric (DSR output vs the paired HR image: 0.999) and fell
to 2% on gallery matching (0.18 cosine to other images of the same person). The protocol here measures the
latter: enrol each subject from HR images, then score probes (VLR -> DSR -> embedding) against every enrolled
subject.

    gallery, ids = build_gallery(hr_emb, labels, gallery_idx)            # (S, d) unit templates, (S,) ids
    report = gallery_probe_report(gallery, ids, probe_emb, probe_labels) # dict of floats, for the metric log
    scores = match_scores(gallery, ids, probe_emb, probe_labels)         # genuine / impostor arrays, ranks
    score_distribution_png(path, {"pretrained": (g0, i0), "finetuned": (g1, i1)})
    check = gallery_check(hr_emb, labels, gallery_idx)                   # the seed's enrolment sanity checks

Conventions: cosine similarity on L2-normalised vectors; a pair is *accepted* when score >= threshold, everywhere
(verification, TAR@FAR, EER). Probes whose subject is not enrolled are counted (`n_unknown`) and left out of
every metric: a closed-set protocol, as in the seed (it checked 100% subject overlap first).
"""

from typing import Mapping, Sequence

import numpy as np

from common import plots


def _normalize(x, eps: float = 1e-12) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def build_gallery(embeddings, labels, gallery_idx):
  """One template per subject: L2-normalise each gallery embedding, average per subject, L2-normalise again.

  Normalising first gives each enrolment image an equal vote whatever its embedding norm (EdgeFace norms vary
  with image quality). `gallery_idx` selects the enrolment rows (int indices or a bool mask).
  Returns (gallery (S, d) float64, subject_ids (S,) sorted).
  """
  emb = np.asarray(embeddings)[gallery_idx]
  lab = np.asarray(labels)[gallery_idx]
  if emb.ndim != 2 or len(emb) == 0:
    raise ValueError(f"build_gallery: no gallery embeddings selected (got shape {emb.shape})")
  ids, inverse = np.unique(lab, return_inverse=True)
  sums = np.zeros((len(ids), emb.shape[1]), np.float64)
  np.add.at(sums, inverse.ravel(), _normalize(emb))
  return _normalize(sums), ids


def match_scores(gallery, gallery_ids, probe_emb, probe_labels) -> dict:
  """Cosine scores of every probe against every template, split into genuine and impostor comparisons.

  Returns a dict of arrays: "scores" (P, S) for all probes; "known" (P,) bool (subject enrolled);
  for the K known probes, "genuine" (K,) (own template), "impostor" (K * (S - 1),) (every other template) and
  "rank" (K,): 1 + the number of other templates scoring >= the own one (ties count against the probe, so a
  degenerate embedding that scores everything equally is not rank-1).
  """
  gallery = _normalize(gallery)
  gallery_ids = np.asarray(gallery_ids)
  probe_labels = np.asarray(probe_labels)
  if len(np.unique(gallery_ids)) != len(gallery_ids):
    raise ValueError("gallery_ids must be unique (one template per subject; see build_gallery)")
  if len(probe_labels) != len(probe_emb):
    raise ValueError(f"{len(probe_emb)} probe embeddings but {len(probe_labels)} probe labels")
  scores = _normalize(probe_emb) @ gallery.T
  order = np.argsort(gallery_ids)
  pos = np.searchsorted(gallery_ids, probe_labels, sorter=order)
  pos = order[np.minimum(pos, len(gallery_ids) - 1)]
  known = gallery_ids[pos] == probe_labels
  s, own = scores[known], pos[known]
  is_own = np.zeros(s.shape, bool)
  is_own[np.arange(len(own)), own] = True
  genuine = s[is_own]
  return {"scores": scores, "known": known, "genuine": genuine, "impostor": s[~is_own],
          "rank": np.sum(s >= genuine[:, None], axis=1)}


def tar_at_far(genuine, impostor, far: float) -> tuple[float, float]:
  """(TAR, threshold) at the lowest threshold whose false-accept rate is <= `far`.

  With n impostor scores the achievable FARs are k / n: the threshold sits just above the (floor(far * n) + 1)-th
  largest impostor score. Below 1 / n this is the TAR at FAR = 0 (threshold above every impostor), a lower bound
  that the report flags through its `far_resolution`.
  """
  imp = np.sort(np.asarray(impostor, np.float64))[::-1]
  k = int(np.floor(far * len(imp) + 1e-9))  # 1e-9: far * n that should be whole (0.1 * 30) must not drop to k - 1
  if k >= len(imp):
    threshold = -np.inf
  else:
    threshold = float(np.nextafter(imp[k], np.inf))
  return float(np.mean(np.asarray(genuine) >= threshold)), threshold


def equal_error_rate(genuine, impostor) -> tuple[float, float]:
  """(EER, threshold): the threshold, among all observed scores, where FAR and FRR are closest; EER is their mean.

  FAR(t) = fraction of impostors >= t, FRR(t) = fraction of genuines < t. Both are step functions, so the two
  rates need not meet exactly; with few scores the EER is only resolved to 1 / min(n_genuine, n_impostor).
  """
  gen = np.sort(np.asarray(genuine, np.float64))
  imp = np.sort(np.asarray(impostor, np.float64))
  cand = np.unique(np.concatenate([gen, imp, [np.inf]]))
  far = (len(imp) - np.searchsorted(imp, cand, side="left")) / len(imp)
  frr = np.searchsorted(gen, cand, side="left") / len(gen)
  i = int(np.argmin(np.abs(far - frr)))
  return float((far[i] + frr[i]) / 2), float(cand[i])


def gallery_probe_report(gallery, gallery_ids, probe_emb, probe_labels, threshold: float = 0.35,
                         fars: Sequence[float] = (1e-1, 1e-2, 1e-3), ranks: Sequence[int] = (1, 5)) -> dict:
  """Identification and verification metrics of probes against a gallery, as a flat dict of floats.

  Keys: rank_{k} (identification accuracy: own subject among the top k); genuine_accept_rate (genuine score
  >= threshold: the seed's "matches" at 0.35), impostor_reject_rate, verification_accuracy (their mean, i.e.
  balanced: impostor pairs outnumber genuine ones S - 1 to 1); tar_at_far_{far} and threshold_at_far_{far} for
  each FAR (see `tar_at_far`), far_resolution (1 / n_impostor: smaller FARs are not resolved); eer and
  eer_threshold; genuine_mean/std, impostor_mean/std; n_probes (all given), n_unknown (not enrolled: excluded),
  n_genuine, n_impostor, n_subjects (enrolled).
  """
  m = match_scores(gallery, gallery_ids, probe_emb, probe_labels)
  n_subjects = len(gallery_ids)
  if n_subjects < 2:
    raise ValueError("gallery_probe_report needs at least 2 gallery subjects (impostor scores)")
  if not m["known"].any():
    raise ValueError("no probe subject is enrolled in the gallery: check the subject ids of both sides")
  gen, imp = m["genuine"], m["impostor"]
  out = {f"rank_{k}": float(np.mean(m["rank"] <= k)) for k in ranks}
  gar, irr = float(np.mean(gen >= threshold)), float(np.mean(imp < threshold))
  out.update(genuine_accept_rate=gar, impostor_reject_rate=irr, verification_accuracy=(gar + irr) / 2,
             threshold=float(threshold))
  for far in fars:
    out[f"tar_at_far_{far:g}"], out[f"threshold_at_far_{far:g}"] = tar_at_far(gen, imp, far)
  out["far_resolution"] = 1.0 / len(imp)
  out["eer"], out["eer_threshold"] = equal_error_rate(gen, imp)
  out.update(genuine_mean=float(gen.mean()), genuine_std=float(gen.std()), impostor_mean=float(imp.mean()),
             impostor_std=float(imp.std()), n_probes=len(probe_labels), n_unknown=int(np.sum(~m["known"])),
             n_genuine=len(gen), n_impostor=len(imp), n_subjects=n_subjects)
  return out


def score_distribution_png(path: str, named: Mapping[str, tuple], threshold: float | None = 0.35,
                           bins: int = 50) -> dict:
  """Overlaid genuine / impostor cosine histograms, e.g. {"pretrained": (gen, imp), "finetuned": (gen, imp)}.

  Each series is normalised to fractions (impostors outnumber genuines by S - 1), on a fixed [-1, 1] axis so
  plots of different runs compare directly. Vertical lines mark the decision `threshold` and each pair's EER
  threshold (`equal_error_rate`), labelled e.g. "finetuned: EER 4.2% at 0.41", so the plot shows how far the
  operating point sits from the balanced one. Returns the plot's `plots.describe`.
  """
  series, vlines = {}, {}
  if threshold is not None:
    vlines[f"threshold {threshold:g}"] = float(threshold)
  for name, (genuine, impostor) in named.items():
    genuine, impostor = np.asarray(genuine, np.float64), np.asarray(impostor, np.float64)
    series[f"{name} genuine"] = genuine
    series[f"{name} impostor"] = impostor
    if genuine.size and impostor.size:
      eer, eer_threshold = equal_error_rate(genuine, impostor)
      vlines[f"{name}: EER {eer:.1%} at {eer_threshold:.2f}"] = eer_threshold
  return plots.histogram_png(path, series, value_range=(-1.0, 1.0), bins=bins,
                             title="cosine similarity to gallery templates", xlabel="cosine similarity",
                             ylabel="fraction of pairs per bin", vlines=vlines)


def _py(v):
  return v.item() if isinstance(v, np.generic) else v


def gallery_check(embeddings, labels, gallery_idx, min_consistency: float = 0.5, worst: int = 5) -> dict:
  """The seed's "gallery enrolment check" (spec 004, test 1-2): are the gallery embeddings sane and consistent?

  Reports, over the gallery rows: embedding norms before normalisation (norm_min/mean/max; zero or non-finite
  rows break cosine scoring), per-subject consistency = mean pairwise cosine between a subject's gallery images
  (consistency_mean/min over subjects with >= 2 images, and the `worst` subjects as [id, consistency]), and the
  separation of the templates: inter_subject_mean_cosine / inter_subject_max_cosine between different subjects'
  templates (the closest pair of people). `flags` lists what looks wrong, in words; `ok` is True when none.
  A healthy recogniser has consistency well above inter-subject similarity (pretrained EdgeFace on aligned HR
  faces: consistency ~0.9+); the broken fine-tune of spec 004 would show consistency near the inter-subject level.
  """
  emb = np.asarray(embeddings, np.float64)[gallery_idx]
  lab = np.asarray(labels)[gallery_idx]
  flags = []
  finite = np.all(np.isfinite(emb), axis=1)
  if not finite.all():
    flags.append(f"{int(np.sum(~finite))} gallery embeddings contain NaN/inf (excluded below)")
  emb, lab = emb[finite], lab[finite]
  if len(emb) == 0:
    return {"n_images": 0, "n_subjects": 0, "flags": flags + ["no finite gallery embeddings"], "ok": False}
  norms = np.linalg.norm(emb, axis=1)
  if np.any(norms < 1e-6):
    flags.append(f"{int(np.sum(norms < 1e-6))} gallery embeddings have norm < 1e-6 (blank or failed images?)")

  z = _normalize(emb)
  ids, inverse = np.unique(lab, return_inverse=True)
  inverse = inverse.ravel()
  counts = np.bincount(inverse, minlength=len(ids))
  sums = np.zeros((len(ids), z.shape[1]))
  np.add.at(sums, inverse, z)
  # mean pairwise cosine of n unit vectors: (|sum|^2 - n) / (n (n - 1)), the sum minus the n self-pairs
  multi = counts >= 2
  consistency = (np.sum(sums[multi] ** 2, axis=1) - counts[multi]) / (counts[multi] * (counts[multi] - 1))
  out = {"n_images": int(len(emb)), "n_subjects": int(len(ids)), "norm_min": float(norms.min()),
         "norm_mean": float(norms.mean()), "norm_max": float(norms.max()),
         "n_single_image_subjects": int(np.sum(~multi))}
  if np.any(~multi):
    flags.append(f"{int(np.sum(~multi))} subjects have a single gallery image (no consistency check)")
  if multi.any():
    order = np.argsort(consistency)
    out.update(consistency_mean=float(consistency.mean()), consistency_min=float(consistency.min()),
               worst_subjects=[[_py(ids[multi][i]), float(consistency[i])] for i in order[:worst]])
    low = int(np.sum(consistency < min_consistency))
    if low:
      flags.append(f"{low} subjects have gallery consistency < {min_consistency:g} (worst "
                   f"{_py(ids[multi][order[0]])}: {consistency[order[0]]:.3f})")
  if len(ids) >= 2:
    templates = _normalize(sums)
    cos = templates @ templates.T
    off = cos[~np.eye(len(ids), dtype=bool)]
    out.update(inter_subject_mean_cosine=float(off.mean()), inter_subject_max_cosine=float(off.max()))
    if multi.any() and off.mean() >= out["consistency_mean"]:
      flags.append(f"no separation: mean inter-subject template cosine {off.mean():.3f} >= mean within-subject "
                   f"consistency {out['consistency_mean']:.3f}")
  out["flags"] = flags
  out["ok"] = not flags
  return out
