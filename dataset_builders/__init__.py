"""The Exp-CoT data engine and the dataset builder of the ExpLLM release.

Submodules are imported where they are used; importing this package does nothing else.
"""
