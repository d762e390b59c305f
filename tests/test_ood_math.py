"""The uncertainty score's math (edge/ood.py): the distances, the threshold and its promise, the stored meta.
What a bundle, edge-calibrate and the Classifier do with it is in test_open_set.py."""
from __future__ import annotations

import json

import numpy as np
import pytest

from trashcam.calibration.ood import LEANER, WITHOUT_MAXIMA


def test_mahalanobis_flags_far_points_and_matches_direct_formula():
    from trashcam.edge.ood import Mahalanobis, auroc, ledoit_wolf, threshold_for_rate

    rng = np.random.default_rng(0)
    means = np.array([[0.0] * 6, [4.0] + [0.0] * 5])
    y = np.repeat([0, 1], 200)
    x = means[y] + rng.normal(size=(400, 6))
    m = Mahalanobis.fit(x, y)
    emp = np.stack([x[y == 0].mean(0), x[y == 1].mean(0)])
    cov, shrink = ledoit_wolf(x - emp[y])
    sk = pytest.importorskip("sklearn.covariance")
    sk_cov, sk_shrink = sk.ledoit_wolf(x - emp[y], assume_centered=True)
    np.testing.assert_allclose(cov, sk_cov, rtol=1e-6, atol=1e-9)
    assert shrink == pytest.approx(sk_shrink)
    q = rng.normal(size=(5, 6)) * 3
    prec = np.linalg.inv(cov)
    direct = np.min([[float((v - c) @ prec @ (v - c)) for c in emp] for v in q], axis=1)
    np.testing.assert_allclose(m.score(q), direct, rtol=1e-3, atol=1e-3)
    single = [m.score(q[i:i + 1])[0] for i in range(len(q))]  # the per-frame path (einsum, not BLAS)
    np.testing.assert_allclose(single, direct, rtol=1e-3, atol=1e-3)
    far = rng.normal(size=(50, 6)) + 10.0
    assert auroc(m.score(x), m.score(far)) > 0.99
    t = threshold_for_rate(m.score(x), 0.05)
    assert abs(np.mean(m.score(x) > t) - 0.05) <= 0.01


def test_low_rank_mahalanobis_is_probabilistic_pca_and_old_bundles_keep_their_distances():
    from trashcam.edge.ood import Mahalanobis, ledoit_wolf

    rng = np.random.default_rng(3)
    d, r = 40, 6
    y = np.repeat([0, 1, 2], 100)
    x = rng.normal(size=(300, d)) @ rng.normal(size=(d, d)) * 0.3 + y[:, None]
    q = rng.normal(size=(7, d)) * 2
    low = Mahalanobis.fit(x, y, rank=r)
    assert low.rank == r and low.basis.shape == (d, r)
    means = np.stack([x[y == c].mean(0) for c in range(3)])
    cov, _ = ledoit_wolf(x - means[y])
    lam, u = np.linalg.eigh(cov)
    # the PPCA covariance: top r eigenpairs kept, the others replaced by their mean
    ppca = u @ np.diag(np.concatenate([np.full(d - r, lam[:d - r].mean()), lam[d - r:]])) @ u.T
    direct = np.min([[float((v - c) @ np.linalg.inv(ppca) @ (v - c)) for c in means] for v in q], axis=1)
    np.testing.assert_allclose(low.score(q), direct, rtol=1e-4)
    np.testing.assert_allclose([low.score(v)[0] for v in q], direct, rtol=1e-4)  # one frame at a time
    # a bundle calibrated before stored the full precision and P @ mu_c: same distances, same threshold
    exact = Mahalanobis.fit(x, y, rank=None)
    prec = np.linalg.inv(cov)
    old = {"precision": prec.astype(np.float32), "p_means": (prec @ means.T).astype(np.float32),
           "m_p_m": np.einsum("cd,dc->c", means, prec @ means.T)}
    np.testing.assert_allclose(Mahalanobis.from_arrays(old).score(q), exact.score(q), rtol=1e-3)
    back = Mahalanobis.from_arrays(low.arrays())
    np.testing.assert_allclose(back.score(q), low.score(q), rtol=1e-6)


def test_prototypes_score_is_the_cosine_distance_to_the_nearest_class_centre():
    """k-means centres per class on the unit sphere: a frame's score is 1 - the highest cosine to any centre, one
    frame at a time as in a batch, and it survives the bundle's arrays."""
    from trashcam.edge.ood import OodScore
    from trashcam.edge.prototypes import Prototypes, spherical_kmeans

    rng = np.random.default_rng(4)
    blobs = rng.normal(size=(6, 30)) * 3
    x = np.repeat(blobs, 40, axis=0) + rng.normal(size=(240, 30)) * 0.3
    y = np.repeat([0, 0, 1, 1, 2, 2], 40)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = spherical_kmeans(unit[y == 0], 2)
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1, rtol=1e-6)
    b0, b1 = blobs[:2] / np.linalg.norm(blobs[:2], axis=1, keepdims=True)
    assert max(c @ b0) > 0.99 and max(c @ b1) > 0.99  # one centre found each of the class's two blobs
    p = Prototypes.fit(x, y, per_class=2)
    assert p.centroids.shape == (6, 30)
    q = np.concatenate([x[:3], rng.normal(size=(4, 30)) * 3]).astype(np.float32)
    direct = 1 - np.max((q / np.linalg.norm(q, axis=1, keepdims=True)) @ p.centroids.T, axis=1)
    np.testing.assert_allclose(p.score(q), direct, atol=1e-6)
    np.testing.assert_allclose([p.score_one(v) for v in q], direct, atol=1e-5)
    assert p.score(q[:3]).max() < 0.05 < p.score(q[3:]).min()  # training points are near, random ones far
    s = OodScore("prototypes", 0.1, p)
    back = OodScore.from_meta(json.loads(json.dumps(s.to_meta())), p.arrays())
    assert back.needs_features and back.to_meta()["prototypes"] == 6
    np.testing.assert_allclose(back.score(np.full((7, 3), 1 / 3), q), direct, atol=1e-6)
    assert spherical_kmeans(unit[:3], 8).shape == (3, 30)  # fewer rows than centres: one centre per row


def test_relative_score_flags_what_looks_like_reviewed_foreign_images():
    """relative = prototypes' distance - distance to centres of reviewed foreign images; per frame as in a batch;
    edge-calibrate's auto takes it once there are foreign images, and says what it flags on images it was not
    fitted on."""
    from trashcam.calibration.ood import fit_ood
    from trashcam.edge.ood import OodScore
    from trashcam.edge.prototypes import Prototypes, RelativePrototypes, foreign_centres

    rng = np.random.default_rng(6)
    blobs = rng.normal(size=(3, 30)) * 3
    x = np.repeat(blobs, 60, axis=0) + rng.normal(size=(180, 30)) * 0.4
    y = np.repeat([0, 1, 2], 60)
    near = blobs[0] + rng.normal(size=30) * 0.3  # a foreign kind that lies near class 0
    foreign = near + rng.normal(size=(40, 30)) * 0.4
    protos = Prototypes.fit(x[::2], y[::2], per_class=4)
    rel = RelativePrototypes.fit_foreign(protos, foreign[:20])
    assert len(rel.foreign) == foreign_centres(20) == 5 and foreign_centres(1) == 1 and foreign_centres(999) == 16
    q = np.concatenate([x[1::2][:5], foreign[20:25]]).astype(np.float32)
    np.testing.assert_allclose([rel.score_one(v) for v in q], rel.score(q), atol=1e-5)
    back = OodScore.from_meta(json.loads(json.dumps(OodScore("relative", 0.0, rel).to_meta())), rel.arrays())
    assert back.to_meta()["foreign_prototypes"] == 5
    np.testing.assert_allclose(back.score(np.full((10, 3), 1 / 3), q), rel.score(q), atol=1e-6)
    probs = np.full((90, 3), 1 / 3)
    val = x[1::2]
    plain, _ = fit_ood(probs, val, x[::2], y[::2], 0.05, "prototypes")
    got, rep = fit_ood(probs, val, x[::2], y[::2], 0.05, "auto", (np.full((20, 3), 1 / 3), foreign[:20]))
    assert rep["kind"] == "relative" and rep["chosen_by"] == "foreign images"
    row = rep["candidates"]["relative"]
    assert 0 <= row["foreign_flagged"] <= row["foreign_flagged_in_sample"] <= 1
    new = foreign[20:]  # never fitted on: the relative score flags more of them than the prototypes do
    assert np.mean(got.score(None, new) > got.threshold) > np.mean(plain.score(None, new) > plain.threshold)
    _, rep = fit_ood(probs, val, x[::2], y[::2], 0.05, "auto", (np.full((1, 3), 1 / 3), foreign[:1]))
    assert rep["kind"] == "relative" and 0 <= rep["candidates"]["relative"]["foreign_flagged"] <= 1  # one image
    _, rep = fit_ood(probs, val, x[::2], y[::2], 0.05, "auto")
    assert rep["kind"] in (WITHOUT_MAXIMA, LEANER) and "relative" not in rep["candidates"]  # test_neighbour_mix: which
    with pytest.raises(ValueError, match="needs reviewed foreign images"):
        fit_ood(probs, val, x[::2], y[::2], 0.05, "relative")


def test_auroc_ties_and_threshold_edges():
    from trashcam.edge.ood import auroc, new_flagged_expected, threshold_for_rate
    assert auroc(np.array([0.0, 0.0]), np.array([0.0])) == pytest.approx(0.5)
    assert auroc(np.array([0.0, 1.0]), np.array([2.0])) == 1.0
    s = np.arange(10.0)
    assert np.mean(s > threshold_for_rate(s, 0.2)) == pytest.approx(0.1)  # 9 of 10 kept: ceil(0.8 x 11)
    assert np.mean(s > threshold_for_rate(s, 0.0)) == 0.0
    assert np.mean(np.arange(99.0) > threshold_for_rate(np.arange(99.0), 0.05)) == pytest.approx(4 / 99)  # 95 kept
    # on the 95th score itself, a round-off's width above (halfway to the 96th flagged fewer new images)
    assert 94.0 < threshold_for_rate(np.arange(99.0), 0.05) <= 94.0 * (1 + 1e-4)
    assert new_flagged_expected(252, 0.05) == pytest.approx(12 / 253)  # what the rank promises new images
    assert new_flagged_expected(9, 0.05) == pytest.approx(0.1)  # too few: above them all


def test_the_threshold_flags_at_most_the_rate_of_new_in_distribution_images():
    """Split conformal: over many draws, a new image from the calibration images' distribution is flagged at most
    `rate` of the time, at small n too (the old rank, ceil((1 - rate) n) kept, gave 2/11 at n = 10 and rate 0.1)."""
    from trashcam.edge.ood import threshold_for_rate
    rng = np.random.default_rng(0)
    for n, rate in ((10, 0.1), (126, 0.05), (252, 0.05)):
        x = rng.normal(size=(4000, n + 1))
        hits = [row[-1] > threshold_for_rate(row[:-1], rate) for row in x]
        assert np.mean(hits) <= rate + 0.01, (n, rate, np.mean(hits))


def test_too_few_calibration_images_for_the_flag_rate_are_warned_about():
    """Below 1 / rate - 1 images the threshold sits above them all and still flags 1 / (n + 1) of new images."""
    from trashcam.calibration.pipeline import few_images_warning
    from trashcam.edge.ood import threshold_for_rate

    assert few_images_warning(19, 0.05, "validation") is None and few_images_warning(252, 0.05, "test") is None
    msg = few_images_warning(9, 0.05, "validation")
    assert "9 validation images" in msg and "10.0%" in msg and "19 images or more" in msg
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 10))
    assert np.mean([row[-1] > threshold_for_rate(row[:-1], 0.05) for row in x]) == pytest.approx(0.1, abs=0.015)


def test_score_meta_round_trip_and_unknown_kind():
    from trashcam.edge.ood import Mahalanobis, OodScore
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(60, 4)), np.repeat([0, 1, 2], 20)
    s = OodScore("combined", 0.5, Mahalanobis.fit(x, y), {"mahalanobis": (3.0, 1.0), "msp": (0.1, 0.05)})
    back = OodScore.from_meta(json.loads(json.dumps(s.to_meta())), s.stats.arrays())
    probs = rng.dirichlet(np.ones(3), 60)
    np.testing.assert_allclose(back.score(probs, x), s.score(probs, x), rtol=1e-6)
    # the per-frame path (Classifier, edge-run) gives the batch path's numbers
    np.testing.assert_allclose([back.frame_score(probs[i], x[i:i + 1]) for i in range(60)], s.score(probs, x),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="unknown uncertainty score"):
        OodScore.from_meta({"kind": "vibes"})
