"""benchmarks/prototype_fits: other fits of the prototypes' centres, measured on cached LOCO fold outputs."""
import numpy as np


def blobs(seed=3):
    rng = np.random.default_rng(seed)
    centres = np.abs(rng.normal(size=(3, 20))) * 3
    return {"train_f": np.repeat(centres, 30, 0) + np.abs(rng.normal(size=(90, 20))),
            "train_y": np.repeat([0, 1, 2], 30),
            "cal_f": np.repeat(centres, 20, 0) + np.abs(rng.normal(size=(60, 20))),
            "foreign_f": np.abs(rng.normal(size=(25, 20))) * 3}


def test_each_fit_scores_like_the_prototypes_it_stands_for():
    from trashcam.benchmarks.prototype_fits import fit, kcenter_start, objective
    from trashcam.edge.prototypes import Prototypes, spherical_kmeans
    from trashcam.edge.vectors import unit_rows

    F = blobs()
    x, y, f = F["train_f"], F["train_y"], F["cal_f"]
    deployed = Prototypes.fit(x, y, seed=4).score(f)
    np.testing.assert_allclose(fit("kmeans", x, y, 4)(f), deployed)
    np.testing.assert_allclose(fit("ensemble", x, y, 4, members=1)(f), deployed)  # seeds M*s + j: 4
    two = np.mean([Prototypes.fit(x, y, seed=s).score(f) for s in (8, 9)], axis=0)
    np.testing.assert_allclose(fit("ensemble", x, y, 4, members=2)(f), two)
    u = unit_rows(x[y == 0])
    c = spherical_kmeans(u, 4, seed=1)
    np.testing.assert_allclose(spherical_kmeans(u, 4, init=c), c)  # converged centres are a fixed point
    start = kcenter_start(u, 3, first=0)
    assert np.allclose(start[0], u[0]) and np.isclose(1 - start[1] @ u[0], (1 - u @ u[0]).max())
    restarts = fit("restarts", x, y, 0, restarts=4)(f)
    assert restarts.shape == (60,) and objective(u, c) > 0
    assert fit("kcenter", x, y, 0)(f).shape == (60,)


def test_fold_summary_and_table_cover_every_fit_and_seed():
    from trashcam.benchmarks.prototype_fits import FITS, fold, markdown, summarise

    rows = fold(blobs(), FITS, (0, 1), 0.05, restarts=2, members=2)
    assert [(r["fit"], r["seed"]) for r in rows] == [(k, s) for k in FITS for s in (0, 1)]
    assert all(0 <= r["foreign_flagged"] <= 1 and 0 <= r["in_dist_flagged"] <= 1 for r in rows)
    s = summarise({"a": rows, "b": rows})
    assert [x["fit"] for x in s] == list(FITS) and set(s[0]["per_fold"]) == {"a", "b"}
    assert all(x["fold_sd_over_seeds"] >= 0 and x["mean_range_over_seeds"] >= 0 for x in s)
    assert "| ensemble |" in markdown(s)
    kinds = ("radius", "radius-mix", "neighbour-mix", "neighbour-lite")
    mixed = fold(blobs(), kinds, (0,), 0.05, members=2)
    assert [r["fit"] for r in mixed] == list(kinds) and all(0 <= r["foreign_flagged"] <= 1 for r in mixed)


def test_averaged_fits_score_as_the_mean_of_single_fits_and_survive_the_bundle_arrays():
    """Prototypes(members=M): M k-means fits' centres in blocks; a frame's score is the mean of each fit's nearest
    cosine, the same one frame at a time, through the arrays file and in the relative score; one fit is unchanged."""
    from trashcam.edge.ood import OodScore
    from trashcam.edge.prototypes import Prototypes, RelativePrototypes

    F = blobs()
    x, y, f = F["train_f"], F["train_y"], F["cal_f"].astype(np.float32)
    two = Prototypes.fit(x, y, seed=3, members=2)  # fits seeded 6 and 7
    singles = [Prototypes.fit(x, y, seed=s) for s in (6, 7)]
    np.testing.assert_allclose(two.score(f), np.mean([p.score(f) for p in singles], axis=0), rtol=1e-6)
    np.testing.assert_allclose([two.score_one(v) for v in f], two.score(f), rtol=1e-5, atol=1e-6)
    assert len(two.centroids) == 2 * len(singles[0].centroids) and two.meta()["members"] == 2
    score = OodScore("prototypes", 0.1, two)
    back = OodScore.from_meta(score.to_meta(), score.stats.arrays())
    assert back.stats.members == 2 and np.allclose(back.score(None, f), score.score(None, f))
    one = Prototypes.fit(x, y, seed=3)
    assert "members" not in one.meta() and set(one.arrays()) == {"centroids"}
    assert Prototypes.from_arrays(one.arrays()).members == 1  # a bundle calibrated before averaging
    rel = RelativePrototypes.fit_foreign(two, F["foreign_f"][:8])
    unit = f / np.linalg.norm(f, axis=1, keepdims=True)
    np.testing.assert_allclose(rel.score(f), (unit @ rel.foreign.T).max(axis=1) - (1 - two.score(f)), atol=1e-5)
    np.testing.assert_allclose([rel.score_one(v) for v in f], rel.score(f), rtol=1e-5, atol=1e-6)
    again = RelativePrototypes.from_arrays(rel.arrays())
    assert again.members == 2 and np.allclose(again.score(f), rel.score(f))


def test_fits_fall_with_the_input_pixels_and_calibration_uses_them(scored_bundle, tmp_path):
    """8 fits at 288 x 288 px (the default recipe), 2 at the quick recipe's 160, 1 for a tiny test model, unless
    --prototype-fits says; the bundle's arrays carry the count edge-run scores with."""
    import shutil

    from trashcam.calibration.config import CalibrationConfig
    from trashcam.calibration.pipeline import calibrate_bundle
    from trashcam.edge.bundle import Bundle
    from trashcam.edge.ood import load_for_variant
    from trashcam.edge.prototypes import prototype_fits

    assert [prototype_fits(s * s) for s in (288, 260, 240, 160, 32)] == [8, 7, 6, 2, 1]
    d, _ = scored_bundle
    h, w = Bundle.load(d).preprocessing.input_size
    fitted = load_for_variant(Bundle.load(d), "tflite-int8").stats
    assert getattr(fitted, "mix", fitted).members == prototype_fits(h * w)  # auto's kind: radius-mix or neighbour-lite
    shutil.copytree(d, tmp_path / "b")
    calibrate_bundle(tmp_path / "b", CalibrationConfig(variants=("tflite-int8",), plots=False, threads=1,
                                                       prototype_fits=3))
    three = load_for_variant(Bundle.load(tmp_path / "b"), "tflite-int8").stats
    three = getattr(three, "mix", three)
    assert three.members == 3 and len(three.centroids) % 3 == 0
