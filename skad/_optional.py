"""Optional dependencies: imported where a function needs them, or an error naming the extra.

skad's runtime dependencies (``pip install skad``) cover every default code
path: fitting, scoring and localising with every detector, the built-in
anomaly textures, persistence and the ``skad fit`` / ``skad score`` commands.
Figures, the ELPV data and the benchmark tables live in extras; asking for them
without the extra installed raises an :class:`ImportError` that gives the
``pip install`` line.
"""

import importlib

__all__ = ["import_optional"]


def import_optional(module, *, extra, purpose, package=None):
    """Import an optional dependency, or raise an ImportError that names skad's extra.

    Parameters
    ----------
    module : str
        Module to import, e.g. ``"matplotlib.pyplot"``.
    extra : str
        The skad extra that installs it (``"plot"``, ``"bench"``, ...).
    purpose : str
        What needs it, the start of the error message (``"skad.plotting"``).
    package : str, default=None
        Its name on PyPI, when it differs from the top-level module's name.

    Returns
    -------
    module : module
        The imported module.

    Raises
    ------
    ImportError
        ``"<purpose> needs <package>; install it with pip install "skad[<extra>]"
        (or pip install <package>)."``
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = package or module.split(".")[0]
        raise ImportError(
            f"{purpose} needs the optional package {package!r}; install it with "
            f"`pip install \"skad[{extra}]\"` (or `pip install {package}`)."
        ) from exc
