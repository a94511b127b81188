"""pyproject.toml's dependency ranges start at the tested set that constraints.txt pins."""

import pathlib
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_lower_bounds_are_the_pinned_versions():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, version = line.split("==")
        pins[canonicalize_name(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    for text in [*project["dependencies"], *(req for extra in extras for req in extra)]:
        req = Requirement(text)
        pin = pins.get(canonicalize_name(req.name))
        lowest = [s.version for s in req.specifier if s.operator in (">=", "==")]
        assert pin is not None, f"{req.name} is not pinned in constraints.txt"
        assert lowest == [pin], f"{text}: the lower bound is not the pinned {pin}"
        assert req.specifier.contains(pin), f"{text} excludes the pinned {pin}"
