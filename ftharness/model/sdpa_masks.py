"""sdpa attention masks built without host syncs.

Before building a batch's mask for sdpa, transformers checks on the device whether it may skip it (no row padded:
`padding_mask.all()`, and a second check on a slice): each check reads a value back, a host sync that a GPU waits for.
The 7B preset's structure (micro-batch 2 x accumulation 8) made 27 of them an optimizer step, the stock loop's own
syncs left aside (benchmarks/step_ops.py with `train.precision=fp32`, where attention is sdpa; bf16 on a CPU takes
eager attention, which never checks). The harness knows on the host whether a batch is padded: the training
collator leaves the mask out of a batch without padding (ftharness/trial/loss.py `with_host_facts`), and sdpa then
runs causal without a mask. So a batch that comes with a mask is padded, and its mask is built at once, skipping
nothing: the same attention, no sync.
"""

from transformers.masking_utils import AttentionMaskInterface, sdpa_mask


def _sdpa_mask_without_checks(*args, attention_mask=None, allow_is_causal_skip: bool = True, **kwargs):
    """transformers' sdpa mask, with its skip (and the checks that decide it) only where no padding mask came."""
    return sdpa_mask(*args, attention_mask=attention_mask,
                     allow_is_causal_skip=allow_is_causal_skip and attention_mask is None, **kwargs)


def use_sdpa_masks_without_syncs() -> None:
    """Make transformers build every sdpa-attention model's masks this way, in this process."""
    AttentionMaskInterface.register("sdpa", _sdpa_mask_without_checks)
