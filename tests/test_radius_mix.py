"""The radius-mix score (edge/prototypes.py RadiusPrototypes): the prototypes' distance and the distance in units of
each centre's radius, standardised and averaged."""
import json

import numpy as np
import pytest


def blobs(seed=5):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 24)) * 3
    spread = np.array([0.3, 1.0, 2.0])  # one tight class, one loose
    x = np.repeat(centres, 60, 0) + rng.normal(size=(180, 24)) * np.repeat(spread, 60)[:, None]
    return x, np.repeat([0, 1, 2], 60), rng.normal(size=(30, 24)) * 3


def brute_force(protos, train, feats):
    """Each centre's radius and each row's nearest distance in radii, one row and one centre at a time."""
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    c = protos.centroids.astype(np.float64).reshape(protos.members, -1, protos.centroids.shape[1])
    t, f = unit(np.asarray(train, np.float64)), unit(np.asarray(feats, np.float64))
    out = np.zeros(len(f))
    for fit in c:
        d = 1 - t @ fit.T
        near = d.argmin(1)
        r = np.array([d[near == k, k].mean() if (near == k).any() else np.nan for k in range(len(fit))])
        med = np.nanmedian(r)
        r = np.maximum(np.where(np.isnan(r), med, r), 0.25 * med)
        out += ((1 - f @ fit.T) / r).min(1) / len(c)
    return out


@pytest.mark.parametrize("members", [1, 3])
def test_radius_mix_is_the_mean_of_two_standardised_distances_per_frame_and_through_the_arrays(members):
    from trashcam.edge.ood import OodScore
    from trashcam.edge.prototypes import Prototypes, RadiusPrototypes

    x, y, foreign = blobs()
    train, val = x[::2], x[1::2].astype(np.float32)
    protos = Prototypes.fit(train, y[::2], per_class=3, seed=1, members=members)
    mix = RadiusPrototypes.fit_radii(protos, train, val)
    plain, far = mix.parts(val)
    np.testing.assert_allclose(plain, protos.score(val), atol=1e-6)
    np.testing.assert_allclose(far, brute_force(protos, train, val), rtol=1e-5)
    np.testing.assert_allclose(mix.score(val), ((plain - plain.mean()) / plain.std()
                                                + (far - far.mean()) / far.std()) / 2, atol=1e-6)
    assert abs(mix.score(val).mean()) < 1e-6  # standardised on these very images
    q = np.concatenate([val[:6], foreign[:6]]).astype(np.float32)
    np.testing.assert_allclose([mix.score_one(v) for v in q], mix.score(q), rtol=1e-4, atol=1e-4)
    back = OodScore.from_meta(json.loads(json.dumps(OodScore("radius-mix", 0.5, mix).to_meta())), mix.arrays())
    assert isinstance(back.stats, RadiusPrototypes) and back.stats.members == members
    np.testing.assert_allclose(back.score(None, q), mix.score(q), atol=1e-6)
    assert back.frame_score(np.full(3, 1 / 3), q[-1]) == pytest.approx(mix.score(q[-1:])[0], abs=1e-4)


def test_a_tight_centre_makes_a_near_frame_far_and_bad_arrays_are_refused():
    from trashcam.edge.prototypes import Prototypes, RadiusPrototypes

    x, y, _ = blobs()
    protos = Prototypes.fit(x, y, per_class=1)  # one centre a class: its radius is its class's spread
    mix = RadiusPrototypes.fit_radii(protos, x, x)
    radii = mix.radii
    assert radii[0] < radii[1] < radii[2]
    # the same cosine distance off the tight centre and off the loose one: only the radius part tells them apart
    c = protos.centroids.astype(np.float64)
    off = [np.cos(0.3) * c[k] + np.sin(0.3) * (lambda o: o / np.linalg.norm(o))(np.eye(24)[0] - c[k] * c[k, 0])
           for k in (0, 2)]
    plain, far = mix.parts(np.array(off))
    assert plain[0] == pytest.approx(plain[1], abs=0.02) and far[0] > 2 * far[1]
    with pytest.raises(ValueError, match="radii"):
        RadiusPrototypes(protos.centroids, 1, radii[:2])
    with pytest.raises(ValueError, match="positive"):
        RadiusPrototypes(protos.centroids, 1, radii, [0, 0, 0, 1])


def test_edge_calibrate_offers_radius_mix_with_its_own_threshold():
    from trashcam.calibration.ood import fit_ood

    x, y, foreign = blobs()
    probs = np.full((90, 3), 1 / 3)
    got, rep = fit_ood(probs, x[1::2], x[::2], y[::2], 0.05, "radius-mix", fits=2)
    assert got.kind == "radius-mix" and got.stats.members == 2
    assert rep["candidates"]["radius-mix"]["val_flagged"] <= 0.05
    assert np.mean(got.score(None, foreign) > got.threshold) > 0.5
