"""Can the demo's tiny vision tower see the faint action units that the engine's CoTs name? (issue 15)

    make demo && OMP_NUM_THREADS=1 python bench/faint_units.py --out out \
        --eval out/eval-trained-label-first/eval_results.json --eval out/eval-trained-cot-first/eval_results.json

Every synthetic face carries one to three faint units outside its expression's prototype (intensity 0.03-0.15), and
the engine's Key Observations name every unit above zero, so the AU Jaccard goal depends on seeing them. Printed:

1. The AU Jaccard of a reader that names exactly the units above a threshold, against the references of the demo's
   held-out faces: the ceiling for a model that cannot see below that threshold.
2. For several stage-0 head starts of the vision tower (`expllm_testing.tiny.pretrain_vision_tower`, as `demo.py`
   runs it, then frozen), how well a linear probe on its patch tokens (what the projector hands the language model)
   tells, on the held-out faces, a present faint unit from an absent one: the ROC AUC, 0.5 being chance. The same
   probe's AUC over every unit of every face (mostly the prototype's, always present) is printed beside it, to show
   that the probe itself works.
3. For each `--eval` file (run_eval.py's results on those held-out faces), how many of the references' units above
   0.15 and below it the generated Key Observations name, and how many units a face they name that the face does not
   show (intensity 0).
"""

import argparse
import json
import os
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import demo  # noqa: E402

# name: (tower sizes over demo.TINY, stage-0 steps, presence weight, extra rendered faces).
HEAD_STARTS = {
    "demo": ({}, demo.VISION_STEPS, demo.PRESENCE_WEIGHT, 0),
    "no presence loss": ({}, demo.VISION_STEPS, 0.0, 0),
    "56-pixel input": ({"image_size": 56, "patch_size": 14}, demo.VISION_STEPS, demo.PRESENCE_WEIGHT, 0),
    "+6,000 faces, 2,400 steps": ({}, 2400, demo.PRESENCE_WEIGHT, 6000),
    "+6,000 faces, 2,400 steps, 128 wide x 3 layers": (
        {"vision_hidden_size": 128, "vision_layers": 3},
        2400,
        demo.PRESENCE_WEIGHT,
        6000,
    ),
}
THRESHOLDS = (0.15, 0.1, 0.05, 0.0)
FAINT_BELOW = 0.15  # the synthetic faces' faint units are drawn in 0.03-0.15


def jaccard(a, b):
    return len(a & b) / len(a | b) if a | b else 1.0


def roc_auc(scores, positive):
    """The chance that a random positive scores above a random negative (ties count half)."""
    positives, negatives = scores[positive], scores[~positive]
    above = (positives[:, None] > negatives[None, :]).float().mean()
    tied = (positives[:, None] == negatives[None, :]).float().mean()
    return (above + tied / 2).item()


def patch_tokens(vision_dir, images):
    """The frozen tower's final-LayerNorm patch tokens of `images`, flattened per image."""
    import torch
    from transformers import Dinov2Model

    from modeling_expllm.image_processing_expllm import ExpLLMImageProcessor

    model = Dinov2Model.from_pretrained(vision_dir).eval()
    size = model.config.image_size
    pixel_values = ExpLLMImageProcessor(size={"height": size, "width": size})(images, return_tensors="pt")
    num_patches = (size // model.config.patch_size) ** 2
    with torch.no_grad():
        return model(pixel_values=pixel_values["pixel_values"]).last_hidden_state[:, -num_patches:].flatten(1)


def probe_aucs(train_features, train_au, test_features, test_au, test_prototypes, steps=300):
    """A logistic probe per unit (present or not) on standardised features; its AUCs on the test faces for the faint
    units (outside each face's prototype) and for every unit."""
    import torch

    mean, spread = train_features.mean(0), train_features.std(0) + 1e-5
    train_features, test_features = (train_features - mean) / spread, (test_features - mean) / spread
    probe = torch.nn.Linear(train_features.shape[1], train_au.shape[1])
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-3, weight_decay=1e-4)
    present = (train_au > 0).float()
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(probe(train_features), present)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        scores = probe(test_features)
    faint = ~test_prototypes
    return roc_auc(scores[faint], test_au[faint] > 0), roc_auc(scores.flatten(), test_au.flatten() > 0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out", help="a demo output folder (its exp-cot dataset is used)")
    parser.add_argument("--head-start", action="append", choices=list(HEAD_STARTS), help="default: all")
    parser.add_argument("--eval", action="append", default=[], help="run_eval.py's eval_results.json (repeatable)")
    parser.add_argument("--skip-probes", action="store_true", help="parts 1 and 3 only")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from dataset_builders.exp_cot.cot_text import key_observation_units
    from dataset_builders.exp_cot.synthetic_faces import generate_faces, prototype_vector
    from dataset_builders.exp_cot_dataset import load_exp_cot
    from expllm_testing.tiny import pretrain_vision_tower, save_tiny_backbones
    from modeling_expllm.vocabulary import EXPRESSION_LABELS

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    dataset = load_exp_cot(os.path.join(args.out, "exp-cot"), "synthetic")
    train, test = dataset["train"], dataset["test"]

    print(f"1. Readers that name exactly the units above a threshold, against {len(test)} held-out references")
    references = [key_observation_units(cot["text"]) for cot in test["cot"]]
    for threshold in THRESHOLDS:
        named = [{unit for unit, value in enumerate(au) if value > threshold} for au in test["au"]]
        score = sum(jaccard(n, r) for n, r in zip(named, references)) / len(test)
        print(f"   units above {threshold:.2f}: mean AU Jaccard {score:.3f}")

    print("\n2. Linear probes on the frozen vision tower's patch tokens, held-out ROC AUC (0.5 is chance)")
    prototypes = torch.tensor([prototype_vector(EXPRESSION_LABELS[label]) for label in test["label"]]) > 0
    test_au, train_au = torch.tensor(test["au"]), torch.tensor(train["au"])
    for name in [] if args.skip_probes else args.head_start or list(HEAD_STARTS):
        sizes, steps, presence_weight, extra = HEAD_STARTS[name]
        started = time.time()
        images, action_units = list(train["image"]), list(train["au"])
        if extra:
            # Seed 21: neither engine run's (1, 2) nor stage 1's captions' (11).
            faces = list(generate_faces(extra, seed=21, size=112))
            images += [face.image for face in faces]
            action_units += [face.au for face in faces]
        with tempfile.TemporaryDirectory() as folder:
            vision_dir, _ = save_tiny_backbones(folder, **{**demo.TINY, **sizes})
            pretrain_vision_tower(vision_dir, images, action_units, steps=steps, presence_weight=presence_weight)
            train_features = patch_tokens(vision_dir, list(train["image"]))
            test_features = patch_tokens(vision_dir, list(test["image"]))
        faint, every = probe_aucs(train_features, train_au, test_features, test_au, prototypes)
        print(
            f"   {name}: faint units {faint:.3f}, every unit {every:.3f} "
            f"({len(images)} faces, {steps} steps, presence weight {presence_weight}; {time.time() - started:.0f} s)"
        )

    if args.eval:
        print("\n3. The units the generated Key Observations name, against the reference's")
    for path in args.eval:
        name_faint_and_strong(path, test, references)


def name_faint_and_strong(path, test, references):
    from dataset_builders.exp_cot.cot_text import key_observation_units

    with open(path) as file:
        samples = json.load(file)["samples"]
    if [sample.get("file_name") for sample in samples] != list(test["file_name"]):
        raise ValueError(f"{path}: its samples are not the held-out faces of this dataset, in order")
    strong = faint = named_strong = named_faint = absent = 0
    for sample, au, reference in zip(samples, test["au"], references):
        named = key_observation_units(sample["cot"]["generated"])
        strong += sum(au[unit] >= FAINT_BELOW for unit in reference)
        faint += sum(au[unit] < FAINT_BELOW for unit in reference)
        named_strong += sum(au[unit] >= FAINT_BELOW for unit in reference & named)
        named_faint += sum(au[unit] < FAINT_BELOW for unit in reference & named)
        absent += sum(au[unit] == 0 for unit in named)
    print(
        f"   {path}: units above 0.15 named {named_strong}/{strong} ({named_strong / strong:.1%}), faint ones "
        f"{named_faint}/{faint} ({named_faint / faint:.1%}); units not on the face named {absent / len(samples):.2f} "
        "a face"
    )


if __name__ == "__main__":
    main()
