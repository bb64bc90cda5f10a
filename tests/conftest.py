"""Shared fixtures: tiny random towers saved as Hub-style folders, and an ExpLLM built from them."""

import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFICIAL_DIR = os.path.join(REPO_ROOT, "..", "shared", "reference", "expllm_official")


def pytest_configure(config):
    """A `datasets` cache of this run's own: the user's cache can hold stale rows of folders named like the tests'
    (`datasets` keys a local folder's cache by its name and README, not its contents). Subprocesses inherit it."""
    import tempfile

    os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="expllm-tests-datasets-")
    # Markers that transformers' common tests (tests/test_transformers_common.py) put on theirs.
    for marker in ("accelerate_tests", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test",
                   "torch_compile_test", "order"):  # fmt: skip
        config.addinivalue_line("markers", f"{marker}: a marker of transformers' common tests")


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory):
    from expllm_testing.tiny import save_tiny_backbones

    return save_tiny_backbones(str(tmp_path_factory.mktemp("tiny_backbones")))


@pytest.fixture()
def tiny_model(tiny_backbones):
    """A fresh (model, processor) pair per test, so tests may train or modify it."""
    import torch

    from modeling_expllm.modeling_expllm import ExpLLMForConditionalGeneration

    torch.manual_seed(0)
    model, processor = ExpLLMForConditionalGeneration.from_backbones(*tiny_backbones)
    return model.eval(), processor


def run_isolated(script, *args, timeout=300):
    """Run a Python script in a fresh interpreter where this project's packages cannot be imported, the way a Hub
    user without the project installed runs it. Returns stdout; raises with stderr on failure."""
    blocker = (
        "import sys, importlib.abc\n"
        "class _BlockProject(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('modeling_expllm', 'dataset_builders'):\n"
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
