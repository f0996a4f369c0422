"""skad.persistence: model files, their checks, and loading GPU models without CUDA."""

import copy
import json
import os
import pickle
import subprocess
import sys

import joblib
import numpy as np
import pytest
import torch
from _helpers import make_tiny_images
from sklearn.pipeline import make_pipeline
from test_common import DETECTORS as TINY_DETECTORS

from skad import AdaptiveDeviationDetector, DeviationNetworkDetector, persistence
from skad.persistence import ModelFileError, ModelVersionWarning, load, read_header, save

TINY = dict(backbone="test_efficientnet", pretrained=False, image_size=32, max_epochs=1,
            batch_size=8, device="cpu", random_state=0)


@pytest.fixture(scope="module")
def data():
    X, is_anomaly, _ = make_tiny_images(n_normal=16, n_anomalous=4, size=32, seed=1)
    return X, np.where(is_anomaly, -1, 1)


@pytest.fixture(scope="module")
def fitted(data):
    X, y = data
    return AdaptiveDeviationDetector(**TINY, fuse_channels=8, n_reference=500,
                                     contamination=0.1).fit(X, y)


def _rewrite_header(path, **changes):
    """Rewrite the JSON header of a model file (``versions`` entries are merged)."""
    with open(path, "rb") as handle:
        magic, header, payload = handle.readline(), json.loads(handle.readline()), handle.read()
    versions = {**header["versions"], **changes.pop("versions", {})}
    header.update(changes, versions=versions)
    with open(path, "wb") as handle:
        handle.write(magic + json.dumps(header).encode() + b"\n" + payload)


def test_round_trip_keeps_scores_maps_and_threshold(fitted, data, tmp_path):
    X, _ = data
    path = save(fitted, tmp_path / "model.skad", metadata={"data": "parts/"})
    assert path == os.fspath(tmp_path / "model.skad")
    loaded = load(path)
    assert type(loaded) is AdaptiveDeviationDetector
    assert loaded.get_params() == fitted.get_params()
    assert loaded.offset_ == fitted.offset_
    np.testing.assert_allclose(loaded.score_samples(X), fitted.score_samples(X), rtol=1e-6)
    np.testing.assert_array_equal(loaded.predict(X), fitted.predict(X))
    np.testing.assert_allclose(loaded.localize(X[:3]), fitted.localize(X[:3]), atol=1e-6)
    assert not list(tmp_path.glob("*.tmp-*"))  # written atomically, nothing left behind


def test_header_records_class_versions_device_and_metadata(fitted, tmp_path):
    import sklearn
    import skorch

    import skad

    path = save(fitted, tmp_path / "model.skad", metadata={"data": "parts/", "n": 3})
    header = read_header(path)
    assert header["class"] == "skad.detectors._adl.AdaptiveDeviationDetector"
    assert header["versions"]["skad"] == skad.__version__
    assert header["versions"]["torch"] == torch.__version__
    assert header["versions"]["sklearn"] == sklearn.__version__
    assert header["versions"]["skorch"] == skorch.__version__
    assert header["devices"] == ["cpu"]
    assert header["metadata"] == {"data": "parts/", "n": 3}
    magic, _, payload = open(path, "rb").read().split(b"\n", 2)
    assert magic == f"skad-model {persistence.FORMAT_VERSION}".encode() == b"skad-model 2"
    assert header["payload_bytes"] == len(payload)
    assert header["pickled"] == []  # nothing in a detector's file needs pickle


def test_pipeline_and_unfitted_estimators_round_trip(fitted, data, tmp_path):
    X, _ = data
    unfitted = DeviationNetworkDetector(**TINY)
    assert load(save(unfitted, tmp_path / "u.skad")).get_params() == unfitted.get_params()
    pipe = make_pipeline(fitted)
    loaded = load(save(pipe, tmp_path / "p.skad"))
    np.testing.assert_allclose(loaded.score_samples(X), pipe.score_samples(X), rtol=1e-6)


def test_refuses_files_not_written_by_save_unless_trusted(fitted, data, tmp_path):
    X, _ = data
    plain = tmp_path / "plain.joblib"
    joblib.dump(fitted, plain)
    with pytest.raises(ModelFileError, match="not a skad model file.*trusted=True"):
        load(plain)
    with pytest.raises(ModelFileError, match="not a skad model file"):
        read_header(plain)
    np.testing.assert_allclose(load(plain, trusted=True).score_samples(X),
                               fitted.score_samples(X), rtol=1e-6)


def test_nothing_is_unpickled_before_the_checks(tmp_path):
    # a pickle that would create a file when unpickled
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return open, (os.fspath(marker), "w")

    path = tmp_path / "evil.skad"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ModelFileError):
        load(path)
    assert not marker.exists()


def test_damaged_payload_is_refused(fitted, tmp_path):
    path = save(fitted, tmp_path / "model.skad")
    data = bytearray(open(path, "rb").read())
    data[-100] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(ModelFileError, match="checksum"):
        load(path)
    truncated = save(fitted, tmp_path / "short.skad")
    size = os.path.getsize(truncated)
    with open(truncated, "r+b") as handle:
        handle.truncate(size - 1000)
    with pytest.raises(ModelFileError, match="truncated"):
        load(truncated)


def test_incompatible_skad_version_needs_trusted(fitted, data, tmp_path):
    X, _ = data
    path = save(fitted, tmp_path / "model.skad")
    _rewrite_header(path, versions={"skad": "9.3.0"})
    with pytest.raises(ModelFileError, match=r"skad 9\.3\.0.*trusted=True"):
        load(path)
    with pytest.warns(ModelVersionWarning, match=r"skad 9\.3\.0"):
        loaded = load(path, trusted=True)
    assert loaded.predict(X).shape == (len(X),)


def test_dependency_version_drift_warns(fitted, tmp_path):
    path = save(fitted, tmp_path / "model.skad")
    _rewrite_header(path, versions={"torch": "1.0.0", "sklearn": "0.1"})
    with pytest.warns(ModelVersionWarning, match=r"torch 1\.0\.0 \(now .*sklearn 0\.1"):
        load(path)


def test_newer_format_and_damaged_header_are_refused_even_if_trusted(fitted, tmp_path):
    path = save(fitted, tmp_path / "model.skad")
    content = open(path, "rb").read()
    newer = tmp_path / "newer.skad"
    newer.write_bytes(content.replace(b"skad-model 2\n", b"skad-model 99\n", 1))
    with pytest.raises(ModelFileError, match="format 99.*upgrade skad"):
        load(newer, trusted=True)
    broken = tmp_path / "broken.skad"
    broken.write_bytes(b"skad-model 2\n{not json\n" + content)
    with pytest.raises(ModelFileError, match="damaged"):
        load(broken, trusted=True)


def test_save_and_load_errors_name_the_problem(fitted, tmp_path):
    with pytest.raises(TypeError, match="scikit-learn estimator"):
        save({"not": "an estimator"}, tmp_path / "x.skad")
    with pytest.raises(FileNotFoundError, match="does not exist; create it"):
        save(fitted, tmp_path / "missing" / "x.skad")
    with pytest.raises(TypeError, match="JSON"):
        save(fitted, tmp_path / "x.skad", metadata={"bad": object()})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "nope.skad")


class FakeCudaGenerator(torch.Generator):
    """A CPU generator that reports, and pickles as, a CUDA generator.

    Unpickling it runs ``torch.Generator(device="cuda")`` exactly as a real
    CUDA generator's pickle does, which fails on a machine without CUDA.
    """

    @property
    def device(self):
        return torch.device("cuda")

    def __reduce__(self):
        state = torch.zeros(16, dtype=torch.uint8)  # a CUDA (Philox) generator state
        return torch.Generator, (torch.device("cuda"),), (self.initial_seed(), 0, state)


@pytest.mark.skipif(torch.cuda.is_available(), reason="simulates a machine without CUDA")
def test_model_fitted_on_gpu_loads_on_cpu_only_machine(fitted, data, tmp_path):
    X, _ = data
    det = copy.deepcopy(fitted)
    expected = det.score_samples(X)
    # what a CUDA fit leaves behind: the fitted device, and CUDA generators in the
    # criterion and the pseudo-anomaly hook (tensors are mapped by skorch and skad)
    generator = FakeCudaGenerator().manual_seed(7)
    det.net_.criterion_.generator = generator
    det.net_.batch_transform.generator = generator
    det.device_, det.net_.device = "cuda", "cuda"
    with pytest.raises(Exception, match="CUDA|cuda"):
        pickle.loads(pickle.dumps(generator))  # the simulation fails as the real thing
    joblib.dump(det, tmp_path / "plain.joblib")
    with pytest.raises(Exception, match="CUDA|cuda"):
        joblib.load(tmp_path / "plain.joblib")  # and so does a plain joblib file

    path = save(det, tmp_path / "gpu.skad")
    assert det.net_.criterion_.generator is generator  # save leaves the detector as it was
    assert read_header(path)["devices"] == ["cuda"]
    with pytest.warns(UserWarning, match="fitted on \\['cuda'\\].*loaded on the CPU"):
        loaded = load(path)
    assert loaded.device_ == "cpu" and str(loaded.net_.device) == "cpu"
    for hook in (loaded.net_.criterion_, loaded.net_.batch_transform):
        assert type(hook.generator) is torch.Generator
        assert hook.generator.device.type == "cpu"
        assert hook.generator.initial_seed() == 7
    np.testing.assert_allclose(loaded.score_samples(X), expected, rtol=1e-6)
    assert loaded.localize(X[:2]).shape == (2, 32, 32)


def test_restore_generator_keeps_the_state_of_an_available_device():
    generator = torch.Generator().manual_seed(3)
    torch.rand(5, generator=generator)
    portable = pickle.loads(pickle.dumps(persistence._PortableGenerator(generator)))
    assert type(portable) is torch.Generator
    assert torch.equal(torch.rand(4, generator=portable), torch.rand(4, generator=generator))


@pytest.mark.gpu
def test_real_gpu_model_loads_without_cuda(data, tmp_path):
    X, y = data
    det = AdaptiveDeviationDetector(**{**TINY, "device": "cuda"}, fuse_channels=8,
                                    n_reference=500).fit(X, y)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "expected.npy", det.score_samples(X))
    save(det, tmp_path / "gpu.skad")
    code = (
        "import numpy as np, warnings; from skad.persistence import load\n"
        f"d = {os.fspath(tmp_path)!r}\n"
        "with warnings.catch_warnings():\n"
        "    warnings.simplefilter('ignore')\n"
        "    det = load(d + '/gpu.skad')\n"
        "assert det.device_ == 'cpu'\n"
        "s = det.score_samples(np.load(d + '/X.npy'))\n"
        "np.testing.assert_allclose(s, np.load(d + '/expected.npy'), rtol=1e-3, atol=1e-3)\n"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------ files that load no code


class ShellCommand:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = os.fspath(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _swap_payload(path, payload, *, format_line=None):
    """Put ``payload`` behind the (valid, copied) header of ``path``, checksums recomputed."""
    import hashlib

    with open(path, "rb") as handle:
        magic, header = handle.readline(), json.loads(handle.readline())
    header.update(payload_bytes=len(payload), payload_sha256=hashlib.sha256(payload).hexdigest())
    with open(path, "wb") as handle:
        handle.write((format_line or magic) + json.dumps(header).encode() + b"\n" + payload)


def _tiny(name, **kw):
    """A tiny detector by class name, with the shared settings of test_common."""
    return TINY_DETECTORS[name](**kw)


def test_a_valid_header_on_a_pickle_payload_runs_no_code(fitted, tmp_path):
    marker = tmp_path / "ran"
    evil = pickle.dumps(ShellCommand(marker))
    path = save(fitted, tmp_path / "evil.skad")
    _swap_payload(path, evil)  # the header and its checksums are all valid
    with pytest.raises(ModelFileError, match="damaged or was altered"):
        load(path)
    # the same payload behind a first-format header (whose payloads were pickles)
    old = save(fitted, tmp_path / "old.skad")
    _swap_payload(old, evil, format_line=b"skad-model 1\n")
    with pytest.raises(ModelFileError, match="first model format.*trusted=True"):
        load(old)
    assert not marker.exists()


def test_a_detector_carrying_a_malicious_attribute_is_refused(data, tmp_path):
    X, y = data
    marker = tmp_path / "ran"
    det = _tiny("PatchCoreDetector").fit(X, y)
    det.notes_ = ShellCommand(marker)
    with pytest.warns(UserWarning, match=r"notes_ \(.*ShellCommand\).*trusted=True"):
        path = save(det, tmp_path / "model.skad")
    (pickled,) = read_header(path)["pickled"]
    assert pickled.startswith("PatchCoreDetector.notes_ (") and "ShellCommand" in pickled
    with pytest.raises(ModelFileError, match="notes_.*runs code.*trusted=True"):
        load(path)
    assert not marker.exists()
    # the header's list edited away: the payload's pickle is still never opened
    _rewrite_header(path, pickled=[])
    with pytest.raises(ModelFileError, match="stored as pickle"):
        load(path)
    assert not marker.exists()
    # trusting the file is what runs its code
    load(path, trusted=True)
    assert marker.exists()


def test_classes_outside_the_allowlist_are_never_imported_or_called(fitted, tmp_path):
    import hashlib
    import io
    import zipfile

    path = save(fitted, tmp_path / "model.skad")
    with open(path, "rb") as handle:
        handle.readline(), handle.readline()
        payload = handle.read()
    archive = zipfile.ZipFile(io.BytesIO(payload))
    tree = json.loads(archive.read("model.json"))
    for key, node in (
            ("evil_", {"$estimator": "os:system", "params": {"$dict": []},
                       "state": {"$dict": []}}),
            ("evil_", {"$ref": "subprocess:Popen"}),
            ("evil_", {"$object": "builtins:eval", "state": {}}),
            ("evil_", {"$estimator": "skad.persistence:save", "params": {"$dict": []},
                       "state": {"$dict": []}}),
            ("score_samples", {"$ref": "builtins:print"})):  # a method replaced
        tree["root"]["state"]["$dict"].append([key, node])
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as out:
            for info in archive.infolist():
                data_ = (json.dumps(tree).encode() if info.filename == "model.json"
                         else archive.read(info.filename))
                out.writestr(info.filename, data_)
        _swap_payload(path, buffer.getvalue())
        with pytest.raises(ModelFileError,
                           match="does not load|not an estimator|not a class|never saves"):
            load(path)
        tree["root"]["state"]["$dict"].pop()
    assert hashlib.sha256(payload).hexdigest()  # the original payload was left untouched


def test_the_payload_holds_typed_data_only(fitted, tmp_path):
    import io
    import zipfile

    from safetensors.torch import load as load_tensors

    path = save(fitted, tmp_path / "model.skad")
    with open(path, "rb") as handle:
        handle.readline(), handle.readline()
        archive = zipfile.ZipFile(io.BytesIO(handle.read()))
    names = archive.namelist()
    assert names[:2] == ["model.json", "tensors.safetensors"]
    assert all(n.startswith("arrays/") and n.endswith(".npy") for n in names[2:])
    for name in names[2:]:
        np.load(io.BytesIO(archive.read(name)), allow_pickle=False)
    tensors = load_tensors(archive.read("tensors.safetensors"))
    weights = dict(fitted.net_.module_.named_parameters())
    assert sum(t.numel() for t in tensors.values()) >= sum(w.numel() for w in weights.values())


@pytest.mark.parametrize("name", sorted(TINY_DETECTORS))  # every registered detector
def test_every_detector_round_trips_bit_for_bit(name, data, tmp_path):
    X, y = data
    det = _tiny(name, contamination=0.1).fit(X, y)
    loaded = load(save(det, tmp_path / "m.skad"))
    assert type(loaded) is type(det) and loaded.get_params() == det.get_params()
    assert loaded.offset_ == det.offset_
    np.testing.assert_array_equal(loaded.score_samples(X), det.score_samples(X))
    np.testing.assert_array_equal(loaded.localize(X[:2]), det.localize(X[:2]))
    for key, value in vars(det).items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(getattr(loaded, key), value)
    module = det.net_.module_ if hasattr(det, "net_") else det.module_
    loaded_module = loaded.net_.module_ if hasattr(det, "net_") else loaded.module_
    # Equal strides, not only equal values: a 1x1 convolution's weight is "contiguous" in
    # both memory layouts, yet oneDNN's multi-threaded kernels round differently by layout.
    assert {n: t.stride() for n, t in module.state_dict().items()} \
        == {n: t.stride() for n, t in loaded_module.state_dict().items()}
    if hasattr(det, "net_"):
        assert loaded.history_.to_list() == det.history_.to_list()
        assert str(loaded.net_.optimizer_.state_dict()) == str(det.net_.optimizer_.state_dict())


def test_tabular_devnet_pipeline_and_callbacks_round_trip(tmp_path):
    from skorch.callbacks import EarlyStopping, LRScheduler
    from torch.optim.lr_scheduler import StepLR

    from skad.preprocessing import ContaminationInjector

    rng = np.random.RandomState(0)
    X, anomalies = rng.normal(size=(40, 5)), rng.normal(5, 1, size=(6, 5))
    det = DeviationNetworkDetector(max_epochs=2, random_state=0, callbacks=[
        EarlyStopping(monitor="train_loss", patience=3),
        ("lr", LRScheduler(policy=StepLR, step_size=1))])
    pipe = make_pipeline(ContaminationInjector(anomalies, contamination=0.1, random_state=0),
                         det).fit(X, np.ones(len(X), dtype=int))
    loaded = load(save(pipe, tmp_path / "pipe.skad"))
    np.testing.assert_array_equal(loaded.score_samples(X), pipe.score_samples(X))
    callbacks = loaded[-1].callbacks
    assert type(callbacks[0]) is EarlyStopping and callbacks[0].patience == 3
    assert callbacks[1][1].policy is StepLR and callbacks[1][1].step_size == 1
    assert loaded[-1].n_features_in_ == 5
    np.testing.assert_array_equal(loaded[0].anomalies, anomalies)


def test_a_custom_backbone_module_needs_trust(data, tmp_path):
    from skad.nn.backbones import create_feature_extractor

    X, y = data
    body = create_feature_extractor("test_efficientnet", pretrained=False).body
    det = _tiny("PaDiMDetector", backbone=body, out_indices=(0, 1)).fit(X, y)
    with pytest.warns(UserWarning, match="backbone"):
        path = save(det, tmp_path / "custom.skad")
    with pytest.raises(ModelFileError, match="backbone.*trusted=True"):
        load(path)
    loaded = load(path, trusted=True)
    np.testing.assert_array_equal(loaded.score_samples(X), det.score_samples(X))


def test_first_format_files_get_a_clear_message_and_load_when_trusted(fitted, data, tmp_path):
    import hashlib

    X, _ = data
    payload = pickle.dumps(fitted, protocol=5)
    header = {"format": 1, "class": "skad.detectors._adl.AdaptiveDeviationDetector",
              "versions": persistence._versions(), "devices": ["cpu"], "metadata": {},
              "payload_bytes": len(payload),
              "payload_sha256": hashlib.sha256(payload).hexdigest()}
    path = tmp_path / "old.skad"
    path.write_bytes(b"skad-model 1\n" + json.dumps(header).encode() + b"\n" + payload)
    with pytest.raises(ModelFileError, match="first model format.*save it again"):
        load(path)
    loaded = load(path, trusted=True)
    np.testing.assert_array_equal(loaded.score_samples(X), fitted.score_samples(X))
    converted = load(save(loaded, tmp_path / "new.skad"))
    np.testing.assert_array_equal(converted.score_samples(X), fitted.score_samples(X))


def test_large_metadata_round_trips_and_too_large_is_refused_at_save(fitted, tmp_path):
    big = {"notes": "x" * 70_000}
    path = save(fitted, tmp_path / "big.skad", metadata=big)
    assert read_header(path)["metadata"] == big
    assert load(path).offset_ == fitted.offset_
    with pytest.raises(ValueError, match="metadata is .* bytes.*beside the model"):
        save(fitted, tmp_path / "huge.skad", metadata={"notes": "x" * 2_000_000})
    with pytest.raises(ValueError, match="is a folder"):
        save(fitted, tmp_path)
    with pytest.raises(ModelFileError, match="is a folder"):
        load(tmp_path)
