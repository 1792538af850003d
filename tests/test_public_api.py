"""One definition of public: every module's ``__all__`` is re-exported by the package, the
package exports nothing that no module declares, and no module imports another's private name."""

import ast
import importlib
import pathlib

import pytest

import karras_jax as kj

PACKAGE = pathlib.Path(kj.__file__).parent
MODULES = sorted(
    ".".join(("karras_jax", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
    for path in PACKAGE.rglob("*.py")
    if path.name != "__main__.py"
)
PUBLIC = [m for m in MODULES if not any(part.startswith("_") for part in m.split(".")[1:])]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_modules_declare_what_the_package_exports(name):
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), name
    for attr in module.__all__:
        assert hasattr(module, attr), f"{name}.__all__ names missing {attr}"
    if name in ("karras_jax", "karras_jax.cli", "karras_jax.analytic", "karras_jax.examples.digits"):
        return  # the package itself, the console script, the analytic models and the example are their own
    missing = sorted(set(module.__all__) - set(kj.__all__))
    assert not missing, f"{name}.__all__ has names karras_jax does not re-export: {missing}"


def test_everything_the_package_exports_is_declared_by_a_module():
    declared = set()
    for name in MODULES:
        if name != "karras_jax":
            declared |= set(getattr(importlib.import_module(name), "__all__", ()))
    assert set(kj.__all__) - {"__version__"} <= declared
    assert sorted(kj.__all__, key=str.lower) == sorted(set(kj.__all__), key=str.lower)  # no repeats


@pytest.mark.parametrize("name", MODULES)
def test_no_module_imports_another_modules_private_name(name):
    path = PACKAGE.joinpath(*name.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("karras_jax"):
            private = [a.name for a in node.names if a.name.startswith("_") and a.name != "__version__"]
            assert not private, f"{name} imports private {private} from {node.module}"
