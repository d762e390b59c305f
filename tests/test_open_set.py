"""The uncertainty score in the product (its math: test_ood_math.py): the features output of converted
variants, its fit in edge-calibrate, and Classifier using it with no flag (old bundles falling back to
max-probability)."""
from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from trashcam.calibration.ood import LEANER

# What auto fits on the tiny fixture model (one k-means fit, short features): radius-mix, which reads fewer bytes a
# frame there than DEFAULT_KIND, even as an int8 model (test_neighbour_mix.py has the rule)
TINY_AUTO = LEANER


def test_converted_variants_output_features(scored_bundle):
    import keras

    from trashcam.edge.bundle import Bundle
    from trashcam.edge.interpreters import open_engine
    from trashcam.train.keras_engine import load_keras_model

    d, _ = scored_bundle
    b = Bundle.load(d)
    img = np.random.default_rng(0).integers(0, 255, (*b.preprocessing.input_size, 3), dtype=np.uint8)
    model = load_keras_model(b)
    from trashcam.calibration.ood import keras_features
    from trashcam.train.features import _pool_layer
    ref = keras_features(model, img[None])
    feature_map = keras.Model(model.input, _pool_layer(model).input)(img[None].astype(np.float32))
    ref_max = np.asarray(feature_map).max(axis=(1, 2))
    for v in ("tflite-fp32", "tflite-int8"):
        eng = open_engine(b, v, 1)
        assert eng.has_features
        # output 0 is the probabilities: what MediaPipe's ImageClassifier and other TFLite apps read as classes
        assert eng.interpreter.get_output_details()[0]["shape"][-1] == len(b.labels)
        p = eng.postprocess(eng.invoke_raw(eng.prepare(img)))
        assert p.shape == (1, len(b.labels)) and abs(p.sum() - 1) < 0.05  # the probabilities, not the features
        f = eng.features()
        assert f.shape == ref.shape
        if v == "tflite-fp32":
            np.testing.assert_allclose(f, ref, rtol=1e-4, atol=1e-4)
        # output 2: each channel's maximum over the map the features average (never below their mean)
        assert eng.has_features_max and eng.features_max().shape == ref.shape
        if v == "tflite-fp32":
            np.testing.assert_allclose(eng.features_max(), ref_max, rtol=1e-4, atol=1e-4)
        assert np.all(eng.features_max() >= f - 0.05)


def test_calibrate_stores_a_feature_score_per_variant(scored_bundle):
    from trashcam.edge.bundle import Bundle
    d, report = scored_bundle
    b = Bundle.load(d)  # verifies every listed file, the .npz included
    ood = b.calibration["ood_by_variant"]
    assert set(ood) >= {"keras", "tflite-fp32", "tflite-int8"}
    for v in ("tflite-fp32", "tflite-int8"):
        assert ood[v]["kind"] == TINY_AUTO and ood[v]["file"] == f"ood/{v}.npz"
        assert report["variants"][v]["uncertainty"]["candidates"][TINY_AUTO]["val_flagged"] <= 0.1
    # INT8 has its own statistics, not a copy of float's
    a, c = np.load(d / "ood/tflite-fp32.npz"), np.load(d / "ood/tflite-int8.npz")
    assert a.files == c.files and not all(np.array_equal(a[k], c[k]) for k in a.files)


def test_classifier_uses_score_and_old_bundles_fall_back(scored_bundle, tmp_path):
    from trashcam.edge.bundle import Bundle
    from trashcam.edge.runtime import Classifier

    d, _ = scored_bundle
    img = np.random.default_rng(2).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    clf = Classifier(d, "tflite-int8", threads=1)
    assert clf.ood is not None and clf.ood.kind == TINY_AUTO
    p = clf.classify(img)
    assert np.isfinite(p.score) and p.uncertain == (p.score > clf.ood.threshold)
    assert "score" in p.to_dict()
    # an explicit --min-confidence keeps the max-probability rule
    p2 = Classifier(d, "tflite-int8", threads=1, min_confidence=0.99).classify(img)
    assert p2.score == pytest.approx(1 - p2.confidence)
    # an old bundle (no ood entry) still works: max-probability
    old = tmp_path / "old"
    shutil.copytree(d, old)
    b = Bundle.load(old)
    b.metadata["calibration"].pop("ood_by_variant")
    b.save()
    clf_old = Classifier(old, "tflite-int8", threads=1)
    assert clf_old.ood is None
    p3 = clf_old.classify(img)
    assert p3.score == pytest.approx(1 - p3.confidence)


def test_ood_file_outside_bundle_is_refused(scored_bundle, tmp_path):
    from trashcam.edge.bundle import Bundle, BundleError
    from trashcam.edge.ood import load_for_variant

    d, _ = scored_bundle
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    b = Bundle.load(bad)
    b.metadata["calibration"]["ood_by_variant"]["tflite-int8"]["file"] = "../b/ood/tflite-int8.npz"
    with pytest.raises(BundleError, match="outside the bundle"):
        load_for_variant(b, "tflite-int8")


def test_bench_reports_score_cost_and_quality(scored_bundle, tmp_path):
    from trashcam.benchmarks.config import BenchConfig
    from trashcam.benchmarks.pipeline import run_benchmark
    from trashcam.benchmarks.report import format_table, to_markdown

    d, _ = scored_bundle
    r = run_benchmark(d, BenchConfig(variants=("tflite-int8",), threads=(1,), runs=5, warmup=1, e2e_images=4,
                                     isolate=False, record=False))
    u = r["variants"][0]["uncertainty"]
    assert u["kind"] == TINY_AUTO and u["val_flagged"] is not None and u["ece_after"] is not None
    c = u["cost"]
    assert c["ratio_p50"] > 0 and c["scored_ms"]["runs"] == 5
    assert 0 < c["ratio_p50_ci95"][0] <= c["ratio_p50_ci95"][1] and c["extra_us_p50"] is not None
    ut = r["variants"][0]["uncertainty_test"]
    assert ut["rule"] == TINY_AUTO and 0 <= ut["flagged"] <= 1 and 0 <= ut["ece_after"] <= 1
    assert "## Uncertainty score" in to_markdown(r)
    line = [ln for ln in format_table(r).splitlines() if ln.startswith("uncertainty score of tflite-int8 @ 1 thr")]
    assert len(line) == 1 and f"{TINY_AUTO}, per frame x" in line[0] and "of the images it was fitted on" in line[0]
    assert "of new known-class images (expected)" in line[0]
    assert "95 % CI" in line[0]


def test_slim_export_keeps_the_score(scored_bundle, tmp_path):
    from trashcam.edge.bundle import Bundle
    from trashcam.edge.runtime import Classifier

    d, _ = scored_bundle
    slim = Bundle.load(d).export_slim(tmp_path / "slim", "tflite-int8")
    assert "ood/tflite-int8.npz" in slim.metadata["files"]
    clf = Classifier(tmp_path / "slim", "tflite-int8", threads=1)
    assert clf.ood is not None and clf.ood.kind == TINY_AUTO


def test_open_set_experiment_runs_every_score_on_cached_features(tmp_path):
    """benchmarks/open_set.py from its features file (the backbone pass is what is skipped): every fold and score."""
    from trashcam.benchmarks import open_set

    rng = np.random.default_rng(4)
    d, classes = 24, ["a", "b", "c"]
    f = {"classes": np.array(classes)}
    for name, n, v in (("train", 30, 2), ("val", 12, 1), ("test", 12, 1)):
        y = np.repeat(np.arange(3), n)
        centre = np.eye(3, d)[y] * 4
        f[f"{name}_x"] = (np.abs(centre[:, None] + rng.normal(size=(len(y), v, d)))).astype(np.float32)
        f[f"{name}_layers"] = rng.normal(size=(len(y), sum(open_set.LAYER_DIMS))).astype(np.float32)
        f[f"{name}_y"] = y
    np.savez(tmp_path / "features-32px-2v-seed0.npz", **f)
    report = open_set.run("synthetic", tmp_path, image_size=32, views=2, seed=0, head_epochs=3)
    assert [r["held_out"] for r in report["folds"]] == classes
    assert set(report["summary"]) == set(open_set.SCORES)
    for s in open_set.SCORES:
        assert 0.0 <= report["summary"][s]["auroc"]["mean"] <= 1.0
    assert (tmp_path / "open_set.md").read_text().count("| a |") == 1


def held_out_class(folder, n: int, seed: int) -> None:
    """`n` random-noise JPEGs and one unreadable file: a class the fold model never trained on."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    folder.mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")


def test_tuned_open_set_measures_the_deployed_rule(scored_bundle, tmp_path):
    """benchmarks/open_set_tuned: the fold's INT8 model flags foreign images by the bundle's own score and
    threshold, and calibration never sees the held-out class (no --ood-data: nothing is chosen on it)."""
    from trashcam.benchmarks.open_set_tuned import fold_steps, markdown, measure, run_steps, summarise
    from trashcam.edge.runtime import Classifier

    d, _ = scored_bundle
    held_out_class(tmp_path / "gone", 6, seed=3)
    rec = measure(d, tmp_path, "gone", threads=1)
    assert rec["foreign_images"] == 6 and rec["foreign_skipped"] == 1 and rec["score"] == TINY_AUTO
    clf = Classifier(d, "tflite-int8", threads=1)
    flags = [clf.classify(tmp_path / "gone" / f"{i}.jpg").uncertain for i in range(6)]
    assert rec["foreign_flagged"] == pytest.approx(np.mean(flags))
    assert 0 <= rec["test_flagged"] <= 1 and 0 <= rec["auroc"] <= 1 and rec["test_images"] > 0
    other = {**rec, "held_out": "other", "foreign_flagged": 0.0, "test_flagged": 0.04}
    s = summarise([rec, other])
    assert s["worst_fold"] == "other" and s["foreign_flagged"]["mean"] == pytest.approx(rec["foreign_flagged"] / 2)
    assert "| **mean** |" in markdown([rec, other], s)
    steps = dict(fold_steps(tmp_path, "gone", tmp_path / "b", "quick", 1, tmp_path / "c", 1))
    assert steps["train"][steps["train"].index("--exclude-classes") + 1] == "gone"
    assert "--ood-data" not in steps["calibrate"]
    more = dict(fold_steps(tmp_path, "gone", tmp_path / "b", "quick", 1, tmp_path / "c", 1, ("--mixup-alpha", "0")))
    assert more["train"][-2:] == ["--mixup-alpha", "0"] and more["convert"] == steps["convert"]
    # a calibrated fold skips calibration unless --recalibrate forces it (a default changed, same fold models)
    mark = tmp_path / "ran"
    touch = [("calibrate", [sys.executable, "-c", f"open({str(mark)!r}, 'w')"])]
    assert run_steps(touch, d, tmp_path / "log", "gone") == {} and not mark.exists()
    assert set(run_steps(touch, d, tmp_path / "log", "gone", force=("calibrate",))) == {"calibrate"} and mark.exists()
    # a bundle calibrated on its test split (a refit) reports its in-distribution numbers cross-fitted
    refit = tmp_path / "refit"
    shutil.copytree(d, refit)
    meta = json.loads((refit / "metadata.json").read_text())
    meta["calibration"]["split"] = "test"
    (refit / "metadata.json").write_text(json.dumps(meta))
    r2 = measure(refit, tmp_path, "gone", threads=1)
    assert r2["calibrated_on"] == "test" and r2["test_flagged_in_sample"] == rec["test_flagged"]
    assert r2["foreign_flagged"] == rec["foreign_flagged"] and 0 <= r2["test_flagged"] <= 1
    assert "cross-fitted" in markdown([r2], summarise([r2]))


def test_field_foreign_measures_reviewed_foreign_images_on_new_ones_only(scored_bundle, tmp_path):
    """benchmarks/field_foreign: the held-out class's images split into new ones (measured) and a review pool
    (fitted)."""
    from trashcam.benchmarks.crossfit import flagged_crossfit
    from trashcam.benchmarks.field_foreign import fold, markdown, summarise

    d, _ = scored_bundle
    held_out_class(tmp_path / "gone", 12, seed=5)
    rec = fold(d, tmp_path, "gone", (2, 100), 0.05, threads=1)
    assert rec["new_images"] == 6 and rec["pool"] == 6
    got = {(r["score"], r["reviewed"]) for r in rec["rows"]}
    assert got == {("prototypes", 0), ("radius-mix", 0), ("neighbour-lite", 0), ("auto", 2), ("relative", 2),
                   ("auto", 6), ("relative", 6)}
    assert all(0 <= r["new_foreign_flagged"] <= 1 and 0 <= r["in_dist_flagged"] <= 1 for r in rec["rows"])
    s = summarise([rec, {**rec, "held_out": "other"}])
    assert len(s) == 7 and {x["score"] for x in s[:3]} == {"prototypes", "radius-mix", "neighbour-lite"}
    assert len(s[0]["per_fold"]) == 2
    assert "| relative | 6 |" in markdown([rec], summarise([rec]))
    share, _ = flagged_crossfit(np.arange(1000.0), 0.05)
    assert 0.02 < share < 0.08
    assert fold(d, tmp_path, "gone", (2, 100), 0.05, threads=1) == rec  # the second read comes from the cache
    assert (d.parent / "features_int8.npz").is_file()


def test_feature_power_and_synthetic_negatives_measure_without_foreign_images():
    """benchmarks/feature_power scores each power and k-means seed on cached fold outputs; synthetic_foreign's
    images are made of train images of more than one class, shaped like them."""
    from trashcam.benchmarks.feature_power import fold, markdown, powered, summarise, transform
    from trashcam.benchmarks.synthetic_foreign import IMAGE_KINDS, other_class_pairs

    rng = np.random.default_rng(3)
    np.testing.assert_allclose(powered(np.array([-4.0, 0.0, 9.0]), 0.5), [-2.0, 0.0, 3.0])
    blobs = np.abs(rng.normal(size=(3, 20))) * 3
    F = {"train_f": np.repeat(blobs, 30, 0) + np.abs(rng.normal(size=(90, 20))), "train_y": np.repeat([0, 1, 2], 30),
         "cal_f": np.repeat(blobs, 20, 0) + np.abs(rng.normal(size=(60, 20))),
         "foreign_f": np.abs(rng.normal(size=(25, 20))) * 3}
    rows = fold(F, (1.0, 0.5), (0, 1), 0.05)
    assert [(r["power"], r["seed"]) for r in rows] == [(1.0, 0), (1.0, 1), (0.5, 0), (0.5, 1)]
    s = summarise({"a": rows, "b": rows})
    assert [x["power"] for x in s] == [1.0, 0.5] and len(s[0]["by_seed"]) == 2 and set(s[0]["per_fold"]) == {"a", "b"}
    assert all(0 <= x["foreign_flagged_mean"] <= 1 for x in s) and "| 0.5 |" in markdown(s)
    centred = fold(F, ("centre", "react-centre"), (0,), 0.05, members=2)
    assert [r["power"] for r in centred] == ["centre", "react-centre"] and "| centre |" in markdown(summarise(
        {"a": centred}))
    np.testing.assert_allclose(transform(F["train_f"], "centre")(F["train_f"]).mean(0), 0, atol=1e-12)
    x, y = rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8), np.repeat([0, 1, 2], 4)
    i, j = other_class_pairs(y, 50, rng)
    assert np.all(y[i] != y[j])
    for make in IMAGE_KINDS.values():
        out = make(x, y, 5, rng)
        assert out.shape == (5, 32, 32, 3) and out.dtype == np.uint8


def test_subclass_loco_splits_classes_into_linked_clusters_and_sums_them_back(tmp_path):
    """subclass_loco links each class's images into k cluster folders (every image once, none copied), and maps a
    fold's cluster labels and probabilities back to parent classes."""
    from trashcam.benchmarks.subclass_loco import make_subclass_data, to_parents

    data = tmp_path / "data"
    for c in ("glass", "metal"):
        (data / c).mkdir(parents=True)
        for i in range(6):
            (data / c / f"{i}.jpg").write_bytes(b"x")

    def two_blobs(paths, size, threads):  # stands in for the frozen ImageNet features
        return np.array([[1.0, 0.1] if int(p.stem) < 3 else [0.1, 1.0] for p in paths]), list(paths)

    counts = make_subclass_data(data, tmp_path / "sub", 2, features=two_blobs)
    assert sorted(counts) == ["glass__0", "glass__1", "metal__0", "metal__1"] and set(counts.values()) == {3}
    linked = sorted(p.name for d in (tmp_path / "sub").glob("glass__*") for p in d.iterdir())
    assert linked == sorted(f"{i}.jpg" for i in range(6))
    assert all(p.is_symlink() for p in (tmp_path / "sub" / "metal__0").iterdir())
    assert make_subclass_data(data, tmp_path / "sub", 2, features=None) == counts  # reused, not recomputed
    labels = ["glass__0", "glass__1", "metal__0", "metal__1"]
    F = {"train_y": np.array([0, 1, 2, 3]), "cal_y": np.array([3, 0]),
         "cal_p": np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.3, 0.1, 0.1]]), "foreign_p": np.full((1, 4), 0.25)}
    P, parents = to_parents(F, labels)
    assert parents == ["glass", "metal"] and P["train_y"].tolist() == [0, 0, 1, 1] and P["cal_y"].tolist() == [1, 0]
    np.testing.assert_allclose(P["cal_p"], [[0.3, 0.7], [0.8, 0.2]])
    np.testing.assert_allclose(P["foreign_p"], [[0.5, 0.5]])


def test_flag_frame_reads_features_only_for_a_feature_score():
    """The per-frame rule de-quantises the features output only when the score uses it (msp does not)."""
    from trashcam.edge.ood import OodScore
    from trashcam.edge.prototypes import Prototypes
    from trashcam.edge.runtime import flag_frame

    class Engine:
        reads = 0

        def features(self):
            Engine.reads += 1
            return np.array([[1.0, 0.0]], np.float32)

    probs = np.array([0.7, 0.3], np.float32)
    assert flag_frame(OodScore("msp", 0.2), 0.0, Engine(), probs) == (pytest.approx(0.3), True)
    assert flag_frame(None, 0.8, Engine(), probs) == (pytest.approx(0.3), True)
    assert Engine.reads == 0
    protos = OodScore("prototypes", 0.5, Prototypes(np.array([[1.0, 0.0], [0.0, 1.0]])))
    assert flag_frame(protos, 0.0, Engine(), probs) == (pytest.approx(0.0, abs=1e-6), False) and Engine.reads == 1


def test_neighbour_lite_bundle_runs_its_int8_model_on_the_device_path(scored_bundle, tmp_path, monkeypatch, caplog):
    """Calibrated with neighbour-lite, the INT8 variant's arrays file carries the int8 score model; Classifier,
    edge-run's path, scores every frame through it, as the threshold was fitted, and edge-bench says so. The tiny
    fixture's features barely vary, so int8 rounding swamps them: by default the model is refused (NumPy, a
    warning); with the agreement check relaxed the device path is the model's."""
    from trashcam.benchmarks.config import BenchConfig
    from trashcam.benchmarks.pipeline import run_benchmark
    from trashcam.benchmarks.report import format_table
    from trashcam.calibration.config import CalibrationConfig
    from trashcam.calibration.pipeline import calibrate_bundle
    from trashcam.edge import score_model
    from trashcam.edge.runtime import Classifier

    cfg = CalibrationConfig(plots=False, threads=1, variants=("tflite-int8",), ood_score="neighbour-lite")
    refused = tmp_path / "refused"
    shutil.copytree(scored_bundle[0], refused)
    with caplog.at_level("WARNING"):
        calibrate_bundle(refused, cfg)
    assert "using NumPy" in caplog.text and "score_model" not in np.load(refused / "ood/tflite-int8.npz").files
    assert Classifier(refused, "tflite-int8", threads=1).ood.stats.score_model is None

    d = tmp_path / "nl"
    shutil.copytree(scored_bundle[0], d)
    monkeypatch.setattr(score_model, "MIN_AGREEMENT", -1.0)
    rep = calibrate_bundle(d, cfg)
    assert rep["variants"]["tflite-int8"]["uncertainty"]["per_frame"] == "int8 tflite"  # edge-calibrate says so
    assert "score_model" in np.load(d / "ood/tflite-int8.npz").files
    clf = Classifier(d, "tflite-int8", threads=1)
    assert clf.ood.kind == "neighbour-lite" and clf.ood.stats.score_model is not None
    img = np.random.default_rng(3).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    p = clf.classify(img)
    assert p.score == pytest.approx(float(clf.ood.stats.score(clf.engine.features())[0]), abs=1e-6)
    r = run_benchmark(d, BenchConfig(variants=("tflite-int8",), threads=(1,), runs=5, warmup=1, e2e_images=4,
                                     isolate=False, record=False))
    assert r["variants"][0]["uncertainty"]["per_frame"] == "int8 tflite"
    assert "neighbour-lite (int8 model), per frame x" in format_table(r)
    monkeypatch.setattr(score_model, "PROBE_TOLERANCE", -1.0)  # a device whose runtime misses the probe
    with caplog.at_level("WARNING"):
        r = run_benchmark(d, BenchConfig(variants=("tflite-int8",), threads=(1,), runs=3, warmup=1, e2e_images=2,
                                         isolate=False, record=False))
    assert r["variants"][0]["uncertainty"]["per_frame"] == "numpy float32"
    assert "neighbour-lite, per frame x" in format_table(r)


def test_neighbour_max_reads_the_maxima_output_and_old_models_fall_back(scored_bundle, tmp_path):
    """--ood-score neighbour-max fits neighbour-lite on the unit features beside the unit maxima; a frame's score is
    that of the same two outputs; an engine without the maxima output (a model converted before it) falls back to
    max-probability instead of scoring the wrong vector."""
    from trashcam.calibration.config import CalibrationConfig
    from trashcam.calibration.pipeline import calibrate_bundle
    from trashcam.edge.ood import both
    from trashcam.edge.runtime import Classifier, uncertainty_rule

    d = tmp_path / "nm"
    shutil.copytree(scored_bundle[0], d)
    rep = calibrate_bundle(d, CalibrationConfig(plots=False, threads=1, variants=("tflite-int8",),
                                                ood_score="neighbour-max"))
    u = rep["variants"]["tflite-int8"]["uncertainty"]
    assert u["kind"] == "neighbour-max" and u["candidates"]["neighbour-max"]["val_flagged"] <= 0.1
    clf = Classifier(d, "tflite-int8", threads=1)
    assert clf.ood.kind == "neighbour-max" and clf.ood.stats.projection.basis.shape[1] == 2 * 8
    img = np.random.default_rng(4).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    p = clf.classify(img)
    v = both(clf.engine.features(), clf.engine.features_max())
    assert p.score == pytest.approx(float(clf.ood.stats.score(v)[0]), rel=1e-5)  # float32 per frame, float64 here
    assert p.uncertain == (p.score > clf.ood.threshold)

    class OldEngine:  # features, no maxima
        has_features, has_features_max = True, False
    ood, _ = uncertainty_rule(clf.bundle, "tflite-int8", OldEngine())
    assert ood is None
