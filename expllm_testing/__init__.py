"""Offline stand-ins for what the release normally downloads or pays for, used by the tests, the demo and the
benchmarks: tiny DINOv2 / Llama towers with a tokenizer trained in-process and their short head-start training
(`tiny.py`), and a local OpenAI-compatible HTTP server that can inject faults (`llm_server.py`).

Nothing here is part of the model's remote code or needed to use a trained ExpLLM.
"""
