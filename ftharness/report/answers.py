"""The base model's and each run's answers to the same prompts, side by side (`python -m ftharness.compare`).

Greedy answers through the chat template, one column per model: the base, then each run's adapter (a sweep
directory stands for its finished jobs). The base loads once, unquantized as a merge would use it, and the
adapters are swapped onto it one after another. Writes a Markdown table and a self-contained HTML page.
"""

import html
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ftharness.contract import SUMMARY_FILE
from ftharness.model.merge import AdapterRun, RunDirError, read_adapter_run
from ftharness.report.pages import html_page, html_table
from ftharness.report.runs import job_folders
from ftharness.ui.formatting import markdown_table

TITLE = "Base vs fine-tuned answers"
HTML_STYLE = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
              "th,td{border:1px solid #bbb;padding:.4em .6em;vertical-align:top;white-space:pre-wrap;text-align:left}"
              "th{background:#eee}")


def _sweep_jobs(sweep_dir: Path) -> List[AdapterRun]:
    """The jobs of a sweep that finished with an adapter, in job order; failed and pruned jobs are left out."""
    jobs = []
    for job_dir in job_folders(sweep_dir, SUMMARY_FILE):
        try:
            jobs.append(read_adapter_run(job_dir))
        except RunDirError:
            continue
    if not jobs:
        raise RunDirError(f"{sweep_dir}: no job of this sweep finished with a saved adapter")
    return jobs


def expand_runs(paths: Sequence[Path]) -> List[AdapterRun]:
    """Each run directory as given; a sweep directory (job folders with a summary.json) becomes its jobs."""
    runs: Dict[Path, AdapterRun] = {}
    for path in paths:
        is_sweep = path.is_dir() and not (path / "config.yaml").exists() and any(path.glob(f"*/{SUMMARY_FILE}"))
        for run in _sweep_jobs(path) if is_sweep else [read_adapter_run(path)]:
            runs.setdefault(run.path.resolve(), run)
    return list(runs.values())


def check_same_base(runs: Sequence[AdapterRun]) -> None:
    """One base column only makes sense for adapters of one base model (and one chat template)."""
    bases = {(run.summary.model_path, run.cfg.model.chat_template): run for run in runs}
    if len(bases) > 1:
        listed = "; ".join(f"{run.path}: {model}" + (f" with template {template}" if template else "")
                           for (model, template), run in bases.items())
        raise RunDirError(f"the runs have different base models, compare them separately ({listed})")


def read_prompts(path: Path) -> List[str]:
    """Prompts from a JSON list of strings, or one prompt per line of a text file (blank lines skipped)."""
    text = path.read_text()
    if text.lstrip().startswith("["):
        try:
            prompts = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"--prompts {path}: not a valid JSON list ({error})") from error
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ValueError(f"--prompts {path}: expected a non-empty JSON list of strings or one prompt per line")
    return prompts


def column_labels(runs: Sequence[AdapterRun]) -> List[str]:
    """Each run's summary run_name; the run directory is added where two names collide."""
    names = [run.name for run in runs]
    return [name if names.count(name) == 1 else f"{name} ({run.path})" for name, run in zip(names, runs)]


def default_prompts(run: AdapterRun) -> List[dict]:
    """The run's own before/after prompts: its eval.prompts, the embedded task's questions, or the first user turn
    of held-out dialogues of its data file with their reference replies (the file must still be there)."""
    from ftharness.data.splits import load_splits
    from ftharness.trial.evaluation import before_after_prompts

    return before_after_prompts(run.cfg, load_splits(run.cfg.data))


def as_prompts(texts: List[str], system_prompt: Optional[str]) -> List[dict]:
    """Prompts from a file as single-turn chats (after the runs' system prompt, if they had one)."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [{"messages": system + [{"role": "user", "content": t}], "prompt": t, "reference": None} for t in texts]


def generate_columns(runs: Sequence[AdapterRun], prompts: List[dict], max_new_tokens: int) -> Dict[str, List[str]]:
    """{"base": answers, <run label>: answers, ...}, generated on one base load with the adapters swapped in turn."""
    import torch
    from transformers import AutoTokenizer

    # Imported here: peft and bitsandbytes talk on stderr when imported, and error messages should stay one line.
    from ftharness.model.adapters import each_adapter_in_turn
    from ftharness.model.loading import load_unquantized_base
    from ftharness.trial.evaluation import greedy_answers

    first = runs[0]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = load_unquantized_base(first.cfg, first.base_dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(first.adapter_dir, trust_remote_code=first.cfg.model.trust_remote_code)
    chats = [prompt["messages"] for prompt in prompts]

    def answer(model) -> List[str]:
        return greedy_answers(model, tokenizer, chats, max_new_tokens)

    columns = {"base": answer(base)}
    adapted_models = each_adapter_in_turn(base, [run.adapter_dir for run in runs])
    # The generator goes first in zip, so zip runs it to its end, which removes the last adapter too.
    columns.update((label, answer(adapted)) for adapted, label in zip(adapted_models, column_labels(runs)))
    return columns


def answer_rows(prompts: List[dict], columns: Dict[str, List[str]]) -> List[Dict[str, str]]:
    """prompt | reference (when the prompts come from held-out dialogues) | base | each run."""
    with_reference = any(p["reference"] is not None for p in prompts)
    return [{"prompt": prompt["prompt"], **({"reference": prompt["reference"] or ""} if with_reference else {}),
             **{label: answers[i] for label, answers in columns.items()}} for i, prompt in enumerate(prompts)]


def answers_header(runs: Sequence[AdapterRun], max_new_tokens: int) -> List[str]:
    first = runs[0]
    lines = [f"Base: {first.cfg.model.name_or_path}, unquantized in {first.base_dtype}. "
             f"Greedy answers through its chat template, at most {max_new_tokens} new tokens."]
    if any(run.quantized for run in runs):
        lines.append("QLoRA adapters are applied to the unquantized base, as a merge would use them.")
    lines += [f"{label}: {run.path}" for label, run in zip(column_labels(runs), runs)]
    return lines


def markdown_report(rows: List[Dict[str, str]], header: List[str]) -> str:
    return f"# {TITLE}\n\n" + "".join(f"- {line}\n" for line in header) + "\n" + markdown_table(rows)


def html_report(rows: List[Dict[str, str]], header: List[str]) -> str:
    """The same table as one HTML page with inline style and no external resources; all text is escaped."""
    notes = "".join(f"<li>{html.escape(line)}</li>" for line in header)
    return html_page(TITLE, HTML_STYLE, f"<h1>{TITLE}</h1><ul>{notes}</ul>\n{html_table(rows)}\n")
