"""What `train_sft.py` trains on and with: the training samples (stage-1 captions, stage-2 FER and CoT conversations
mixed 0.75:0.25), the official face augmentations, the collator that puts loss on the answers only, the checks that
run before any compute, and the stage-1 caption pairs of synthetic faces the demo uses.

Submodules are imported where they are used; importing this package does nothing else.
"""
