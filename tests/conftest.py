"""Shared fixtures: tiny random towers saved as Hub-style folders, and an ExpLLM built from them. Shared helpers that
are not fixtures live in tests/helpers.py."""

import os

import pytest


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


@pytest.fixture(scope="session")
def trained_model_folder(tmp_path_factory):
    """A tiny ExpLLM trained to read synthetic faces' labels (about half a minute), shared by the tests of what stands
    on a working model: the face analyser, the Hub folders, the Space, the endpoint handler."""
    from expllm_testing.tiny import train_tiny_expression_model

    return train_tiny_expression_model(str(tmp_path_factory.mktemp("trained") / "expllm-tiny"))
