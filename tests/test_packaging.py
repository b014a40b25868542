"""The package's metadata, read from a wheel built from the checkout: the license (an SPDX
expression and its text), the project's URLs, and dependencies that match what the code imports."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import zipfile
from email.message import Message
from email.parser import Parser

import pytest
from conftest import ROOT, load_script
from dockerfile_parse import DockerfileParser


def canonical(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    wheels = tmp_path_factory.mktemp("wheels")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(wheels),
                             str(ROOT)], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    [path] = wheels.glob("training_exporter-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def dist_info_file(wheel: zipfile.ZipFile, name: str) -> str:
    [path] = [path for path in wheel.namelist() if re.fullmatch(rf"[^/]+\.dist-info/{name}", path)]
    return wheel.read(path).decode()


@pytest.fixture(scope="module")
def metadata(wheel) -> Message:
    return Parser().parsestr(dist_info_file(wheel, "METADATA"))


def test_license_is_apache_2_as_an_spdx_expression_with_its_text(wheel, metadata):
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert not [classifier for classifier in metadata.get_all("Classifier") if classifier.startswith("License ::")]
    shipped = dist_info_file(wheel, "licenses/LICENSE")
    assert shipped == (ROOT / "LICENSE").read_text()
    words = " ".join(shipped.split())
    assert words.startswith("Apache License Version 2.0, January 2004 http://www.apache.org/licenses/")
    assert "END OF TERMS AND CONDITIONS" in words


def test_project_urls_name_the_repository_the_image_labels_name(metadata):
    urls = dict(url.split(", ", 1) for url in metadata.get_all("Project-URL"))
    labels = DockerfileParser(path=str(ROOT / "Dockerfile")).labels
    assert urls["Source"] == labels["org.opencontainers.image.source"]
    assert urls["Documentation"].startswith(urls["Source"] + "/")


def imported_distributions() -> set[str]:
    """The distributions whose modules exporter/ imports, by import statement or by
    importlib.import_module with a literal name (as the NVML bindings are)."""
    modules = set()
    for path in (ROOT / "exporter").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)):
                modules.add(node.args[0].value)
    top_level = {module.split(".")[0] for module in modules} - set(sys.stdlib_module_names) - {"exporter"}
    installed = importlib.metadata.packages_distributions()
    missing = top_level - installed.keys()
    assert not missing, f"imported by exporter/ but not installed: {missing}"
    return {canonical(distribution) for module in top_level for distribution in installed[module]}


def declared(metadata: Message) -> dict[str | None, set[str]]:
    """{extra (None for the runtime): distribution names} from Requires-Dist."""
    by_extra: dict[str | None, set[str]] = {}
    for requirement in metadata.get_all("Requires-Dist"):
        name = canonical(re.match(r"[A-Za-z0-9._-]+", requirement).group())
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", requirement)
        by_extra.setdefault(extra.group(1) if extra else None, set()).add(name)
    return by_extra


def test_runtime_dependencies_are_exactly_what_the_code_imports(metadata):
    imported = imported_distributions()
    requirements = declared(metadata)
    runtime = requirements[None]
    assert "nvidia-ml-py" in imported and "requests" not in imported
    assert runtime <= imported, f"declared but never imported by exporter/: {runtime - imported}"
    # What is imported only where installed (bcrypt, the fallback password backend) is an extra.
    assert imported <= runtime | requirements["auth"], f"imported but not declared: {imported - runtime}"
    assert "requests" in requirements["test"]  # the tests' HTTP client


def test_a_compiled_editable_install_is_refused_in_one_line(monkeypatch):
    """Compiled modules beside the checkout's sources would be imported instead of them, and hide
    every edit: the build backend refuses before anything is built."""
    backend = load_script(ROOT / "build_backend.py", "build_backend")
    monkeypatch.setenv(backend.COMPILE_VARIABLE, "1")
    with pytest.raises(SystemExit) as refused:
        backend.get_requires_for_build_editable()
    assert str(refused.value).startswith("TRAINING_EXPORTER_COMPILE=1 does not apply to an editable install")
    assert "\n" not in str(refused.value)
