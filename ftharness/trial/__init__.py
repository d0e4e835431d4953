"""One trial, from a validated config to a run folder: the recipe (recipe), what differs per training method
(tasks), the Trainer and its arguments (trainer), the callbacks that record, guard and show its steps
(callbacks), its steps through compiled layers (compiled), the loss at the labelled positions (loss), and scoring
and answers (evaluation)."""

from ftharness.lazy import exports

__getattr__, __all__ = exports(__name__, {
    "recipe": ["evaluation_sets", "run_trial"],
    "tasks": ["TASKS", "Task"],
    "trainer": ["EvaluationClock", "LabelledLossTrainer", "optimizer_name", "training_arguments"],
    "callbacks": ["DivergenceGuard", "MetricsRecorder", "ProgressBars"],
    "compiled": ["CompiledSteps", "compiles"],
    "loss": ["labelled_log_likelihoods", "labelled_loss"],
    "evaluation": ["before_after_prompts", "candidate_accuracy", "greedy_answers", "whole_characters"],
})
