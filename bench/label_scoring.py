"""How fast is the label-probability call? Prints, for one small random ExpLLM and the same synthetic faces, measured
in one run:

  label scoring / plain forward over the prompt   (the floor it cannot beat; goal: within 1.3x)
  label scoring / greedy generation of the answer (official protocol: up to 100 new tokens)

    python bench/label_scoring.py [--batch-size 8] [--image-size 224] [--repeats 5] [--device cpu]
"""

import argparse
import statistics
import tempfile
import time

import torch

from dataset_builders.exp_cot.synthetic_faces import generate_faces
from expllm_testing.tiny import save_tiny_backbones
from modeling_expllm.modeling_expllm import ExpLLMForConditionalGeneration
from modeling_expllm.vocabulary import EXPRESSION_LABELS


def median_seconds(function, repeats, device):
    function()  # warm-up: allocator, kernels, caches
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--vision-hidden-size", type=int, default=128)
    parser.add_argument("--text-hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as folder:
        backbones = save_tiny_backbones(
            folder,
            image_size=args.image_size,
            vision_hidden_size=args.vision_hidden_size,
            vision_layers=args.layers,
            text_hidden_size=args.text_hidden_size,
            text_layers=args.layers,
        )
        model, processor = ExpLLMForConditionalGeneration.from_backbones(*backbones)
    model.to(device).eval()
    faces = [face.image for face in generate_faces(args.batch_size, seed=0)]
    inputs = processor.expression_inputs(faces, labels=EXPRESSION_LABELS).to(device)
    prompt_inputs = {key: inputs[key] for key in ("input_ids", "attention_mask", "pixel_values")}

    with torch.no_grad():
        scoring = median_seconds(lambda: model.predict_expression(**inputs), args.repeats, device)
        forward = median_seconds(lambda: model(**prompt_inputs, logits_to_keep=1), args.repeats, device)

        def greedy():
            # A random model never says end-of-turn, so this is the protocol's worst case: all 100 tokens.
            return model.generate(**prompt_inputs, max_new_tokens=args.max_new_tokens, do_sample=False)

        generation = median_seconds(greedy, max(1, args.repeats // 2), device)
        new_tokens = greedy().shape[1] - inputs["input_ids"].shape[1]

    print(
        f"device {device}, batch {args.batch_size}, prompt {inputs['input_ids'].shape[1]} tokens "
        f"({model.config.image_seq_length} image tokens), {len(EXPRESSION_LABELS)} candidate labels, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters"
    )
    print(f"plain forward over the prompt : {forward * 1000:8.1f} ms")
    print(f"label scoring (8 labels)      : {scoring * 1000:8.1f} ms")
    print(f"greedy generation ({new_tokens} tokens) : {generation * 1000:8.1f} ms")
    print(f"ratio scoring / forward    = {scoring / forward:.2f}x  (goal: <= 1.30x)")
    slower = generation / scoring
    print(f"ratio scoring / generation = {scoring / generation:.3f}x  (generation is {slower:.1f}x slower)")


if __name__ == "__main__":
    main()
