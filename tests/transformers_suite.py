"""transformers' own common model tests, from the sdist of the installed transformers on the package index.

`python tests/transformers_suite.py` (run by `make test`) downloads the sdist once and unpacks the files ExpLLM's
tester needs into `.venv/transformers-tests/<version>/transformers_tests/`, a package, since the files import each
other relatively. `tests/test_transformers_common.py` imports them from there.

The sdist carries the top-level `tests/*.py` files but not the folders they import three names from, so this writes
those three modules itself, each saying what it stands for:
- `generation/test_utils.py`: `GenerationTesterMixin`, not shipped: generation is tested by tests/test_modeling.py;
- `exporters/test_export.py`: `ExportTesterMixin`, the base of `ModelTesterMixin`: torch.export tests, not shipped;
- `utils/test_configuration_utils.py`: `config_common_kwargs`, read only by a check that composite configs skip.
"""

import os
import subprocess
import sys
import tarfile
import tempfile

import transformers

SUITE_FILES = ("test_modeling_common.py", "test_configuration_common.py")
PACKAGE = "transformers_tests"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STAND_INS = {
    "generation/test_utils.py": (
        '"""Stands in for transformers\' tests/generation/test_utils.py, which the sdist does not ship."""\n\n\n'
        "class GenerationTesterMixin:\n"
        '    """Empty: transformers\' generation tests are not available from the package index."""\n'
    ),
    "exporters/test_export.py": (
        '"""Stands in for transformers\' tests/exporters/test_export.py, which the sdist does not ship."""\n\n\n'
        "class ExportTesterMixin:\n"
        '    """Empty: transformers\' torch.export tests are not available from the package index."""\n'
    ),
    "utils/test_configuration_utils.py": (
        '"""Stands in for transformers\' tests/utils/test_configuration_utils.py, which the sdist does not ship.\n\n'
        "`ConfigTester.check_config_arguments_init` is the only reader, and it returns before reading for composite\n"
        'configs such as ExpLLM\'s."""\n\n'
        "config_common_kwargs = {}\n"
    ),
}


def suite_folder(version=transformers.__version__):
    """The folder to put on `sys.path` to import `transformers_tests`."""
    return os.path.join(REPO_ROOT, ".venv", "transformers-tests", version)


def fetch(version=transformers.__version__):
    """Download the transformers sdist of `version` from the package index and unpack the suite; a no-op when done.

    The package is assembled in a scratch folder and moved into place whole: a killed run leaves nothing half made.
    """
    package = os.path.join(suite_folder(version), PACKAGE)
    if os.path.isdir(package):
        return package
    os.makedirs(suite_folder(version), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=suite_folder(version)) as scratch:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*command, "--dest", scratch, f"transformers=={version}"], check=True)
        (sdist,) = [name for name in os.listdir(scratch) if name.endswith(".tar.gz")]
        staged = os.path.join(scratch, PACKAGE)
        files = {relative: text.encode() for relative, text in STAND_INS.items()}
        with tarfile.open(os.path.join(scratch, sdist)) as archive:
            members = {m.name.split("/", 1)[1]: m for m in archive.getmembers() if m.name.count("/") == 2}
            for name in SUITE_FILES:
                if f"tests/{name}" not in members:
                    raise FileNotFoundError(f"{sdist} has no tests/{name}")
                files[name] = archive.extractfile(members[f"tests/{name}"]).read()
        for relative, content in files.items():
            folder = os.path.join(staged, os.path.dirname(relative))
            os.makedirs(folder, exist_ok=True)
            open(os.path.join(folder, "__init__.py"), "a").close()
            with open(os.path.join(staged, relative), "wb") as file:
                file.write(content)
        os.replace(staged, package)
    return package


if __name__ == "__main__":
    print(f"transformers {transformers.__version__} common tests in {fetch()}")
