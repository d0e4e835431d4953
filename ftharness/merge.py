"""`python -m ftharness.merge RUN_DIR`: fold a run's LoRA adapter into its base and save a standalone model.

The result (safetensors weights, tokenizer, chat template) loads with transformers' `AutoModelForCausalLM`
alone, without peft (ftharness/model/merge.py). A run that cannot be merged is one line on stderr, exit code 2.
"""

import argparse
from pathlib import Path
from typing import List, Optional

from ftharness.model.hardware import TORCH_DTYPES
from ftharness.model.merge import RunDirError, merge_run, read_adapter_run
from ftharness.ui.console import quiet_library_notices


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ftharness.merge", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="a finished run directory with an adapter/ folder")
    parser.add_argument("--output", type=Path, metavar="DIR",
                        help="where to write the merged model (default: RUN_DIR/merged)")
    parser.add_argument("--dtype", choices=sorted(TORCH_DTYPES),
                        help="dtype of the merged weights (default: the dtype the run loaded its base in)")
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    quiet_library_notices()
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        run = read_adapter_run(args.run_dir)
    except RunDirError as error:
        parser.exit(2, f"ftharness.merge: error: {error}\n")
    output = args.output or run.path / "merged"
    if output.exists() and (output.is_file() or any(output.iterdir())):
        parser.exit(2, f"ftharness.merge: error: {output} exists and is not empty: remove it or pass --output\n")
    dtype = args.dtype or run.base_dtype
    if run.quantized:
        print(f"the run trained on a {run.cfg.lora.quantization} base, which cannot be merged: merging into the "
              f"base reloaded unquantized in {dtype} instead")
    merge_run(run, output, dtype)
    print(f"merged {run.adapter_dir} into {run.cfg.model.name_or_path} ({dtype}, unquantized) -> {output}\n"
          f"load it without peft: AutoModelForCausalLM.from_pretrained({str(output)!r})")


if __name__ == "__main__":
    main()
