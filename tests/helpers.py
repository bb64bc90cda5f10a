"""What the tests share besides fixtures: the repository root, the official reference files, and a fresh interpreter
that cannot import the project (a Hub user's)."""

import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The official annotation files (DESIGN section 5): the checkout's sibling `shared/` folder, or wherever
# EXPLLM_OFFICIAL_DIR points.
OFFICIAL_DIR = os.environ.get(
    "EXPLLM_OFFICIAL_DIR", os.path.join(REPO_ROOT, "..", "shared", "reference", "expllm_official")
)
OFFICIAL_DESCRIPTIONS = os.path.join(OFFICIAL_DIR, "rafdb_emo_au_val_mini_description.json")
PROJECT_PACKAGES = ("modeling_expllm", "dataset_builders", "training", "expllm_testing")

needs_official_files = pytest.mark.skipif(
    not os.path.isfile(OFFICIAL_DESCRIPTIONS),
    reason=(
        f"the official ExpLLM annotation files are not in {OFFICIAL_DIR}: get the anno_json/ folder of the official "
        "release (starhiking/ExpLLM-TMM) and set EXPLLM_OFFICIAL_DIR to it"
    ),
)


def run_isolated(script, *args, timeout=300):
    """Run a Python script in a fresh interpreter where this project's packages cannot be imported, the way a Hub
    user without the project installed runs it. Returns stdout; raises with stderr on failure."""
    blocker = (
        "import sys, importlib.abc\n"
        "class _BlockProject(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {PROJECT_PACKAGES!r}:\n"
        "            raise ImportError(f'{name} is part of the project and must not be needed')\n"
        "sys.meta_path.insert(0, _BlockProject())\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    result = subprocess.run(
        [sys.executable, "-c", blocker + script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
        env=env,
    )
    if result.returncode != 0:
        raise AssertionError(f"isolated script failed:\n{result.stderr[-4000:]}")
    return result.stdout
