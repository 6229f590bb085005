"""facerec.protocol on hand-built embeddings whose identification / verification answers are known exactly."""

import numpy as np
import pytest
from PIL import Image

from facerec import protocol


def _probe(c0, c1, c2):
  """A unit vector whose cosine to the templates e0, e1, e2 is c0, c1, c2 (the rest goes to e3)."""
  return np.array([c0, c1, c2, np.sqrt(1 - c0 * c0 - c1 * c1 - c2 * c2), 0.0])


@pytest.fixture(name="case")
def fixture_case():
  # gallery: subjects 10, 20, 30 on axes e0, e1, e2, with several images of different norms each
  e = np.eye(5)
  gallery_emb = np.stack([3 * e[0], 0.5 * e[0], 2 * e[1], 7 * e[2], e[2]])
  gallery_lab = np.array([10, 10, 20, 30, 30])
  probes = np.stack([
      _probe(0.9, 0.15, 0.05),  # subject 10: genuine 0.9, rank 1
      _probe(0.45, 0.6, 0.02),  # subject 20: genuine 0.6, rank 1
      _probe(0.7, 0.1, 0.3),  # subject 30: genuine 0.3, rank 2 (behind 10 at 0.7)
      _probe(0.4, 0.25, 0.8),  # subject 20: genuine 0.25, rank 3
      _probe(0.99, 0.0, 0.0),  # subject 99: not enrolled
  ]) * np.array([[1.0], [2.0], [0.1], [5.0], [1.0]])  # probe norms do not matter
  probe_lab = np.array([10, 20, 30, 20, 99])
  # everything in one array, gallery = first 5 rows, as a trainer would hold it
  return np.concatenate([gallery_emb, probes]), np.concatenate([gallery_lab, probe_lab])


def test_build_gallery(case):
  emb, lab = case
  gallery, ids = protocol.build_gallery(emb, lab, np.arange(5))
  np.testing.assert_array_equal(ids, [10, 20, 30])
  np.testing.assert_allclose(gallery, np.eye(5)[:3], atol=1e-12)
  # mean of *normalised* embeddings: a large-norm image does not outvote a small one
  g, ids = protocol.build_gallery(np.array([[10.0, 0.0], [0.0, 1.0]]), np.array([7, 7]), np.array([True, True]))
  np.testing.assert_allclose(g, [[np.sqrt(0.5), np.sqrt(0.5)]])
  with pytest.raises(ValueError, match="no gallery embeddings"):
    protocol.build_gallery(emb, lab, np.zeros(len(lab), bool))


def test_hand_built_report(case):
  emb, lab = case
  gallery, ids = protocol.build_gallery(emb, lab, np.arange(5))
  r = protocol.gallery_probe_report(gallery, ids, emb[5:], lab[5:], threshold=0.35, fars=(0.1, 0.25, 0.5),
                                    ranks=(1, 2, 5))
  assert (r["n_probes"], r["n_unknown"], r["n_subjects"], r["n_genuine"], r["n_impostor"]) == (5, 1, 3, 4, 8)
  assert (r["rank_1"], r["rank_2"], r["rank_5"]) == (0.5, 0.75, 1.0)
  # genuine 0.9, 0.6, 0.3, 0.25; impostor 0.15, 0.05, 0.45, 0.02, 0.7, 0.1, 0.4, 0.8
  assert r["genuine_accept_rate"] == 0.5  # 0.9, 0.6 >= 0.35
  assert r["impostor_reject_rate"] == 0.5  # 0.15, 0.05, 0.02, 0.1 < 0.35
  assert r["verification_accuracy"] == 0.5
  np.testing.assert_allclose([r["genuine_mean"], r["impostor_mean"]], [2.05 / 4, 2.67 / 8])
  np.testing.assert_allclose(r["genuine_std"], np.std([0.9, 0.6, 0.3, 0.25]))
  # FAR 0.1 of 8 impostors resolves to 0 accepted: threshold above 0.8 -> only 0.9 accepted
  assert r["tar_at_far_0.1"] == 0.25 and 0.8 < r["threshold_at_far_0.1"] < 0.8 + 1e-9
  # FAR 0.25 = 2 of 8 accepted (0.8, 0.7): threshold above 0.45 -> 0.9, 0.6
  assert r["tar_at_far_0.25"] == 0.5 and 0.45 < r["threshold_at_far_0.25"] < 0.45 + 1e-9
  # FAR 0.5 = 4 accepted (0.8, 0.7, 0.45, 0.4): threshold above 0.15 -> all four genuines
  assert r["tar_at_far_0.5"] == 1.0
  assert r["far_resolution"] == 1 / 8
  # at t = 0.4: FRR 2/4 (0.3, 0.25), FAR 4/8 (0.4, 0.45, 0.7, 0.8): equal
  np.testing.assert_allclose([r["eer"], r["eer_threshold"]], [0.5, 0.4])


def test_match_scores_and_ranks(case):
  emb, lab = case
  gallery, ids = protocol.build_gallery(emb, lab, np.arange(5))
  m = protocol.match_scores(gallery, ids, emb[5:], lab[5:])
  np.testing.assert_array_equal(m["known"], [True, True, True, True, False])
  np.testing.assert_array_equal(m["rank"], [1, 1, 2, 3])
  np.testing.assert_allclose(m["genuine"], [0.9, 0.6, 0.3, 0.25])
  np.testing.assert_allclose(np.sort(m["impostor"]), [0.02, 0.05, 0.1, 0.15, 0.4, 0.45, 0.7, 0.8], atol=1e-12)
  assert m["scores"].shape == (5, 3)
  # gallery ids in any order; a tie with another subject counts against the probe
  perm = np.array([2, 0, 1])
  m2 = protocol.match_scores(gallery[perm], ids[perm], emb[5:], lab[5:])
  np.testing.assert_array_equal(m2["rank"], m["rank"])
  tie = protocol.match_scores(np.eye(3), [1, 2, 3], np.array([[1.0, 1.0, 0.0]]), [1])
  assert tie["rank"][0] == 2


def test_tar_at_far_constructed():
  impostor = np.arange(1000) / 1000  # 0.000 .. 0.999
  genuine = (900 + np.arange(100) + 0.5) / 1000  # 0.9005 .. 0.9995, no ties with impostors
  assert protocol.tar_at_far(genuine, impostor, 0.1) == (1.0, float(np.nextafter(0.899, 1)))
  assert protocol.tar_at_far(genuine, impostor, 0.01)[0] == 0.11  # 10 impostors > 0.989 accepted; 0.9895 .. 0.9995
  assert protocol.tar_at_far(genuine, impostor, 1e-3)[0] == 0.02  # 1 impostor (0.999); 0.9985, 0.9995
  assert protocol.tar_at_far(genuine, impostor, 1e-4)[0] == 0.01  # below 1/1000: FAR 0, above 0.999: 0.9995
  assert protocol.tar_at_far(genuine, impostor, 1.0) == (1.0, -np.inf)


def test_eer_constructed():
  genuine = np.array([0.6, 0.7, 0.8, 0.9, 0.2])
  impostor = np.array([0.1, 0.0, -0.1, -0.2, 0.65])
  assert protocol.equal_error_rate(genuine, impostor) == (0.2, 0.6)  # FRR 1/5 (0.2) = FAR 1/5 (0.65) at 0.6
  separable = protocol.equal_error_rate(np.array([0.5, 0.9]), np.array([0.1, 0.4, 0.45]))
  assert separable == (0.0, 0.5)
  eer, _ = protocol.equal_error_rate(np.array([0.1, 0.2]), np.array([0.8, 0.9]))  # inverted: all wrong
  assert eer == 1.0


def test_report_errors(case):
  emb, lab = case
  gallery, ids = protocol.build_gallery(emb, lab, np.arange(5))
  with pytest.raises(ValueError, match="no probe subject is enrolled"):
    protocol.gallery_probe_report(gallery, ids, emb[5:], lab[5:] + 1000)
  with pytest.raises(ValueError, match="at least 2 gallery subjects"):
    protocol.gallery_probe_report(gallery[:1], ids[:1], emb[5:], lab[5:])
  with pytest.raises(ValueError, match="unique"):
    protocol.gallery_probe_report(gallery, [10, 10, 30], emb[5:], lab[5:])


def test_score_distribution_png(tmp_path, case):
  emb, lab = case
  gallery, ids = protocol.build_gallery(emb, lab, np.arange(5))
  m = protocol.match_scores(gallery, ids, emb[5:], lab[5:])
  rng = np.random.default_rng(0)
  path = str(tmp_path / "scores.png")
  protocol.score_distribution_png(path, {"case": (m["genuine"], m["impostor"]),
                                         "random": (rng.uniform(0.3, 1, 200), rng.uniform(-0.3, 0.5, 2000))})
  with Image.open(path) as img:
    assert img.format == "PNG" and img.size == (640, 360)
    assert len(img.convert("RGB").getcolors(1 << 16)) > 3  # axes plus coloured series, not a blank canvas


def test_gallery_check():
  e = np.eye(4)
  emb = np.stack([
      2 * e[0], 0.5 * e[0],  # subject 1: identical directions -> consistency 1
      e[1], e[2], (e[1] + e[2]),  # subject 2: cosines 0, 1/sqrt2, 1/sqrt2 -> mean sqrt2 / 3
      e[3],  # subject 3: single image
      np.zeros(4),  # subject 4: a blank embedding
      np.full(4, np.nan),  # subject 5: a failed one
  ])
  lab = np.array([1, 1, 2, 2, 2, 3, 4, 5])
  c = protocol.gallery_check(emb, lab, np.arange(8), min_consistency=0.5)
  assert (c["n_images"], c["n_subjects"], c["n_single_image_subjects"]) == (7, 4, 2)
  np.testing.assert_allclose([c["norm_min"], c["norm_max"]], [0.0, 2.0])
  np.testing.assert_allclose(c["consistency_mean"], (1 + np.sqrt(2) / 3) / 2)
  np.testing.assert_allclose(c["consistency_min"], np.sqrt(2) / 3)
  assert c["worst_subjects"][0][0] == 2 and isinstance(c["worst_subjects"][0][0], int)
  text = " | ".join(c["flags"])
  for phrase in ("NaN/inf", "norm < 1e-6", "single gallery image", "consistency < 0.5 (worst 2: 0.471)"):
    assert phrase in text, text
  assert not c["ok"]

  # a healthy gallery raises no flags; a collapsed one (everyone looks alike) is flagged
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(6, 32))
  healthy = np.repeat(centres, 3, axis=0) + 0.1 * rng.normal(size=(18, 32))
  ids = np.repeat(np.arange(6), 3)
  assert protocol.gallery_check(healthy, ids, np.arange(18))["ok"]
  collapsed = np.ones((18, 32)) + 0.1 * rng.normal(size=(18, 32))
  flags = protocol.gallery_check(collapsed, ids, np.arange(18), min_consistency=0.0)["flags"]
  assert any("no separation" in f for f in flags), flags
