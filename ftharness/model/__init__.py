"""The model of a trial and the hardware it runs on: offline models (embedded), device and precision
(hardware), the base loaded once per process (loading) with sdpa masks built without host syncs (sdpa_masks), a fresh
LoRA adapter per trial (adapters) with faster LoRA layers (lean_lora), the memory a trial needs and takes (memory),
and an adapter merged into its base (merge)."""

from ftharness.lazy import exports

__getattr__, __all__ = exports(__name__, {
    "embedded": ["resolve_model_path"],
    "hardware": ["Hardware", "device_name", "resolve_hardware"],
    "loading": ["forget_base", "load_base", "load_unquantized_base"],
    "adapters": ["attach_adapter", "count_parameters", "detach_adapter", "each_adapter_in_turn", "load_adapted_base"],
    "lean_lora": ["CpuDropout"],
    "memory": ["MemoryEstimate", "PeakMemory", "estimate_memory"],
    "merge": ["AdapterRun", "RunDirError", "merge_run", "read_adapter_run"],
})
