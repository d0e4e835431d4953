"""Llama models of named shapes with random weights, for speed and memory figures where no weights can be
downloaded: right for speed and memory, not for learning.

The model is written as safetensors shards, tensor by tensor, from its shapes on the meta device: a 7B model never
sits whole in memory, only one shard (`shard_gb`, 2 GB by default) at a time. Linear and embedding weights are
drawn from N(0, 0.02) (transformers' `initializer_range`), norms are ones, as a fresh Llama of that config.

    python benchmarks/random_model.py SHAPE FOLDER --config-only     # config.json alone (1 KB): memory estimates
    python benchmarks/random_model.py SHAPE FOLDER --tokenizer DIR   # the weights too (13.8 GB for a 7B shape)
"""

import argparse
import json
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import torch

# Llama-architecture shapes (the vocabulary grows to the tokenizer's where that is larger).
RANDOM_SHAPES = {
    "deepseek-llm-7b": dict(hidden_size=4096, num_hidden_layers=30, intermediate_size=11008, num_attention_heads=32,
                            num_key_value_heads=32, vocab_size=102400),
    "llama-2-7b": dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=11008, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000),
    "llama-3.1-8b": dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=14336, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256),
    "deepseek-llm-7b-narrow": dict(hidden_size=64, num_hidden_layers=30, intermediate_size=128, num_attention_heads=4,
                                   num_key_value_heads=4, vocab_size=0),  # its structure at a CPU's width (step_ops.py)
    "tiny": dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=0),  # for tests
}
INIT_STD = 0.02  # transformers' default initializer_range for Llama


def random_config(shape: str, tokenizer=None):
    """The LlamaConfig of `shape`; with a tokenizer, its special tokens and at least its vocabulary."""
    from transformers import LlamaConfig

    dims = dict(RANDOM_SHAPES[shape])
    if tokenizer is None:  # the shape alone: what a memory estimate reads
        return LlamaConfig(**dims, max_position_embeddings=4096, tie_word_embeddings=False, dtype="bfloat16")
    dims["vocab_size"] = max(dims["vocab_size"], len(tokenizer))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return LlamaConfig(**dims, max_position_embeddings=4096, tie_word_embeddings=False, dtype="bfloat16",
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)


def _shapes(config) -> List[Tuple[str, torch.Size]]:
    """(name, shape) of every weight the model saves, from the model built on the meta device (no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    return [(name, tensor.shape) for name, tensor in skeleton.state_dict().items()]


def _shards(shapes: List[Tuple[str, torch.Size]], shard_bytes: float) -> Iterator[List[Tuple[str, torch.Size]]]:
    """The weights in save order, grouped into shards of about `shard_bytes` (bf16) each."""
    shard, size = [], 0
    for name, shape in shapes:
        if shard and size + 2 * shape.numel() > shard_bytes:
            yield shard
            shard, size = [], 0
        shard.append((name, shape))
        size += 2 * shape.numel()
    if shard:
        yield shard


def _random_tensor(name: str, shape: torch.Size, generator: torch.Generator, device: str) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=torch.bfloat16)
    values = torch.randn(shape, generator=generator, device=device, dtype=torch.float32).mul_(INIT_STD)
    return values.to(torch.bfloat16).cpu()


def build_random_model(shape: str, tokenizer_dir: str, target: Path, device: str = "cpu", shard_gb: float = 2.0,
                       seed: int = 0) -> Dict[str, float]:
    """A Llama of `shape` with random bf16 weights and the tokenizer of `tokenizer_dir`, saved in `target` as
    safetensors shards and their index; drawn on `device` (a GPU draws a 7B model in seconds). Returns its
    parameter count and bytes."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = random_config(shape, tokenizer)
    shards = list(_shards(_shapes(config), shard_gb * 1e9))
    generator = torch.Generator(device=device).manual_seed(seed)
    target.mkdir(parents=True, exist_ok=True)
    weight_map, total = {}, 0
    for number, shard in enumerate(shards, 1):
        file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        tensors = {name: _random_tensor(name, size, generator, device) for name, size in shard}
        save_file(tensors, target / file, metadata={"format": "pt"})
        weight_map.update((name, file) for name in tensors)
        total += sum(t.numel() for t in tensors.values())
        del tensors
    index = {"metadata": {"total_size": 2 * total}, "weight_map": weight_map}
    (target / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    tokenizer.save_pretrained(target)
    config.save_pretrained(target)  # last: a folder with config.json is complete
    return {"parameters": total, "bytes": 2 * total, "shards": len(shards), "vocab_size": config.vocab_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", choices=sorted(RANDOM_SHAPES))
    parser.add_argument("target", type=Path, help="the model folder to write")
    parser.add_argument("--config-only", action="store_true", help="config.json alone: the shape, no weights")
    parser.add_argument("--tokenizer", help="the folder of the tokenizer to ship with the weights")
    args = parser.parse_args()
    if args.config_only:
        random_config(args.shape).save_pretrained(args.target)
    elif args.tokenizer:
        print(build_random_model(args.shape, args.tokenizer, args.target))
    else:
        parser.error("give --config-only, or --tokenizer DIR to write the weights too")


if __name__ == "__main__":
    main()
