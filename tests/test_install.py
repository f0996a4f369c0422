"""A fresh install works: declared dependencies, optional extras, the main job end to end.

The runtime-only checks run skad in a second interpreter that sees only the
distributions in the closure of ``pyproject.toml``'s ``dependencies`` (see
``tests/_runtime_only.py``), which is what ``pip install skad`` gives: a
default code path that needs an undeclared package fails here, even when the
package happens to be installed in the test environment.
"""

import importlib.metadata as md
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _helpers import make_tiny_images
from _runtime_only import REPO, extra_modules, runtime_only_path
from PIL import Image

pytest.importorskip("tomllib", reason="reads pyproject.toml with Python 3.11's tomllib")


def _run(args, env_path=None, timeout=600, **env):
    environ = {**os.environ, "OMP_NUM_THREADS": "2", **env}
    if env_path is not None:
        environ["PYTHONPATH"] = os.pathsep.join([str(env_path), str(REPO)])
    else:
        environ["PYTHONPATH"] = os.pathsep.join(
            [p for p in [str(REPO), environ.get("PYTHONPATH")] if p])
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=environ, cwd=REPO)


@pytest.fixture(scope="module")
def runtime_only_report(tmp_path_factory):
    """Import every skad module and fit every detector with only the runtime dependencies."""
    site = runtime_only_path(tmp_path_factory.mktemp("runtime-only-site"))
    proc = _run(["-S", str(REPO / "tests" / "_runtime_only.py"), "--fit"], env_path=site)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_runtime_only_interpreter_sees_no_extra(runtime_only_report):
    # the check is only worth something if the second interpreter really lacks the extras
    assert runtime_only_report["site_packages_on_path"] == []
    assert Path(runtime_only_report["skad_file"]).resolve().parent == REPO / "skad"
    assert not {"matplotlib", "pytest", "hypothesis", "elpv_dataset"} & {
        m.partition(".")[0] for m in runtime_only_report["modules"]}


def test_every_module_imports_with_runtime_dependencies_only(runtime_only_report):
    assert runtime_only_report["import_errors"] == {}
    # the walk reached the modules that pull in the runtime stack
    assert {"torch", "skorch", "timm", "sklearn"} <= {
        m.partition(".")[0] for m in runtime_only_report["modules"]}


def test_every_detector_fits_with_defaults_and_runtime_dependencies_only(runtime_only_report):
    import skad

    detectors = {n for n in skad.__all__ if n.endswith("Detector")}
    assert runtime_only_report["fit_errors"] == {}
    assert set(runtime_only_report["fits"]) == detectors
    for name, fit in runtime_only_report["fits"].items():
        assert fit["finite"], name
        assert fit["n_scores"] == 12 and fit["maps_shape"] == [2, 32, 32], name
    # the detectors with synthesis really used their default, the built-in textures
    assert runtime_only_report["fits"]["AdaptiveDeviationDetector"]["anomaly_source"] == "None"
    assert runtime_only_report["fits"]["MultiCueDetector"]["anomaly_source"] == "None"


def test_importing_skad_loads_no_optional_package():
    proc = _run([str(REPO / "tests" / "_runtime_only.py")])
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["import_errors"] == {}
    loaded = {m.partition(".")[0] for m in report["modules"]}
    optional = extra_modules()
    assert {"matplotlib", "pytest", "hypothesis"} <= optional  # installed here, by the extras
    assert loaded & optional == set()


def test_console_script_is_the_cli_main():
    (script,) = md.entry_points(group="console_scripts", name="skad")
    assert script.value == "skad.cli:main"


# ----------------------------------------------------------------- optional extras


def test_plotting_without_matplotlib_names_the_plot_extra(monkeypatch):
    from skad.plotting import plot_overlay

    for module in ("matplotlib", "matplotlib.pyplot"):  # even when already imported
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(ImportError, match=r'pip install "skad\[plot\]"'):
        plot_overlay(np.zeros((8, 8)), np.zeros((8, 8)))


def test_report_figures_without_matplotlib_name_the_plot_extra(monkeypatch, tmp_path):
    from skad import _report

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r'skad\[plot\]'):
        _report.save_overlays(tmp_path / "o.png", [np.zeros((8, 8))], [np.zeros((8, 8))], ["a"])


def test_load_elpv_without_the_data_package_names_the_bench_extra(monkeypatch):
    from skad.datasets import load_elpv

    monkeypatch.setitem(sys.modules, "elpv_dataset", None)
    with pytest.raises(ImportError, match=r"'elpv-dataset'.*pip install \"skad\[bench\]\""):
        load_elpv()


def test_demo_without_the_data_package_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    from skad import cli

    monkeypatch.setitem(sys.modules, "elpv_dataset", None)
    assert cli.main(["demo", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skad demo: error: load_elpv needs") and 'skad[bench]' in err


def test_benchmarks_without_tabulate_fail_before_any_work(monkeypatch, tmp_path):
    import skad.datasets
    from skad.benchmarks import elpv, throughput

    def no_work():
        raise AssertionError("the benchmark started working before checking its extra")

    monkeypatch.setattr(skad.datasets, "load_elpv", no_work)
    monkeypatch.setattr(np.random, "RandomState", no_work)
    monkeypatch.setitem(sys.modules, "tabulate", None)
    for main in (elpv.main, throughput.main):
        with pytest.raises(ImportError, match=r"'tabulate'.*skad\[bench\]"):
            main(["--out", str(tmp_path / "out")])


# -------------------------------------------------------------------- the main job


def _write_fake_elpv(root, n_normal=40, n_uncertain=4, n_anomalous=16, size=48):
    """An ``elpv_dataset`` package laid out as the real one: data/labels.csv + images/."""
    package = root / "elpv_dataset"
    (package / "data" / "images").mkdir(parents=True)
    (package / "__init__.py").write_text('"""Fake ELPV cells for tests."""\n')
    X, _, _ = make_tiny_images(n_normal=n_normal + n_uncertain, n_anomalous=n_anomalous,
                               size=size, seed=7)
    probability = np.r_[np.zeros(n_normal), np.full(n_uncertain, 1 / 3), np.ones(n_anomalous)]
    lines = []
    for i, (image, p) in enumerate(zip(X, probability)):
        name = f"images/cell{i + 1:04d}.png"
        Image.fromarray(image[..., 0]).save(package / "data" / name)
        lines.append(f"{name}  {p:.16f}  {'mono' if i % 2 else 'poly'}")
    (package / "data" / "labels.csv").write_text("\n".join(lines) + "\n")
    return probability


def test_skad_demo_runs_end_to_end_on_a_fake_elpv(tmp_path):
    """``python -m skad demo`` with its real defaults but size and budget: data package,
    offline pretrained EfficientNet-Lite0, ADL with built-in textures, reference, report."""
    _write_fake_elpv(tmp_path / "site")
    out = tmp_path / "report"
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(REPO)])}
    proc = subprocess.run(
        [sys.executable, "-m", "skad", "demo", "--image-size", "32", "--epochs", "1",
         "--steps", "2", "--batch-size", "8", "--n-labeled", "4", "--device", "cpu",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "2", **env})
    assert proc.returncode == 0, proc.stderr[-4000:]
    printed = proc.stdout
    for step in range(1, 6):
        assert f"[{step}/5]" in printed
    rows = [line for line in printed.splitlines()
            if line.startswith(("AdaptiveDeviationDetector", "nearest-neighbour"))]
    assert len(rows) == 2
    for row in rows:  # model  AUROC  AUPRC  time
        auroc, auprc = (float(v) for v in row.split()[-3:-1])
        assert 0.0 <= auroc <= 1.0 and 0.0 < auprc <= 1.0
    # 40 normals -> 10 test normals; 16 anomalies - 4 labelled - 3 contaminants -> 9 test
    df = pd.read_csv(out / "scores.csv")
    assert len(df) == 19 and (df.label == -1).sum() == 9 and df.anomaly_score.notna().all()
    expected = {"results.txt", "scores.csv"}
    try:
        import matplotlib  # noqa: F401

        expected |= {"overlays_highest.png", "overlays_lowest.png", "score_histograms.png"}
    except ImportError:
        pass
    assert {p.name for p in out.iterdir()} == expected
