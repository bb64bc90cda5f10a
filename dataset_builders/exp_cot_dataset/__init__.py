"""The Exp-CoT dataset: engine records in, a Hub dataset folder out, and the reader every consumer uses.

configs.py       the Parquet configs (rafdb, affectnet, all, synthetic, conversations): features and rows
card.py          the dataset card and its chart
build.py         the build and the Hub push (`python -m dataset_builders.exp_cot_dataset`)
local_images.py  `load_exp_cot` (a folder or Hub id, read fresh) and `with_local_images` (your licensed images)
"""

from .local_images import load_exp_cot, with_local_images

__all__ = ["load_exp_cot", "with_local_images"]
