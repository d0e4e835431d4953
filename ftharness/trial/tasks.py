"""Training methods (`task.name`): what each trains on, with which model head and trainer, and how it is scored.

The trial recipe (ftharness/trial/recipe.py) is the same for every task; a task supplies the parts that differ:
- `sft`: causal-LM supervised fine-tuning on chats (loss on the assistant replies) or raw text; scored by
  the likelihood of answer candidates when the rows carry them.
- `orpo`: preference tuning with the odds-ratio loss (TRL's ORPOTrainer) on prompt / chosen / rejected rows;
  scored by how often the model finds the chosen reply more likely than the rejected one.
- `classification`: a sequence-classification head (trained in full) plus LoRA; scored by accuracy and F1.
"""

from pathlib import Path
from typing import Dict, List, Sequence

import torch
from datasets import Dataset
from omegaconf import DictConfig
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback

from ftharness.data.formats import CHAT_FORMATS
from ftharness.data.sources import DataError
from ftharness.data.splits import Splits
from ftharness.data.tokenization import make_collator, tokenize_rows
from ftharness.lazy import orpo
from ftharness.model.hardware import Hardware
from ftharness.trial.evaluation import before_after_prompts, candidate_accuracy, greedy_answers
from ftharness.trial.loss import with_host_facts
from ftharness.trial.trainer import LabelledLossTrainer, training_arguments


class Task:
    name = ""
    formats: Sequence[str] = ()
    model_kind = "causal-lm"  # or "sequence-classification"
    peft_task_type = "CAUSAL_LM"

    def check(self, splits: Splits) -> None:
        if splits.format not in self.formats:
            raise DataError(f"data.format={splits.format} does not fit task.name={self.name}, which trains on "
                            f"{', '.join(self.formats)}")

    def datasets(self, cfg: DictConfig, tokenizer, splits: Splits, cache_dir: Path, model_id: str):
        raise NotImplementedError

    def trainer(self, cfg: DictConfig, hw: Hardware, model, tokenizer, train_set, eval_set, run_dir: Path,
                callbacks: List[TrainerCallback]) -> Trainer:
        raise NotImplementedError

    def measure(self, cfg: DictConfig, model, tokenizer, splits: Splits) -> Dict[str, object]:
        """Test metrics and greedy answers to `eval.prompts`, for the model as it is now."""
        raise NotImplementedError


def _answers(cfg: DictConfig, model, tokenizer, splits: Splits) -> List[str]:
    chats = [prompt["messages"] for prompt in before_after_prompts(cfg, splits)]
    return greedy_answers(model, tokenizer, chats, cfg.eval.max_new_tokens)


class SFT(Task):
    name = "sft"
    formats = (*CHAT_FORMATS, "text")

    def datasets(self, cfg, tokenizer, splits, cache_dir, model_id):
        return [tokenize_rows(tokenizer, rows, cfg.data.max_length, cfg.data.train_on, cache_dir, model_id)
                for rows in (splits.train, splits.eval)]

    def trainer(self, cfg, hw, model, tokenizer, train_set, eval_set, run_dir, callbacks):
        return LabelledLossTrainer(model=model, args=training_arguments(cfg, hw, run_dir, prediction_loss_only=True),
                                   train_dataset=train_set, eval_dataset=eval_set,
                                   data_collator=with_host_facts(make_collator(tokenizer, cfg.data.packing)),
                                   processing_class=tokenizer, callbacks=callbacks,
                                   eval_batch_tokens=cfg.eval.batch_tokens, share_prefix=cfg.train.share_prefix)

    def measure(self, cfg, model, tokenizer, splits):
        result = {"answers": _answers(cfg, model, tokenizer, splits)}
        if splits.test and "candidates" in splits.test[0]:
            result["test_accuracy"] = candidate_accuracy(model, tokenizer, splits.test, cfg)
        return result


class ORPO(Task):
    name = "orpo"
    formats = ("preference",)

    def datasets(self, cfg, tokenizer, splits, cache_dir, model_id):
        return [Dataset.from_list(rows) for rows in (splits.train, splits.eval)]  # ORPOTrainer tokenizes them

    def trainer(self, cfg, hw, model, tokenizer, train_set, eval_set, run_dir, callbacks):
        ORPOConfig, ORPOTrainer = orpo()
        args = training_arguments(cfg, hw, run_dir, ORPOConfig, beta=cfg.task.beta, max_length=cfg.data.max_length,
                                  max_completion_length=cfg.data.max_length // 2,
                                  # its collator needs the prompt / chosen / rejected columns
                                  remove_unused_columns=False,
                                  # TRL computes the full logits of both replies: evaluate at the micro-batch that the
                                  # memory estimate sized, not at eval.batch_size (bounded by tokens in the other tasks)
                                  per_device_eval_batch_size=cfg.train.per_device_batch_size,
                                  include_num_input_tokens_seen="no")  # ORPO batches carry no input_ids to count
        return ORPOTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                           processing_class=tokenizer, callbacks=callbacks)

    def measure(self, cfg, model, tokenizer, splits):
        """Share of test pairs whose chosen reply is more likely than the rejected one."""
        pairs = [{"messages": row["prompt"],
                  "candidates": [row["chosen"][-1]["content"], row["rejected"][-1]["content"]],
                  "label": 0} for row in splits.test]
        result = {"answers": _answers(cfg, model, tokenizer, splits)}
        if pairs:
            result["test_accuracy"] = candidate_accuracy(model, tokenizer, pairs, cfg)
        return result


def _classification_metrics(predicted: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
    """Accuracy and macro F1 (every class weighs the same, whatever its share of the rows)."""
    f1s = []
    for label in labels.unique():
        true_pos = ((predicted == label) & (labels == label)).sum().item()
        precision_den, recall_den = (predicted == label).sum().item(), (labels == label).sum().item()
        f1s.append(2 * true_pos / (precision_den + recall_den) if precision_den + recall_den else 0.0)
    return {"accuracy": (predicted == labels).float().mean().item(), "f1": sum(f1s) / len(f1s)}


class Classification(Task):
    name = "classification"
    formats = ("classification",)
    model_kind = "sequence-classification"
    peft_task_type = "SEQ_CLS"

    def datasets(self, cfg, tokenizer, splits, cache_dir, model_id):
        return [self._encode(cfg, tokenizer, rows) for rows in (splits.train, splits.eval)]

    @staticmethod
    def _encode(cfg, tokenizer, rows):
        encoded = tokenizer([r["text"] for r in rows], truncation=True, max_length=cfg.data.max_length)
        return Dataset.from_dict({**encoded, "labels": [r["label"] for r in rows]})

    def trainer(self, cfg, hw, model, tokenizer, train_set, eval_set, run_dir, callbacks):
        def metrics(prediction):
            logits, labels = (torch.as_tensor(x) for x in (prediction.predictions, prediction.label_ids))
            return _classification_metrics(logits.argmax(-1), labels)

        return Trainer(model=model, args=training_arguments(cfg, hw, run_dir), train_dataset=train_set,
                       eval_dataset=eval_set, data_collator=DataCollatorWithPadding(tokenizer),
                       processing_class=tokenizer, compute_metrics=metrics, callbacks=callbacks)

    @torch.no_grad()
    def measure(self, cfg, model, tokenizer, splits):
        if not splits.test:
            return {"answers": []}
        model.eval()
        collate = DataCollatorWithPadding(tokenizer)
        test = self._encode(cfg, tokenizer, splits.test)
        predicted = []
        for start in range(0, len(test), cfg.eval.batch_size):
            batch = collate([test[i] for i in range(start, min(start + cfg.eval.batch_size, len(test)))])
            batch.pop("labels")
            predicted.append(model(**batch.to(model.device)).logits.argmax(-1).cpu())
        scores = _classification_metrics(torch.cat(predicted), torch.tensor(test["labels"]))
        return {"answers": [], "test_accuracy": scores["accuracy"], "test_f1": scores["f1"]}


TASKS: Dict[str, Task] = {task.name: task for task in (SFT(), ORPO(), Classification())}
