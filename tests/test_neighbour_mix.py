"""The neighbour-mix score (edge/neighbours.py NeighbourMix): the prototypes' distance and the distance to the nearest
train feature in units of that feature's own radius, standardised and averaged."""
import json

import numpy as np
import pytest

from test_radius_mix import blobs


def brute_force(train, y, feats, k):
    """Each train row's radius (mean distance to its k nearest of its class) and each frame's nearest distance in
    radii, one pair at a time, on the float16-rounded rows the bundle stores."""
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    t = unit(np.asarray(train, np.float64)).astype(np.float16).astype(np.float64)
    r = np.array([np.sort([1 - t[i] @ t[j] for j in np.flatnonzero(y == y[i]) if j != i])[:k].mean()
                  for i in range(len(t))])
    r = np.maximum(r, 0.25 * np.median(r))
    return ((1 - unit(np.asarray(feats, np.float64)) @ t.T) / r).min(1)


@pytest.mark.parametrize("members", [1, 3])
def test_neighbour_mix_is_the_mean_of_two_standardised_distances_per_frame_and_through_the_arrays(members):
    from trashcam.edge.neighbours import NeighbourMix
    from trashcam.edge.ood import OodScore
    from trashcam.edge.prototypes import Prototypes

    x, y, foreign = blobs()
    train, val = x[::2], x[1::2].astype(np.float32)
    protos = Prototypes.fit(train, y[::2], per_class=3, seed=1, members=members)
    mix = NeighbourMix.fit_rows(protos, train, y[::2], val, k=5)
    plain, far = mix.parts(val)
    np.testing.assert_allclose(plain, protos.score(val), atol=1e-6)
    np.testing.assert_allclose(far, brute_force(train, y[::2], val, 5), rtol=1e-5)
    np.testing.assert_allclose(mix.score(val), ((plain - plain.mean()) / plain.std()
                                                + (far - far.mean()) / far.std()) / 2, atol=1e-6)
    q = np.concatenate([val[:6], foreign[:6]]).astype(np.float32)
    np.testing.assert_allclose([mix.score_one(v) for v in q], mix.score(q), rtol=1e-4, atol=1e-4)
    meta = json.loads(json.dumps(OodScore("neighbour-mix", 0.5, mix).to_meta()))
    assert meta["neighbours"] == len(train) and mix.arrays()["rows"].dtype == np.float16
    back = OodScore.from_meta(meta, mix.arrays())
    assert isinstance(back.stats, NeighbourMix) and back.stats.members == members
    np.testing.assert_allclose(back.score(None, q), mix.score(q), atol=1e-6)  # the stored rows are the fitted ones
    assert back.frame_score(np.full(3, 1 / 3), q[-1]) == pytest.approx(mix.score(q[-1:])[0], abs=1e-4)


def test_a_tight_class_has_small_radii_a_lone_row_gets_the_median_and_bad_arrays_are_refused():
    from trashcam.edge.neighbours import NeighbourMix
    from trashcam.edge.prototypes import Prototypes

    x, y, _ = blobs()
    mix = NeighbourMix.fit_rows(Prototypes.fit(x, y, per_class=2), x, y, x)
    r = [np.median(mix.radii[y == c]) for c in range(3)]
    assert r[0] < r[1] < r[2]
    # class 1 has one row: no neighbours to measure its radius by
    lone = NeighbourMix.fit_rows(Prototypes.fit(x[:61], y[:61], per_class=1), x[:61], y[:61], x[:61])
    assert lone.radii[60] == pytest.approx(np.median(lone.radii))
    with pytest.raises(ValueError, match="radii"):
        NeighbourMix(mix.centroids, 1, mix.rows, mix.radii[:2], mix.norm)
    with pytest.raises(ValueError, match="positive"):
        NeighbourMix(mix.centroids, 1, mix.rows, mix.radii, [0, 0, 0, 1])


def test_edge_calibrate_offers_neighbour_mix_with_its_own_threshold():
    from trashcam.calibration.ood import fit_ood

    x, y, foreign = blobs()
    probs = np.full((90, 3), 1 / 3)
    got, rep = fit_ood(probs, x[1::2], x[::2], y[::2], 0.05, "neighbour-mix", fits=2)
    assert got.kind == "neighbour-mix" and len(got.stats.rows) == 90 and got.stats.members == 2
    assert rep["candidates"]["neighbour-mix"]["val_flagged"] <= 0.05
    assert np.mean(got.score(None, foreign) > got.threshold) > 0.5


def test_the_projection_keeps_a_frames_length_and_counts_what_the_basis_misses_as_distance():
    from trashcam.edge.projection import Projection

    x, _, foreign = blobs()
    proj = Projection.fit(x, 4)
    assert proj.dims == 4 and np.allclose(proj.basis @ proj.basis.T, np.eye(4), atol=1e-5)
    t, f = proj.train(x), proj.frames(foreign)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1, atol=1e-6)
    assert not t[:, -1].any() and (f[:, -1] > 0).all()
    # a frame the basis spans exactly has no residual; a frame at right angles to it is all residual
    assert proj.frames(proj.basis[:1] * 7)[0, -1] == pytest.approx(0, abs=1e-3)
    ortho = np.linalg.svd(proj.basis.astype(np.float64))[2][-1]
    assert proj.frames(ortho[None])[0, -1] == pytest.approx(1, abs=1e-6)
    with pytest.raises(ValueError, match="basis"):
        Projection(np.zeros((30, 24)))


def test_neighbour_lite_is_neighbour_mix_in_the_projection_per_frame_and_through_the_arrays():
    from trashcam.edge.neighbours import NeighbourLite, NeighbourMix
    from trashcam.edge.ood import OodScore

    x, y, foreign = blobs()
    train, val = x[::2], x[1::2].astype(np.float32)
    lite = NeighbourLite.fit(train, y[::2], val, dims=6, members=2)
    assert lite.mix.rows.shape == (90, 7) and lite.mix.centroids.shape[1] == 7
    plain, far = lite.parts(val)
    np.testing.assert_allclose(lite.score(val), ((plain - plain.mean()) / plain.std()
                                                 + (far - far.mean()) / far.std()) / 2, atol=1e-6)
    q = np.concatenate([val[:6], foreign[:6]]).astype(np.float32)
    np.testing.assert_allclose([lite.score_one(v) for v in q], lite.score(q), rtol=1e-4, atol=1e-4)
    meta = json.loads(json.dumps(OodScore("neighbour-lite", 0.5, lite).to_meta()))
    assert meta["dims"] == 6 and meta["neighbours"] == 90
    back = OodScore.from_meta(meta, lite.arrays())
    assert isinstance(back.stats, NeighbourLite)
    np.testing.assert_allclose(back.score(None, q), lite.score(q), atol=1e-6)
    assert back.frame_score(np.full(3, 1 / 3), q[-1]) == pytest.approx(lite.score(q[-1:])[0], abs=1e-4)
    assert np.mean(lite.score(foreign) > np.quantile(lite.score(val), 0.95)) > 0.5
    aligned = NeighbourMix(lite.mix.centroids, 2, lite.mix.rows + 0.1, lite.mix.radii, lite.mix.norm)
    with pytest.raises(ValueError, match="zero one"):  # the per-frame path drops the residual coordinate
        NeighbourLite(lite.projection, aligned)


def test_edge_calibrate_offers_neighbour_lite():
    from trashcam.calibration.ood import fit_ood

    x, y, foreign = blobs()
    got, rep = fit_ood(np.full((90, 3), 1 / 3), x[1::2], x[::2], y[::2], 0.05, "neighbour-lite", fits=2)
    assert got.kind == "neighbour-lite" and got.stats.mix.members == 2
    assert rep["candidates"]["neighbour-lite"]["val_flagged"] <= 0.05
    assert np.mean(got.score(None, foreign) > got.threshold) > 0.5


def test_auto_takes_the_first_preferred_kind_that_reads_no_more_bytes_a_frame_than_radius_mix(monkeypatch):
    """The score's time after an invoke goes with the bytes it reads: with many k-means fits (a 288 px model) radius-mix
    reads more than neighbour-lite's basis and rows, with one fit (small inputs) less, and auto follows; as an int8
    model neighbour-lite reads less at both. With the maxima output, neighbour-max comes first, then neighbour-lite."""
    from trashcam.calibration.ood import DEFAULT_KIND, LEANER, WITHOUT_MAXIMA, Maxima, fit_ood, frame_bytes
    from trashcam.edge import score_model

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 60)
    x = np.abs(np.repeat(rng.normal(size=(3, 256)), 60, 0) + rng.normal(size=(180, 256)) * 0.5)
    probs = np.full((90, 3), 1 / 3)
    maxima = Maxima(val=x[1::2] * 2 + 1, train=x[::2] * 2 + 1)  # features_max, as a model with that output gives
    assert (DEFAULT_KIND, WITHOUT_MAXIMA, LEANER) == ("neighbour-max", "neighbour-lite", "radius-mix")
    cases = ((True, 8, WITHOUT_MAXIMA, DEFAULT_KIND), (True, 1, WITHOUT_MAXIMA, WITHOUT_MAXIMA),
             (False, 8, WITHOUT_MAXIMA, DEFAULT_KIND), (False, 1, LEANER, LEANER))  # (..., auto without / with maxima)
    for int8, fits, kind, with_max in cases:
        if not int8:  # calibrating where LiteRT's schema is missing: NumPy's float32 form
            monkeypatch.setattr(score_model, "build_model", lambda **kw: None)
        got, rep = fit_ood(probs, x[1::2], x[::2], y[::2], 0.05, "auto", fits=fits)
        assert got.kind == rep["kind"] == kind
        lite, _ = fit_ood(probs, x[1::2], x[::2], y[::2], 0.05, WITHOUT_MAXIMA, fits=fits)
        mix, _ = fit_ood(probs, x[1::2], x[::2], y[::2], 0.05, LEANER, fits=fits)
        assert (lite.stats.score_model is not None) == int8
        assert (frame_bytes(lite) <= frame_bytes(mix)) == (kind == WITHOUT_MAXIMA)
        # with the maxima output: neighbour-max where it reads no more than radius-mix (its basis is twice as
        # wide), else neighbour-lite where that does
        got, rep = fit_ood(probs, x[1::2], x[::2], y[::2], 0.05, "auto", fits=fits, maxima=maxima)
        wide = rep["candidates"]
        assert "neighbour-max" in wide and got.kind == rep["kind"] == with_max
        both, _ = fit_ood(probs, x[1::2], x[::2], y[::2], 0.05, DEFAULT_KIND, fits=fits, maxima=maxima)
        assert got.kind == (DEFAULT_KIND if frame_bytes(both) <= frame_bytes(mix) else
                            WITHOUT_MAXIMA if frame_bytes(lite) <= frame_bytes(mix) else LEANER)


@pytest.mark.parametrize("kind", ["neighbour-lite", "neighbour-mix", "relative"])
def test_int8_score_model_flags_what_numpy_flags_and_old_arrays_keep_numpy(kind, caplog):
    """edge/score_model.py: the whole per-frame score in one invoke, standardised through itself (the neighbour
    scores); stored, checked on load against its probe (a runtime that misses it falls back to NumPy, with a warning),
    shared by threads. The relative score (reviewed foreign images) runs the same model with the foreign centres as
    its rows."""
    import threading

    from trashcam.edge.neighbours import NeighbourLite, NeighbourMix
    from trashcam.edge.ood import FEATURE_STATS, OodScore, threshold_for_rate
    from trashcam.edge.prototypes import Prototypes, RelativePrototypes

    x, y, foreign = blobs()
    train, val = x[::2], x[1::2].astype(np.float32)
    if kind == "neighbour-lite":
        plain = NeighbourLite.fit(train, y[::2], val, dims=6, members=2)
    elif kind == "relative":
        plain = RelativePrototypes.fit_foreign(Prototypes.fit(train, y[::2], per_class=3, members=2), foreign[::2])
    else:
        plain = NeighbourMix.fit_rows(Prototypes.fit(train, y[::2], per_class=3, members=2), train, y[::2], val)
    fast = plain.with_model(val)
    assert fast.score_model is not None and plain.score_model is None and fast.meta()["per_frame"] == "int8 tflite"
    q = np.concatenate([val, foreign]).astype(np.float32)
    exact, got = np.array(plain.parts(q)), np.array(fast.parts(q))
    assert min(np.corrcoef(g, e)[0, 1] for g, e in zip(got, exact)) > 0.99  # int8 weights and inputs: the same parts
    flags = [s.score(q) > threshold_for_rate(s.score(val), 0.1) for s in (fast, plain)]
    assert np.mean(flags[0] == flags[1]) >= 0.95
    np.testing.assert_allclose([fast.score_one(v) for v in q[:8]], fast.score(q[:8]), atol=1e-6)
    if kind != "relative":  # a difference of two cosines: nothing to standardise
        assert abs(fast.score(val).mean()) < 1e-6  # standardised on its own parts, as frames compute them
    back = OodScore.from_meta(OodScore(kind, 0.5, fast).to_meta(), fast.arrays())
    assert back.stats.score_model is not None
    np.testing.assert_allclose(back.score(None, q), fast.score(q), atol=1e-6)
    out = {}
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, back.score(None, q))) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(out[i], out[0]) for i in range(3))
    old = {k: v for k, v in fast.arrays().items() if not k.startswith("score_model")}  # a bundle from before
    assert FEATURE_STATS[kind].from_arrays(old).score_model is None
    np.testing.assert_allclose(FEATURE_STATS[kind].from_arrays(plain.arrays()).score(q), plain.score(q), atol=1e-6)
    wrong = {**fast.arrays(), "score_model_expect": fast.score_model.expect + 1}  # a runtime off by a lot
    with caplog.at_level("WARNING"):
        assert FEATURE_STATS[kind].from_arrays(wrong).score_model is None
    assert "using NumPy" in caplog.text


def test_score_model_keeps_small_rows_as_precise_as_large_ones():
    """Per-tensor int8 weights with every row at full range and a MUL by the rows' scales: per-row precision (what
    per-channel weights give, which tflite_runtime 2.14 computes wrongly)."""
    from trashcam.edge.score_model import ScoreModel, build_model

    rng = np.random.default_rng(0)
    x = np.abs(rng.normal(size=(20, 64))).astype(np.float32)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    centres = rng.normal(size=(8, 64)) * np.logspace(-3, 0, 8)[:, None]  # rows 1000x apart, 2 fits of 4
    rows = rng.normal(size=(5, 64))
    inv_r = np.full(5, 2.0, np.float32)
    exact_near = (u @ centres.T).reshape(20, 2, 4).max(axis=2).mean(axis=1)
    exact_far = ((1 - u @ rows.T) * 2.0).min(axis=1)
    m = ScoreModel.fit(build_model(None, centres, rows, 2, inv_r), x, (1 - exact_near, exact_far))
    plain, far = m.parts(x)
    assert m.checked(m.model, m.probe, m.expect) is not None
    np.testing.assert_allclose(1 - plain, exact_near, atol=0.01 * np.abs(centres).max() * 8 ** 0.5)
    np.testing.assert_allclose(far, exact_far, atol=0.05)
