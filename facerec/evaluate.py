"""The measuring and diagnostic commands of the VLR face pipeline (spec 004), one per seed script.

Each reads a configs/facerec/*.py config, prints a summary and writes JSON (+ PNG) into --workdir.

* `evaluate_dataset`: gallery-probe evaluation. Gallery = HR images (first data.gallery_per_subject per subject,
  mean embedding, L2-normalised); probes = the other images, or every image of eval.probe_root when
  eval.gallery_root / eval.probe_root are given. Probes go VLR -> DSR -> EdgeFace ("sr"), VLR -> bicubic ->
  EdgeFace ("direct", the baseline that is always reported) and, as an upper bound, HR -> EdgeFace ("hr").
  Rank-1/5, verification at 0.35, TAR at fixed FARs, EER, genuine/impostor means; edgeface.weights
  ("pretrained") and eval.finetuned_weights side by side; a score-distribution PNG.
* `evaluate_pretrained`: the same protocol for edgeface.weights alone, with the seed's per-subject printout.
* `check_gallery`: gallery enrolment check (embedding norms, per-subject consistency) and probe similarity
  to the own gallery for the first subjects (the seed's Test 1 / Test 2).
* `compare_arcface`: does an ArcFace head help? Backbone cosine vs ArcFace class scores of HR gallery images
  and DSR probes (the seed's Test 3); needs eval.arcface_head from an arcface fine-tuning run.
* `check_subject_overlap`: subjects shared by eval.gallery_root and eval.probe_root.
* `analyze_scores`: genuine / impostor distributions, EER, accuracy over a threshold sweep, per pipeline.
"""

import json
import os

import jax
import numpy as np

from common import parallel
from facerec import data, losses, protocol, train

PIPELINES = {"sr": "VLR -> DSR -> EdgeFace", "direct": "VLR -> bicubic -> EdgeFace (baseline)",
             "hr": "HR -> EdgeFace (upper bound)"}


def _write_json(workdir: str, name: str, report: dict) -> str:
  path = os.path.join(workdir, name)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
      json.dump(report, f, indent=2, default=float)
  return path


def _write_png(workdir: str, name: str, scores: dict, threshold: float) -> None:
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)  # called as a library, the workdir may not exist yet
    protocol.score_distribution_png(os.path.join(workdir, name), scores, threshold=threshold)


def _say(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


def _split(config):
  """(gallery folder, gallery idx, probe folder, probe idx): two roots, or data.val_root split 3 / rest."""
  e = config.eval
  if bool(e.gallery_root) != bool(e.probe_root):
    raise ValueError("set both --config.eval.gallery_root and --config.eval.probe_root, or neither (then the "
                     "gallery and probes both come from --config.data.val_root)")
  if e.gallery_root:
    gallery, probes = train.folder(config, e.gallery_root), train.folder(config, e.probe_root)
    overlap = data.subject_overlap(gallery, probes)  # DataError when no probe subject is enrolled
    if overlap["only_probe"]:
      _say(f"note: {overlap['only_probe']} probe subjects are not in the gallery and are counted as unknown")
    gallery_idx, _ = data.gallery_probe_split(gallery, config.data.gallery_per_subject)
    keep = np.isin(np.array(gallery.subjects)[gallery.labels[gallery_idx]], probes.subjects)
    return gallery, gallery_idx[keep] if keep.any() else gallery_idx, probes, np.arange(len(probes))
  root = train.folder(config, config.data.val_root)
  gallery_idx, probe_idx = data.gallery_probe_split(root, config.data.gallery_per_subject)
  return root, gallery_idx, root, probe_idx


def _embed_split(config, weights: str, split):
  """Embeddings of gallery and probe folders for one EdgeFace; probe labels re-indexed to gallery subjects."""
  gallery, gallery_idx, probes, probe_idx = split
  edgeface, ef_vars = train.load_edgeface(config, weights)
  dsr, dsr_vars = train.load_dsr(config) if config.dsr.weights else (None, None)
  mesh = parallel.make_mesh()
  ef_vars = parallel.replicate(ef_vars, mesh)
  dsr_vars = None if dsr is None else parallel.replicate(dsr_vars, mesh)
  g_emb = train.embed_folder(edgeface, ef_vars, dsr, dsr_vars, gallery, config)
  p_emb = g_emb if probes is gallery else train.embed_folder(edgeface, ef_vars, dsr, dsr_vars, probes, config)
  if probes is not gallery:  # labels are folder-local: map probe subjects onto gallery label ids (-1: unknown)
    lookup = {s: i for i, s in enumerate(gallery.subjects)}
    p_emb = dict(p_emb, label=np.array([lookup.get(probes.subjects[l], -1) for l in p_emb["label"]], np.int32))
  return g_emb, gallery_idx, p_emb, probe_idx


def _reports(config, weights: str, split, embedded=None) -> tuple[dict, dict]:
  """({pipeline: report}, {pipeline: (genuine, impostor)}) for one EdgeFace (`embedded`: its `_embed_split`)."""
  g_emb, gallery_idx, p_emb, probe_idx = embedded or _embed_split(config, weights, split)
  reports = train.gallery_probe(g_emb, gallery_idx, probe_idx, config, probe_emb=p_emb)
  gallery, ids = protocol.build_gallery(g_emb["hr"], g_emb["label"], gallery_idx)
  scores = {}
  for pipeline in reports:
    m = protocol.match_scores(gallery, ids, p_emb[pipeline][probe_idx], p_emb["label"][probe_idx])
    scores[pipeline] = (m["genuine"], m["impostor"])
  return reports, scores


def _print_table(name: str, reports: dict, threshold: float) -> None:
  for pipeline, r in reports.items():
    _say(f"{name:>10s} | {PIPELINES[pipeline]:<38s} | rank-1 {r['rank_1']:.4f} rank-5 {r['rank_5']:.4f} | "
         f"matches@{threshold:g} {r['genuine_accept_rate']:.4f} verif acc {r['verification_accuracy']:.4f} | "
         f"genuine {r['genuine_mean']:.3f} impostor {r['impostor_mean']:.3f} | EER {r['eer']:.4f}")


def evaluate_dataset(config, workdir: str) -> dict:
  """Pretrained (edgeface.weights) and fine-tuned (eval.finetuned_weights) EdgeFace through all pipelines."""
  split = _split(config)
  models_ = {"pretrained": config.edgeface.weights}
  if config.eval.finetuned_weights:
    models_["finetuned"] = config.eval.finetuned_weights
  if not config.dsr.weights:
    _say("note: no --config.dsr.weights: only the direct-feed baseline and HR probes are evaluated")
  report = {"gallery": repr(split[0]), "probes": repr(split[2]), "n_gallery_images": int(len(split[1])),
            "n_probe_images": int(len(split[3])), "dsr_weights": config.dsr.weights, "models": {}}
  scores = {}
  for name, weights in models_.items():
    reports, s = _reports(config, weights, split)
    report["models"][name] = {"weights": weights, **reports}
    scores.update({f"{name} {p}": v for p, v in s.items()})
    _print_table(name, reports, config.eval.threshold)
  _write_png(workdir, "score_distributions.png", scores, config.eval.threshold)
  _say(f"report: {_write_json(workdir, 'evaluation.json', report)}")
  return report


def evaluate_pretrained(config, workdir: str, subjects_to_print: int = 5) -> dict:
  """edgeface.weights alone on data.val_root, with the seed's per-subject similarity printout."""
  split = _split(config)
  embedded = _embed_split(config, config.edgeface.weights, split)
  reports, scores = _reports(config, config.edgeface.weights, split, embedded)
  _print_table("pretrained", reports, config.eval.threshold)
  g_emb, gallery_idx, p_emb, probe_idx = embedded
  gallery, ids = protocol.build_gallery(g_emb["hr"], g_emb["label"], gallery_idx)
  pipeline = "sr" if "sr" in p_emb else "direct"
  sims = protocol.match_scores(gallery, ids, p_emb[pipeline][probe_idx], p_emb["label"][probe_idx])
  per_subject = {}
  for subject in ids[:subjects_to_print]:
    own = p_emb["label"][probe_idx] == subject
    s = sims["scores"][own, list(ids).index(subject)]
    per_subject[split[0].subjects[subject]] = {
        "mean": float(s.mean()), "min": float(s.min()), "max": float(s.max()),
        "matches": int((s >= config.eval.threshold).sum()), "probes": int(own.sum())}
    _say(f"subject {split[0].subjects[subject]}: average similarity {s.mean():.4f} ({pipeline}), "
         f"{int((s >= config.eval.threshold).sum())}/{int(own.sum())} matches, range {s.min():.4f} - {s.max():.4f}")
  report = {"weights": config.edgeface.weights, **reports, "per_subject": per_subject}
  _write_png(workdir, "pretrained_scores.png", scores, config.eval.threshold)
  _say(f"report: {_write_json(workdir, 'pretrained.json', report)}")
  return report


def check_gallery(config, workdir: str) -> dict:
  """Gallery enrolment check and probe-to-own-gallery similarity (the seed's Tests 1 and 2)."""
  split = _split(config)
  g_emb, gallery_idx, p_emb, probe_idx = _embed_split(config, config.edgeface.weights, split)
  check = protocol.gallery_check(g_emb["hr"], g_emb["label"], gallery_idx)
  gallery, ids = protocol.build_gallery(g_emb["hr"], g_emb["label"], gallery_idx)
  own = {}
  for pipeline in ("sr", "direct", "hr"):
    if pipeline in p_emb:
      m = protocol.match_scores(gallery, ids, p_emb[pipeline][probe_idx], p_emb["label"][probe_idx])
      own[pipeline] = {"mean_similarity_to_own_gallery": float(np.mean(m["genuine"])),
                       "mean_similarity_to_other_subjects": float(np.mean(m["impostor"]))}
  report = {"gallery_check": check, "probe_similarity": own}
  for flag in check.get("flags", []):
    _say(f"FLAG: {flag}")
  for pipeline, v in own.items():
    _say(f"{PIPELINES[pipeline]:<38s}: probe vs own gallery {v['mean_similarity_to_own_gallery']:.4f}, vs others "
         f"{v['mean_similarity_to_other_subjects']:.4f}")
  _say(f"gallery {'OK' if check.get('ok') else 'has problems'}; report: "
       f"{_write_json(workdir, 'gallery_check.json', report)}")
  return report


def compare_arcface(config, workdir: str) -> dict:
  """Backbone cosine vs ArcFace-head class scores for HR gallery images and DSR probes (the seed's Test 3)."""
  if not config.eval.arcface_head or not os.path.isfile(config.eval.arcface_head):
    raise FileNotFoundError(f"eval.arcface_head={config.eval.arcface_head!r}: pass W/{train.ARCFACE_HEAD} of a "
                            "python -m facerec.finetune_contrastive --config configs/facerec/finetune.py:arcface run")
  head = np.load(config.eval.arcface_head)
  weight, head_subjects = head["weight"], list(head["subjects"])
  split = _split(config)
  g_emb, gallery_idx, p_emb, probe_idx = _embed_split(config, config.edgeface.weights, split)
  subjects = split[0].subjects
  classes = np.array([head_subjects.index(s) if s in head_subjects else -1 for s in subjects])
  if (classes < 0).all():
    raise ValueError(f"{config.eval.arcface_head}: none of the evaluated subjects is an ArcFace class (the head "
                     "knows only its training subjects); evaluate on the training subjects' other images")
  w = np.asarray(losses.l2_normalize(weight))
  gallery, ids = protocol.build_gallery(g_emb["hr"], g_emb["label"], gallery_idx)
  pipeline = "sr" if "sr" in p_emb else "direct"
  m = protocol.match_scores(gallery, ids, p_emb[pipeline][probe_idx], p_emb["label"][probe_idx])

  def class_score(emb, labels):
    cls = np.where(labels >= 0, classes[labels], -1)  # -1: a probe subject not in the gallery (two roots)
    ok = cls >= 0
    cos = np.asarray(losses.l2_normalize(emb[ok])) @ w.T
    return float(np.mean(cos[np.arange(ok.sum()), cls[ok]])), float(np.mean(np.argmax(cos, -1) == cls[ok]))

  g_score, g_acc = class_score(g_emb["hr"][gallery_idx], g_emb["label"][gallery_idx])
  p_score, p_acc = class_score(p_emb[pipeline][probe_idx], p_emb["label"][probe_idx])
  report = {"backbone_similarity": float(np.mean(m["genuine"])), "pipeline": pipeline,
            "gallery_arcface_score": g_score, "gallery_arcface_accuracy": g_acc,
            "probe_arcface_score": p_score, "probe_arcface_accuracy": p_acc}
  report["verdict"] = ("the head maps DSR probes to their class about as well as HR images" if p_score > 0.8 * g_score
                       else "the head classifies HR images but DSR outputs do not land in the same class space: "
                            "keeping the ArcFace head would not help; use backbone cosine (contrastive fine-tuning)")
  _say(f"backbone similarity (probe vs own gallery): {report['backbone_similarity']:.4f}")
  _say(f"ArcFace score HR gallery -> own class: {g_score:.4f} (top-1 {g_acc:.3f}); {pipeline} probes -> own class: "
       f"{p_score:.4f} (top-1 {p_acc:.3f})\n{report['verdict']}")
  _say(f"report: {_write_json(workdir, 'arcface_impact.json', report)}")
  return report


def check_subject_overlap(config, workdir: str) -> dict:
  e = config.eval
  if not e.gallery_root or not e.probe_root:
    raise ValueError("set --config.eval.gallery_root and --config.eval.probe_root (e.g. DATA/train and DATA/val)")
  report = data.subject_overlap(e.gallery_root, e.probe_root)
  _say(f"gallery subjects {report['gallery']}, probe subjects {report['probe']}, in both {report['both']} "
       f"({100 * report['overlap']:.1f}% of probe subjects enrolled); only gallery {report['only_gallery']}, "
       f"only probe {report['only_probe']}")
  _say(f"report: {_write_json(workdir, 'subject_overlap.json', report)}")
  return report


def analyze_scores(config, workdir: str) -> dict:
  """Genuine / impostor score distributions per pipeline, EER and accuracy over a threshold sweep."""
  split = _split(config)
  reports, scores = _reports(config, config.edgeface.weights, split)
  thresholds = np.round(np.arange(0.0, 0.95, 0.05), 2)
  report = {}
  for pipeline, (gen, imp) in scores.items():
    sweep = {f"{t:.2f}": float(0.5 * (np.mean(gen >= t) + np.mean(imp < t))) for t in thresholds}
    best = max(sweep, key=sweep.get)
    report[pipeline] = {"genuine": _stats(gen), "impostor": _stats(imp), "eer": reports[pipeline]["eer"],
                        "eer_threshold": reports[pipeline]["eer_threshold"],
                        "balanced_accuracy_by_threshold": sweep, "best_threshold": float(best),
                        "separation_d_prime": float((gen.mean() - imp.mean()) /
                                                    np.sqrt(0.5 * (gen.var() + imp.var()) + 1e-12))}
    _say(f"{PIPELINES[pipeline]:<38s}: genuine {gen.mean():.3f}+-{gen.std():.3f}, impostor {imp.mean():.3f}+-"
         f"{imp.std():.3f}, d' {report[pipeline]['separation_d_prime']:.2f}, EER {reports[pipeline]['eer']:.4f}, "
         f"best threshold {best} (balanced acc {sweep[best]:.4f}; at {config.eval.threshold:g}: "
         f"{reports[pipeline]['verification_accuracy']:.4f})")
  _write_png(workdir, "score_analysis.png", scores, config.eval.threshold)
  _say(f"report: {_write_json(workdir, 'score_analysis.json', report)}")
  return report


def _stats(x) -> dict:
  x = np.asarray(x, np.float64)
  return {"mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()), "max": float(x.max()),
          "p5": float(np.percentile(x, 5)), "p50": float(np.percentile(x, 50)), "p95": float(np.percentile(x, 95)),
          "n": int(x.size)}
