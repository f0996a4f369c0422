"""Sphinx configuration of skad's documentation.

Build with ``tox -e docs`` or, with the ``docs`` extra installed::

    sphinx-build -W --keep-going -b html docs docs/_build/html

The build is offline: no intersphinx inventories are fetched, the examples are
included as source (not executed), and ``api.rst`` is written here from the
public modules' ``__all__`` (see ``API_SECTIONS``).
"""

import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

from sphinx.util import logging

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document the checkout, installed or not

import skad  # noqa: E402

logger = logging.getLogger(__name__)

# -- project -----------------------------------------------------------------------------

project = "skad"
author = "skad developers"
copyright = "skad developers, BSD-3-Clause"
release = skad.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.extlinks",
    "sphinx.ext.viewcode",
    "numpydoc",
]

templates_path = ["_templates"]
exclude_patterns = ["_build"]
root_doc = "index"
default_role = "literal"  # `x` in a docstring renders as code, never as a broken reference

html_theme = "pydata_sphinx_theme"
html_title = f"skad {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": [],
}
html_static_path = []
html_show_sourcelink = False

# docstrings cite papers with :doi:`...`, as scikit-learn's do
extlinks = {"doi": ("https://doi.org/%s", "doi:%s")}

# -- autodoc / autosummary / numpydoc -------------------------------------------------------

autosummary_generate = True
autodoc_typehints = "none"
autodoc_inherit_docstrings = False  # no torch "forward" boilerplate on skad modules
autodoc_member_order = "groupwise"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False


def _skip_foreign_member(app, what, name, obj, skip, options):
    """Document skad's own members only.

    Classes are documented with their inherited members
    (``_templates/autosummary/class.rst``), so that a detector shows ``fit``
    and ``score_samples`` from ``skad.base.BaseDetector``. What comes from
    scikit-learn, torch or Python (``get_params``, ``set_output``,
    ``nn.Module.to``, ``Exception.add_note`` ...) is documented there, and its
    docstrings cross-reference user guides that are not this one.
    """
    if skip or what not in ("class", "exception"):
        return skip
    target = obj.fget if isinstance(obj, property) else obj
    owner = getattr(target, "__objclass__", None)  # methods of built-in types
    module = getattr(owner or target, "__module__", None)
    if module is None:  # plain class attributes (data), documented by their own comment
        return None
    return None if module.split(".")[0] == "skad" else True


# -- API reference, generated from __all__ -------------------------------------------------

#: (title, modules, text). Each module's ``__all__`` gives its entries; ``skad.nn.*`` stands
#: for every module of ``skad.nn`` not listed elsewhere.
API_SECTIONS = [
    ("Detectors", ["skad.detectors"],
     "Estimators following scikit-learn's outlier-detector contract "
     "(:doc:`guide/conventions`). They are also importable from ``skad`` itself."),
    ("Base class", ["skad.base"],
     "The contract shared by every detector; subclass it to add a method."),
    ("Preprocessing", ["skad.preprocessing"],
     "Transformers for Pipelines; ``ContaminationInjector`` is also importable from "
     "``skad``."),
    ("Metrics", ["skad.metrics"], "Image- and pixel-level evaluation."),
    ("Datasets", ["skad.datasets"], "Loaders (offline) and toy generators."),
    ("Model selection", ["skad.model_selection"],
     "The contaminated few-labelled-anomalies split (:doc:`guide/elpv`) and the "
     "cross-validation splitter that keeps labelled anomalies in every fold "
     "(:doc:`guide/model_selection`)."),
    ("Thresholds", ["skad.thresholds"],
     "Thresholds from held-out images: a false-alarm budget, the best F1, normalised scores "
     "(:doc:`guide/thresholds`)."),
    ("Pipelines", ["skad.pipeline"],
     "``localize`` and the final detector through a Pipeline ending in one."),
    ("Pseudo-anomaly synthesis", ["skad.synthesis"],
     "Batches of image tensors in, batches out; explicit ``torch.Generator`` everywhere."),
    ("Losses", ["skad.losses"], "Pure tensor functions."),
    ("Instance reweighting", ["skad.reweighting"], "Closed-form importance weights."),
    ("Backbones", ["skad.nn.backbones"],
     "Multi-scale feature extractors and offline pretrained weights "
     "(:doc:`guide/backbones`)."),
    ("Network modules", ["skad.nn.heads", "skad.nn.*"],
     "The detectors' networks and their building blocks, in pure torch: they never import "
     "scikit-learn or skorch."),
    ("Persistence", ["skad.persistence"],
     "Saving and loading fitted detectors (:doc:`guide/persistence`)."),
    ("Export", ["skad.export"],
     "ONNX models of the detectors' scoring (``pip install skad[export]``, "
     ":doc:`guide/export`)."),
    ("Plotting", ["skad.plotting"], "Matplotlib helpers (``pip install skad[plot]``)."),
    ("Command line", ["skad.cli"], "The ``skad`` command (:doc:`guide/cli`)."),
]

#: Listed modules that may be missing from a checkout while they are being written: left
#: out silently then. Any other listed module must import.
API_OPTIONAL = set()

#: Public modules deliberately left out of the reference.
API_UNLISTED = {"skad.benchmarks"}

#: Names of ``__all__`` left out of the reference (undocumented constants).
API_EXCLUDE = {"skad.nn.backbones": {"IMAGENET_MEAN", "IMAGENET_STD"}}


def _public_modules(package):
    """Names of the public (no leading underscore) modules directly inside ``package``."""
    path = importlib.import_module(package).__path__
    return sorted(f"{package}.{m.name}" for m in pkgutil.iter_modules(path)
                  if not m.name.startswith("_"))


def _expand(sections):
    """``[(title, [module names], text)]`` with ``pkg.*`` expanded; missing optionals dropped."""
    listed = {m for _, modules, _ in sections for m in modules if not m.endswith(".*")}
    expanded = []
    for title, modules, text in sections:
        names = []
        for module in modules:
            if module.endswith(".*"):
                names += [m for m in _public_modules(module[:-2]) if m not in listed]
            elif module in API_OPTIONAL and importlib.util.find_spec(module) is None:
                continue
            else:
                names.append(module)
        if names:
            expanded.append((title, names, text))
    return expanded


def _unlisted_modules(sections):
    """Public modules of skad and skad.nn that no section lists."""
    listed = {m for _, modules, _ in sections for m in modules} | API_UNLISTED
    public = _public_modules("skad") + _public_modules("skad.nn")
    return [m for m in public if m not in listed and m != "skad.nn"]


def _module_block(module_name, heading):
    module = importlib.import_module(module_name)
    names = [n for n in module.__all__ if n not in API_EXCLUDE.get(module_name, ())]
    lines = [heading, "~" * len(heading), ""] if heading else []
    lines += [
        f".. automodule:: {module_name}",
        "",
        f".. currentmodule:: {module_name}",
        "",
        ".. autosummary::",
        "   :toctree: generated/",
        "   :nosignatures:",
        "",
        *(f"   {name}" for name in sorted(names, key=str.lower)),
        "",
    ]
    return lines, {f"{module_name}.{n}" for n in names}


def write_api_reference(app, config):
    """Write ``api.rst``: one autosummary table per module of ``API_SECTIONS``.

    Runs when the configuration is read, before Sphinx looks for source files
    and autosummary writes its stubs; a public module that no section lists is
    reported as a warning, which fails the build.
    """
    sections = _expand(API_SECTIONS)
    for module in _unlisted_modules(sections):
        logger.warning(
            "%s is a public module missing from the API reference: add it to API_SECTIONS "
            "(or API_UNLISTED) in docs/conf.py.", module)
    lines = [
        ".. This file is written by conf.py (API_SECTIONS) at every build; do not edit.",
        "",
        "API reference",
        "=============",
        "",
        "Everything listed here is public; names starting with an underscore and modules "
        "not listed are not.",
        "",
    ]
    documented = set()
    for title, modules, text in sections:
        lines += [title, "-" * len(title), "", text, ""]
        for module in modules:
            block, names = _module_block(module, f"``{module}``" if len(modules) > 1 else "")
            lines += block
            documented |= names
    text = "\n".join(lines)
    path = DOCS / "api.rst"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    # stubs of names that left an __all__ would fail the build as orphans
    for stub in (DOCS / "generated").glob("*.rst"):
        if stub.stem not in documented:
            stub.unlink()


def setup(app):
    app.connect("autodoc-skip-member", _skip_foreign_member)
    # before Sphinx lists the source files, so that a fresh checkout finds api.rst
    app.connect("config-inited", write_api_reference)
