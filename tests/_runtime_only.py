"""An environment with only skad's runtime dependencies, made from the installed one.

:func:`runtime_only_path` builds a folder of symbolic links to the installed
distributions in the transitive closure of skad's runtime requirements (the
packages and their ``*.dist-info``) and to nothing else: the test, bench, plot
and docs extras and what they pulled in are absent from it. A Python started
with ``-S`` (no site-packages) and ``PYTHONPATH=<that folder>:<repository>``
then sees exactly what ``pip install skad`` gives, without a second install.

Run as a script in such an interpreter, this module imports every module of
skad and fits and scores every detector exported by ``skad`` on tiny images
with its defaults (pretrained backbone, built-in pseudo-anomaly textures),
printing a JSON report. ``tests/test_install.py`` drives both.
"""

import importlib
import importlib.metadata as md
import json
import os
import pkgutil
import re
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Distributions that every virtual environment has.
ALWAYS = frozenset({"pip", "setuptools", "wheel"})


def canonical(name):
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_dependencies(pyproject=REPO / "pyproject.toml"):
    """The ``[project] dependencies`` of skad's ``pyproject.toml`` (not the installed metadata,
    which can be stale after an edit)."""
    import tomllib

    with open(pyproject, "rb") as handle:
        return list(tomllib.load(handle)["project"]["dependencies"])


def runtime_closure():
    """Canonical names of the declared dependencies and of everything they need, installed."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    env = {**default_environment(), "extra": ""}

    def needed(lines):
        for line in lines:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(env):
                yield req.name

    seen, todo = set(), list(needed(declared_dependencies()))
    while todo:
        name = canonical(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            todo.extend(needed(md.requires(name) or []))
        except md.PackageNotFoundError:
            continue
    return seen


def _installed():
    """Distributions installed in this interpreter's site-packages."""
    site = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    return md.distributions(path=sorted(site))


def _entries(dist):
    """Installed paths of ``dist`` relative to its site-packages, as tuples of parts."""
    parts = set()
    for file in dist.files or []:
        p = Path(file).parts
        if p and p[0] != ".." and "__pycache__" not in p:
            parts.add(p)
    return parts


def optional_modules():
    """Top-level modules installed only by distributions outside the runtime closure."""
    keep = runtime_closure() | ALWAYS
    out = set()
    for dist in _installed():
        if canonical(dist.metadata["Name"]) not in keep:
            out.update(_top_level_modules(dist))
    kept = set()
    for dist in _installed():
        if canonical(dist.metadata["Name"]) in keep:
            kept.update(_top_level_modules(dist))
    return out - kept


def _top_level_modules(dist):
    names = set()
    for parts in _entries(dist):
        top = parts[0]
        if top.endswith((".dist-info", ".egg-info", ".pth", ".libs")) or top.startswith("_"):
            continue
        name = top.removesuffix(".py") if len(parts) == 1 else top
        if len(parts) > 1 or top.endswith(".py"):
            names.add(name.split(".")[0])
    return names


def extra_modules():
    """Top-level modules of the packages that skad's extras name and its runtime does not need.

    These are skad's own optional imports (matplotlib, elpv_dataset, pytest,
    ...); what those packages pull in and third-party code probes for
    (numpy's ``f2py`` tries ``charset_normalizer``, joblib tries ``psutil``)
    is not skad's to control.
    """
    import tomllib
    from packaging.requirements import Requirement

    with open(REPO / "pyproject.toml", "rb") as handle:
        extras = tomllib.load(handle)["project"]["optional-dependencies"]
    keep = runtime_closure() | ALWAYS
    names = {canonical(Requirement(line).name) for lines in extras.values() for line in lines}
    out = set()
    for dist in _installed():
        if canonical(dist.metadata["Name"]) in names - keep:
            out.update(_top_level_modules(dist))
    return out


def runtime_only_path(dest):
    """Fill folder ``dest`` with links to the runtime closure's installed files; return it.

    A top-level folder owned by one distribution is linked whole; a folder
    shared with distributions outside the closure (a namespace package) is
    made real and only the closure's entries inside it are linked.
    """
    dest = Path(dest)
    keep = runtime_closure() | ALWAYS | {"skad"}
    owners = {}  # top-level name -> set of (kept?, second-level name)
    roots = {}
    for dist in _installed():
        kept = canonical(dist.metadata["Name"]) in keep
        base = Path(dist.locate_file(""))
        for parts in _entries(dist):
            owners.setdefault(parts[0], set()).add((kept, parts[1] if len(parts) > 1 else None))
            roots.setdefault(parts[0], base)
    for top, owned in owners.items():
        kept = {child for k, child in owned if k}
        if not kept:
            continue
        source = roots[top] / top
        if not any(not k for k, _ in owned) or not source.is_dir():
            (dest / top).symlink_to(source)
            continue
        (dest / top).mkdir()
        for child in kept - {None}:
            (dest / top / child).symlink_to(source / child)
    return dest


def _tiny_fit(name):
    import numpy as np

    import skad

    rng = np.random.RandomState(0)
    X = rng.randint(0, 256, (12, 32, 32, 3)).astype(np.uint8)
    X[10:, 8:16, 8:16] = 255
    y = np.ones(12, dtype=int)
    y[10:] = -1
    det = getattr(skad, name)()
    tiny = {"image_size": 32, "max_epochs": 1, "steps_per_epoch": 2, "batch_size": 8,
            "device": "cpu", "random_state": 0, "n_reference": 500}
    det.set_params(**{k: v for k, v in tiny.items() if k in det.get_params()})
    det.fit(X, y)
    scores = det.score_samples(X)
    maps = det.localize(X[:2])
    return {"anomaly_source": repr(det.get_params().get("anomaly_source", "n/a")),
            "finite": bool(np.isfinite(scores).all() and np.isfinite(maps).all()),
            "n_scores": len(scores), "maps_shape": list(maps.shape)}


def main(argv):
    """Import every skad module (and, with ``--fit``, fit every detector); print JSON."""
    import skad

    report = {"import_errors": {}, "fits": {}, "fit_errors": {},
              "skad_file": skad.__file__, "site_packages_on_path": [
                  p for p in sys.path if "site-packages" in p]}
    for info in pkgutil.walk_packages(skad.__path__, prefix="skad."):
        try:
            importlib.import_module(info.name)
        except Exception as exc:  # noqa: BLE001 - the report names the module and the error
            report["import_errors"][info.name] = f"{type(exc).__name__}: {exc}"
    report["modules"] = sorted(m for m in sys.modules if m.partition(".")[0] != "skad")
    if "--fit" in argv:
        for name in skad.__all__:
            if name.endswith("Detector"):
                try:
                    report["fits"][name] = _tiny_fit(name)
                except Exception as exc:  # noqa: BLE001
                    report["fit_errors"][name] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(report))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main(sys.argv[1:])
