"""What the tests share besides fixtures: the repository root, the official reference files, and a fresh interpreter
that cannot import the project (a Hub user's)."""

import os

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The official annotation files (DESIGN section 5): the checkout's sibling `shared/` folder, or wherever
# EXPLLM_OFFICIAL_DIR points.
OFFICIAL_DIR = os.environ.get(
    "EXPLLM_OFFICIAL_DIR", os.path.join(REPO_ROOT, "..", "shared", "reference", "expllm_official")
)
OFFICIAL_DESCRIPTIONS = os.path.join(OFFICIAL_DIR, "rafdb_emo_au_val_mini_description.json")

needs_official_files = pytest.mark.skipif(
    not os.path.isfile(OFFICIAL_DESCRIPTIONS),
    reason=(
        f"the official ExpLLM annotation files are not in {OFFICIAL_DIR}: get the anno_json/ folder of the official "
        "release (starhiking/ExpLLM-TMM) and set EXPLLM_OFFICIAL_DIR to it"
    ),
)


def run_isolated(script, *args, timeout=300):
    """Run a Python script in a fresh interpreter where this project's packages cannot be imported, the way a Hub
    user without the project installed runs it (the publish command's own check). Returns stdout; fails the test with
    stderr otherwise."""
    from model_card.publish import ValidationError, run_without_project

    try:
        return run_without_project(script, *args, cwd="/", timeout=timeout)
    except ValidationError as error:
        raise AssertionError(str(error)) from None
