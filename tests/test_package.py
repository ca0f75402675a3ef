"""The package's top level: a lazy public API that loads no heavy dependency at import."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from importlib import metadata

import pytest

import crossgap_qdrant

HEAVY = ("torch", "open_clip", "qdrant_client", "qdrant_edge")


def _modules_loaded_by(code: str) -> list[str]:
    """Top-level names of the heavy modules in sys.modules after running ``code`` in a fresh interpreter."""
    script = (
        f"import json, sys\n{code}\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_loads_no_heavy_dependency():
    assert _modules_loaded_by("import crossgap_qdrant") == []


def test_version_and_dir_load_no_heavy_dependency():
    code = "import crossgap_qdrant\nassert crossgap_qdrant.__version__\nassert 'oti_invert' in dir(crossgap_qdrant)"
    assert _modules_loaded_by(code) == []


def test_the_probe_sees_a_heavy_import():
    # The probe above must be able to fail: a public name that needs torch does load it.
    assert "torch" in _modules_loaded_by("import crossgap_qdrant\ncrossgap_qdrant.OTIConfig")


def test_version_is_the_distribution_version():
    assert crossgap_qdrant.__version__ == metadata.version("crossgap-qdrant")


@pytest.mark.parametrize("name", [n for n in crossgap_qdrant.__all__ if n != "__version__"])
def test_every_public_name_resolves_to_its_subpackage_object(name):
    value = getattr(crossgap_qdrant, name)
    owner = importlib.import_module(crossgap_qdrant._EXPORTS[name])
    assert value is getattr(owner, name)
    assert name in dir(crossgap_qdrant)


def test_all_lists_exactly_the_mapped_names():
    assert sorted(crossgap_qdrant.__all__) == sorted([*crossgap_qdrant._EXPORTS, "__version__"])
    assert len(set(crossgap_qdrant.__all__)) == len(crossgap_qdrant.__all__)


def test_names_the_readme_imports_are_public():
    for name in ("ClipModel", "CrossModalStore", "OTIConfig", "WarmStart", "fit_warm_start", "load_model",
                 "oti_invert"):
        assert name in crossgap_qdrant.__all__


def test_subpackages_resolve_as_attributes():
    assert crossgap_qdrant.store is importlib.import_module("crossgap_qdrant.store")


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        _ = crossgap_qdrant.not_a_name
    assert not hasattr(crossgap_qdrant, "__wrapped__")
