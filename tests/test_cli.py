"""The ``skad`` command, run in-process on tiny image folders and fake ELPV data."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from _helpers import make_tiny_images
from PIL import Image
from sklearn.utils import Bunch

import skad
from skad import cli
from skad.persistence import read_header

TINY_OPTIONS = ["--backbone", "test_efficientnet", "--no-pretrained", "--image-size", "32",
                "--epochs", "1", "--steps", "2", "--batch-size", "8", "--device", "cpu",
                "--seed", "0"]
ADL_TINY = TINY_OPTIONS + ["--detector", "adl", "-p", "fuse_channels=8", "-p", "n_reference=500"]
FROZEN_TINY = TINY_OPTIONS[:3] + ["--image-size", "32", "--batch-size", "8", "--device", "cpu",
                                  "--seed", "0"]


def _write_images(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """good/ (16 normal images) + crack/ (3 anomalies), 32 x 32 RGB."""
    root = tmp_path_factory.mktemp("parts")
    X, is_anomaly, _ = make_tiny_images(n_normal=16, n_anomalous=3, size=32, seed=2)
    _write_images(root / "good", X[~is_anomaly])
    _write_images(root / "crack", X[is_anomaly])
    return root


@pytest.fixture(scope="module")
def model(tree, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.skad"
    assert cli.main(["fit", "--data", str(tree), "--detector", "adl", "--out", str(path),
                     "--contamination", "0.1", *ADL_TINY]) == 0
    return path


def _error(capsys, argv):
    """A user error: exit status 2 (argparse's), one ``skad <cmd>: error:`` line, no traceback."""
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.rpartition("\r")[2].startswith(f"skad {argv[0]}: error: ")  # after progress bars
    assert "Traceback" not in err
    return err


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"skad {skad.__version__}"
    assert cli.main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_module_entry_point_runs_without_torch_import():
    code = ("import sys; from skad.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"  # `skad --help` stays fast
    result = subprocess.run([sys.executable, "-m", "skad.cli", "--version"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and skad.__version__ in result.stdout


def test_fit_saves_a_model_with_tree_labels_and_options(model, tree):
    header = read_header(model)
    assert header["class"] == "skad.detectors._adl.AdaptiveDeviationDetector"
    assert header["metadata"]["n_images"] == 19
    assert header["metadata"]["n_labeled"] == 3  # crack/ are labelled anomalies
    det = skad.persistence.load(model)
    params = det.get_params()
    assert (params["image_size"], params["max_epochs"], params["fuse_channels"]) == (32, 1, 8)
    assert params["backbone"] == "test_efficientnet" and params["pretrained"] is False
    assert params["contamination"] == 0.1 and params["random_state"] == 0


def test_score_writes_scores_predictions_labels_and_maps(model, tree, tmp_path, capsys):
    out, maps = tmp_path / "scores.csv", tmp_path / "maps"
    assert cli.main(["score", "--model", str(model), "--data", str(tree), "--out", str(out),
                     "--maps", str(maps), "--batch-size", "5"]) == 0
    df = pd.read_csv(out)
    assert list(df.columns) == ["path", "anomaly_score", "prediction", "label", "defect_type"]
    assert len(df) == 19 and np.isfinite(df.anomaly_score).all()
    assert set(df.prediction) <= {-1, 1}
    assert (df.label == -1).sum() == 3 and set(df.defect_type) == {"good", "crack"}
    det = skad.persistence.load(model)
    np.testing.assert_allclose(df.anomaly_score, -det.score_samples(list(df.path)), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_array_equal(df.prediction, det.predict(list(df.path)))
    pngs = sorted(p.relative_to(maps).as_posix() for p in maps.rglob("*.png"))
    assert pngs == sorted(f"{d}/{i:03d}.png" for d, n in (("good", 16), ("crack", 3))
                          for i in range(n))
    assert Image.open(maps / "crack" / "000.png").size == (32, 32)
    assert (maps / "scale.txt").is_file()
    printed = capsys.readouterr().out
    assert "Scored 19 images" in printed and "AUROC" in printed


def test_fit_plain_folder_with_labeled_folder_and_devnet(tree, tmp_path, capsys):
    out = tmp_path / "devnet.skad"
    assert cli.main(["fit", "--data", str(tree / "good"), "--labeled", str(tree / "crack"),
                     "--detector", "devnet", "--out", str(out), *TINY_OPTIONS]) == 0
    header = read_header(out)
    assert header["class"].endswith("DeviationNetworkDetector")
    assert (header["metadata"]["n_images"], header["metadata"]["n_labeled"]) == (19, 3)
    scores = tmp_path / "plain.csv"
    assert cli.main(["score", "--model", str(out), "--data", str(tree / "crack"),
                     "--out", str(scores)]) == 0
    df = pd.read_csv(scores)
    assert list(df.columns) == ["path", "anomaly_score", "prediction"] and len(df) == 3


def test_fit_dra_with_an_ablation_setting_and_score(tree, tmp_path):
    out = tmp_path / "dra.skad"
    assert cli.main(["fit", "--data", str(tree), "--detector", "dra", "--out", str(out),
                     "-p", "heads=('seen', 'pseudo', 'residual')", "-p", "n_reference=500",
                     *TINY_OPTIONS]) == 0
    header = read_header(out)
    assert header["class"] == "skad.detectors._dra.DisentangledResidualDetector"
    det = skad.persistence.load(out)
    assert det.heads_ == ("seen", "pseudo", "residual") and det.steps_per_epoch == 2
    assert len(det.reference_indices_) == 5 and det.reference_images_.shape == (5, 3, 32, 32)
    scores = tmp_path / "dra.csv"
    assert cli.main(["score", "--model", str(out), "--data", str(tree / "crack"),
                     "--out", str(scores)]) == 0
    df = pd.read_csv(scores)
    np.testing.assert_allclose(df.anomaly_score, det.head_scores(list(df.path))["score"],
                               rtol=1e-5, atol=1e-6)


def test_fit_training_free_patchcore_and_refuse_training_options(tree, tmp_path, capsys):
    out = tmp_path / "patchcore.skad"
    frozen = TINY_OPTIONS[:3] + ["--image-size", "32", "--batch-size", "8", "--device", "cpu",
                                 "--seed", "0"]
    assert cli.main(["fit", "--data", str(tree), "--detector", "patchcore", "--out", str(out),
                     "-p", "coreset_ratio=0.5", *frozen]) == 0
    assert "Fitting PatchCoreDetector on 19 images" in capsys.readouterr().out
    det = skad.persistence.load(out)
    assert type(det).__name__ == "PatchCoreDetector" and det.coreset_ratio == 0.5
    assert len(det.module_.memory_bank) == 8 * 16  # half of the 16 unlabelled x 16 patches
    scores = tmp_path / "patchcore.csv"
    assert cli.main(["score", "--model", str(out), "--data", str(tree),
                     "--out", str(scores)]) == 0
    assert np.isfinite(pd.read_csv(scores).anomaly_score).all()
    for detector, flag in (("patchcore", "--epochs"), ("padim", "--lr"), ("padim", "--steps")):
        err = _error(capsys, ["fit", "--data", str(tree), "--detector", detector, *frozen,
                              flag, "1"])
        assert f"drop {flag}" in err and "training-free" in err


def test_mvtec_style_category_uses_train_and_test(tmp_path, capsys, monkeypatch):
    X, is_anomaly, _ = make_tiny_images(n_normal=6, n_anomalous=2, size=32, seed=3)
    _write_images(tmp_path / "bottle" / "train" / "good", X[~is_anomaly])
    _write_images(tmp_path / "bottle" / "test" / "good", X[~is_anomaly][:2])
    _write_images(tmp_path / "bottle" / "test" / "broken", X[is_anomaly])
    seen = {}

    def fake_fit(self, X, y=None):
        seen["X"], seen["y"] = list(X), np.asarray(y)
        raise ValueError("stop after collecting the data")

    monkeypatch.setattr(skad.AdaptiveDeviationDetector, "fit", fake_fit)
    cli.main(["fit", "--data", str(tmp_path / "bottle"), *ADL_TINY])
    assert len(seen["X"]) == 6 and all("/train/good/" in p for p in seen["X"])
    assert (seen["y"] == 1).all()
    data = cli._collect(tmp_path / "bottle", option="--data", split="test")
    assert data.root == tmp_path / "bottle" / "test"
    assert len(data.paths) == 4 and sorted(set(data.defect)) == ["broken", "good"]


def test_error_for_missing_and_empty_folders(tmp_path, capsys):
    err = _error(capsys, ["fit", "--data", str(tmp_path / "nope")])
    assert "--data" in err and "is not a folder" in err
    (tmp_path / "empty").mkdir()
    err = _error(capsys, ["fit", "--data", str(tmp_path / "empty")])
    assert "contains no images" in err
    (tmp_path / "tree" / "good").mkdir(parents=True)
    (tmp_path / "tree" / "crack").mkdir()
    _write_images(tmp_path / "tree" / "crack", make_tiny_images(2, 0)[0])
    err = _error(capsys, ["fit", "--data", str(tmp_path / "tree")])
    assert "good" in err and "contains no images" in err


def test_error_for_unreadable_image_names_the_file(tree, tmp_path, capsys):
    data = tmp_path / "data"
    _write_images(data, make_tiny_images(4, 0)[0])
    (data / "broken.png").write_text("not an image")
    err = _error(capsys, ["fit", "--data", str(data), *ADL_TINY])
    assert "broken.png" in err and "cannot be read as images" in err


def test_error_for_mostly_labelled_training_data(tree, capsys):
    err = _error(capsys, ["fit", "--data", str(tree / "crack"), "--labeled", str(tree / "good"),
                          *ADL_TINY])
    assert "16 of 19 training images are labelled anomalies" in err


def test_errors_for_detector_options(tree, capsys):
    err = _error(capsys, ["fit", "--data", str(tree), "-p", "nonsense=1", *ADL_TINY])
    assert "no parameter 'nonsense'" in err and "fuse_channels" in err
    err = _error(capsys, ["fit", "--data", str(tree), "-p", "lam", *ADL_TINY])
    assert "NAME=VALUE" in err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "--data", str(tree), "--detector", "nope"])
    assert exit_info.value.code == 2


def test_score_refuses_models_from_another_skad_version(model, tree, tmp_path, capsys):
    old = tmp_path / "old.skad"
    content = model.read_bytes()
    magic, header, payload = content.split(b"\n", 2)
    header = json.loads(header)
    header["versions"]["skad"] = "0.0.1"
    old.write_bytes(magic + b"\n" + json.dumps(header).encode() + b"\n" + payload)
    out = tmp_path / "s.csv"
    err = _error(capsys, ["score", "--model", str(old), "--data", str(tree), "--out", str(out)])
    assert "skad 0.0.1" in err and "--trusted" in err and not out.exists()
    with pytest.warns(UserWarning, match="0.0.1"):
        assert cli.main(["score", "--model", str(old), "--data", str(tree), "--out", str(out),
                         "--trusted"]) == 0
    assert len(pd.read_csv(out)) == 19
    not_a_model = tmp_path / "x.joblib"
    not_a_model.write_bytes(b"\x80\x04K\x01.")
    err = _error(capsys, ["score", "--model", str(not_a_model), "--data", str(tree)])
    assert "not a skad model file" in err


def test_error_for_out_folder_and_maps_file_before_any_work(model, tree, tmp_path, capsys):
    (tmp_path / "dir").mkdir()
    err = _error(capsys, ["fit", "--data", str(tree), "--out", str(tmp_path / "dir"),
                          *ADL_TINY])
    assert "--out" in err and "is a folder; pass a file name" in err
    err = _error(capsys, ["score", "--model", str(model), "--data", str(tree),
                          "--out", str(tmp_path / "dir")])
    assert "--out" in err and "is a folder" in err
    (tmp_path / "maps.png").write_bytes(b"")
    err = _error(capsys, ["score", "--model", str(model), "--data", str(tree),
                          "--out", str(tmp_path / "s.csv"), "--maps", str(tmp_path / "maps.png")])
    assert "--maps" in err and "is a file; pass a folder" in err
    assert not (tmp_path / "s.csv").exists()
    err = _error(capsys, ["score", "--model", str(tmp_path / "dir"), "--data", str(tree)])
    assert "is a folder, not a model file" in err


def test_every_image_is_decoded_before_training(tmp_path, capsys):
    from test_io import garbage_pixels_png

    data = tmp_path / "data"
    _write_images(data, make_tiny_images(6, 0)[0])
    garbage_pixels_png(data / "garbage.png")  # checksums valid, pixel data not
    out = tmp_path / "model.skad"
    err = _error(capsys, ["fit", "--data", str(data), "--out", str(out), *ADL_TINY,
                          "--steps", "1"])
    assert "garbage.png" in err and "cannot be read as images" in err
    assert not out.exists()


def test_skipped_files_are_counted_and_listed_with_verbose(tree, tmp_path, capsys):
    data = tmp_path / "data"
    _write_images(data, make_tiny_images(6, 0)[0])
    Image.fromarray(make_tiny_images(1, 0)[0][0]).save(data / "anim.gif")
    (data / ".DS_Store").write_bytes(b"\0")
    (data / "old").mkdir()
    out = tmp_path / "m.skad"
    frozen = ["--backbone", "test_efficientnet", "--no-pretrained", "--image-size", "32",
              "--device", "cpu"]
    assert cli.main(["fit", "--data", str(data), "--detector", "padim", "--out", str(out),
                     "-p", "n_features=16", *frozen]) == 0
    printed = capsys.readouterr().out
    assert "6 images read, 3 skipped: " in printed and "(--verbose lists them)" in printed
    assert all(f"1 {why}" in printed for why in (".gif", "hidden", "folder"))
    assert cli.main(["score", "--model", str(out), "--data", str(data), "--verbose",
                     "--out", str(tmp_path / "s.csv")]) == 0
    printed = capsys.readouterr().out
    assert "6 images read, 3 skipped" in printed
    assert f"skipped {data / 'anim.gif'} (.gif)" in printed
    assert f"skipped {data / '.DS_Store'} (hidden)" in printed
    assert f"skipped {data / 'old'} (folder)" in printed


def test_mixed_modes_and_bit_depths_fit_and_score(tmp_path, capsys):
    from test_images import _write_mixed_folder

    paths = _write_mixed_folder(tmp_path / "mixed")  # gray, RGB, RGBA, palette, 16-bit, float
    out, scores = tmp_path / "m.skad", tmp_path / "s.csv"
    assert cli.main(["fit", "--data", str(tmp_path / "mixed"), "--detector", "adl",
                     "--out", str(out), *ADL_TINY]) == 0
    assert cli.main(["score", "--model", str(out), "--data", str(tmp_path / "mixed"),
                     "--out", str(scores)]) == 0
    df = pd.read_csv(scores)
    assert len(df) == len(paths) == 6 and np.isfinite(df.anomaly_score).all()
    assert "6 images read" in capsys.readouterr().out


# --------------------------------------------------------------------------- demo


def _fake_elpv(n_normal=40, n_anomalous=14, n_uncertain=4, size=48):
    X, is_anomaly, _ = make_tiny_images(n_normal=n_normal + n_uncertain,
                                        n_anomalous=n_anomalous, size=size, seed=4)
    probability = np.r_[np.zeros(n_normal), np.full(n_uncertain, 1 / 3), np.ones(n_anomalous)]
    return Bunch(images=X[..., 0].copy(), probability=probability,
                 target=np.where(probability == 0, 1, -1))


def test_demo_on_fake_elpv_prints_table_and_writes_report(tmp_path, monkeypatch, capsys):
    fake = _fake_elpv()
    monkeypatch.setattr(cli, "_load_elpv", lambda: fake)
    out = tmp_path / "report"
    assert cli.main(["demo", "--out", str(out), "--n-labeled", "2",
                     *TINY_OPTIONS]) == 0
    printed = capsys.readouterr().out
    assert "AdaptiveDeviationDetector (1x2 steps)" in printed
    assert "nearest-neighbour patch distance (no labels)" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "overlays_highest.png", "overlays_lowest.png", "results.txt", "score_histograms.png",
        "scores.csv"]
    df = pd.read_csv(out / "scores.csv")
    # 40 normals -> 10 test normals; 14 anomalies - 2 labelled - 3 contaminants -> 9 test
    assert len(df) == 19 and (df.label == -1).sum() == 9
    assert list(df.columns) == ["index", "label", "anomaly_score", "reference_score",
                                "elpv_index"]
    # elpv_index points back into the dataset: labels agree, no uncertain (1/3) cell
    assert (np.where(fake.probability[df.elpv_index] == 0, 1, -1) == df.label).all()
    assert (np.asarray(Image.open(out / "overlays_highest.png")).std() > 10)
    assert "AUROC" in (out / "results.txt").read_text()


def test_demo_defaults_are_the_best_known_elpv_settings():
    args = cli.build_parser().parse_args(["demo"])
    det = cli.make_detector("adl", args)
    assert (det.image_size, det.max_epochs, det.steps_per_epoch, det.lr, det.batch_size) == (
        128, 5, 40, 1e-3, 16)
    assert (args.seed, args.split_contamination, args.n_labeled, args.out) == (
        42, 0.1, 10, "skad-demo-report")
    assert det.contamination == "auto"  # the split's contamination is not the threshold's


# --------------------------------------------------------------------------- benchmark


def test_benchmark_forwards_arguments_and_plots_elpv(tmp_path, monkeypatch, capsys):
    from skad.benchmarks import elpv, throughput

    calls = []

    def fake_elpv_main(argv=None):
        calls.append(("elpv", argv))
        prefix = elpv.build_parser().parse_args(argv).out
        rows = [{"model": m, "setting": "general", "contamination": c, "n_labeled": 10,
                 "auroc_mean": a - c, "auroc_std": 0.02}
                for m, a in (("ADL full", 0.8), ("NN reference", 0.86)) for c in (0.0, 0.1)]
        pd.DataFrame(rows).to_csv(f"{prefix}.csv", index=False)

    monkeypatch.setattr(elpv, "main", fake_elpv_main)
    monkeypatch.setattr(throughput, "main", lambda argv=None: calls.append(("tp", argv)))
    prefix = tmp_path / "results" / "elpv"
    prefix.parent.mkdir()
    assert cli.main(["benchmark", "elpv", "--seeds", "1", "--out", str(prefix)]) == 0
    assert cli.main(["benchmark", "throughput", "--repeats", "1"]) == 0
    assert calls == [("elpv", ["--seeds", "1", "--out", str(prefix)]),
                     ("tp", ["--repeats", "1"])]
    png = Image.open(f"{prefix}_auroc.png")
    assert png.size[0] > 300 and np.asarray(png).std() > 10


def test_fit_defaults_to_a_detector_that_fits_on_a_cpu_and_help_shows_real_defaults(capsys):
    args = cli.build_parser().parse_args(["fit", "--data", "parts"])
    assert args.detector == "padim"  # training-free: the 'Which detector?' page's pick
    with pytest.raises(SystemExit):
        cli.main(["fit", "--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in " ".join(text.split())
    assert "default: padim" in text and "(default: the detector's)" in " ".join(text.split())


def test_score_at_a_given_threshold_or_one_calibrated_on_good_images(model, tree, tmp_path,
                                                                       capsys):
    plain, fixed, calibrated = (tmp_path / f"{n}.csv" for n in ("plain", "fixed", "cal"))
    assert cli.main(["score", "--model", str(model), "--data", str(tree),
                     "--out", str(plain)]) == 0
    scores = pd.read_csv(plain).anomaly_score.to_numpy()
    threshold = float(np.sort(scores)[-4] - 1e-6)  # flags the 4 highest
    assert cli.main(["score", "--model", str(model), "--data", str(tree), "--out", str(fixed),
                     "--threshold", repr(threshold)]) == 0
    np.testing.assert_array_equal(pd.read_csv(fixed).prediction,
                                  np.where(scores > threshold, -1, 1))
    assert (pd.read_csv(fixed).prediction == -1).sum() == 4

    capsys.readouterr()
    assert cli.main(["score", "--model", str(model), "--data", str(tree), "--out",
                     str(calibrated), "--max-fpr", "0.25", "--calibration", str(tree)]) == 0
    printed = capsys.readouterr().out
    assert "from 16 good images" in printed  # the tree's good/ only: labels are respected
    from skad.thresholds import calibrate

    good = sorted(str(p) for p in (tree / "good").glob("*.png"))
    det = calibrate(skad.persistence.load(model), good, max_fpr=0.25)
    df = pd.read_csv(calibrated)
    np.testing.assert_array_equal(df.prediction, det.predict(list(df.path)))
    flagged_good = int((df.prediction[df.label == 1] == -1).sum())
    assert flagged_good == det.calibration_["false_alarms"] == 3  # floor(0.25 * 17) - 1


def test_threshold_option_errors_name_the_fix(model, tree, capsys):
    err = _error(capsys, ["score", "--model", str(model), "--data", str(tree),
                          "--max-fpr", "0.01"])
    assert "--max-fpr needs --calibration DIR" in err
    err = _error(capsys, ["score", "--model", str(model), "--data", str(tree),
                          "--calibration", str(tree)])
    assert "--calibration needs --max-fpr" in err
    err = _error(capsys, ["score", "--model", str(model), "--data", str(tree),
                          "--max-fpr", "1.5", "--calibration", str(tree)])
    assert "--max-fpr must be in (0, 1)" in err
    with pytest.raises(SystemExit):  # argparse: not allowed with argument --threshold
        cli.main(["score", "--model", str(model), "--data", str(tree), "--threshold", "1",
                  "--max-fpr", "0.01", "--calibration", str(tree)])
    assert "not allowed with" in capsys.readouterr().err


def test_a_saved_pipeline_scores_and_maps(tree, tmp_path):
    from sklearn.pipeline import make_pipeline

    from skad import ContaminationInjector, PatchCoreDetector
    from skad.persistence import save
    from skad.pipeline import localize

    X, is_anomaly, _ = make_tiny_images(n_normal=16, n_anomalous=3, size=32, seed=2)
    pipe = make_pipeline(
        ContaminationInjector(X[is_anomaly], contamination=0.1, random_state=0),
        PatchCoreDetector(backbone="test_efficientnet", pretrained=False, image_size=32,
                          coreset_ratio=0.5, device="cpu", random_state=0),
    ).fit(X[~is_anomaly], np.ones(16, dtype=int))
    save(pipe, tmp_path / "pipe.skad")
    out, maps = tmp_path / "pipe.csv", tmp_path / "maps"
    assert cli.main(["score", "--model", str(tmp_path / "pipe.skad"), "--data", str(tree),
                     "--out", str(out), "--maps", str(maps)]) == 0
    df = pd.read_csv(out)
    np.testing.assert_allclose(df.anomaly_score, -pipe.score_samples(list(df.path)),
                               rtol=1e-5)
    assert len(list(maps.rglob("*.png"))) == 19
    assert localize(pipe, list(df.path[:1]))[0].shape == (32, 32)


def test_export_writes_an_onnx_model_with_skads_scores(tree, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    model, onnx_file = tmp_path / "padim.skad", tmp_path / "padim.onnx"
    assert cli.main(["fit", "--data", str(tree), "--out", str(model), "-p", "n_features=8",
                     *FROZEN_TINY]) == 0
    assert cli.main(["export", "--model", str(model), "--out", str(onnx_file)]) == 0
    assert "Exported PaDiMDetector" in capsys.readouterr().out
    det = skad.persistence.load(model)
    X, _, _ = make_tiny_images(n_normal=5, n_anomalous=2, size=32, seed=4)
    images = np.ascontiguousarray(X.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    score = session.run(None, {"images": images})[0]
    np.testing.assert_allclose(score, -det.score_samples(X), rtol=1e-4)
    err = _error(capsys, ["export", "--model", str(model), "--out", str(tmp_path)])
    assert "--out" in err and "is a folder" in err
