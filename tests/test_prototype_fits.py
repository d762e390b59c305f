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
    from trashcam.edge.ood import Prototypes, spherical_kmeans, unit_rows

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
