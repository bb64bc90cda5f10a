"""The Exp-CoT Engine (paper section III-B): face images with labels in, verified three-part CoT records out.

Modules, in the order a sample meets them:

    prompting.py  the versioned prompt templates (files under dataset_builders/exp_cot/prompts/) and the price table
    backends.py   who plays the LLM: the offline writer (default) or an OpenAI-compatible API, cached and retried
    cache.py      the response cache on disk (SQLite)
    pipeline.py   one sample: AU2Des -> Des2Exp -> verification -> reflection -> refinement -> record
    records.py    append-only JSON-lines records that survive a kill, and their summary
    runner.py     a whole run: Img2AU in worker processes, then the samples `concurrency` at a time
    __main__.py   the command line, `python -m dataset_builders.exp_cot`

Nothing is imported here, so that importing a submodule costs only what it uses.
"""
