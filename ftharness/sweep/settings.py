"""What a study is about: the settings every one of its trials shares, stored with the study when it is made.

A study is found by its name in its storage, and the presets name it (`name: default-study`) whatever the model,
data or trial budget. Before it stored its settings, the demo's study followed by the same preset on an EmoLLM file
printed the demo's 18 SmolLM2 runs as the new data's results, in 4 s, and with a larger n_trials the new model's
trials joined the old study and were pruned against its curves. So a study records the composed config of its jobs
less what its trials vary (the searched keys) and less what changes no trial's result (NOT_SETTINGS), and a sweep
whose settings differ never joins it: it stops in one line naming up to three differing keys and the way out.

Keys that exist on one side only and are searched on neither (a key that a later version of ftharness added or
removed) are not differences: an upgrade does not orphan a study. The searched keys' ranges may change between runs
(each trial records its own values): a narrower lr range is the same question asked more closely.
"""

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional

import optuna
from omegaconf import DictConfig, OmegaConf

from ftharness.contract import StudyAttr
from ftharness.sweep.optuna_objects import SweepConfigError, shown_url
from ftharness.ui.tracking import flat_config

NOT_SETTINGS = (  # keys (and key prefixes) that change no trial's result
    "name", "verbose", "cache_dir", "tracker",  # names, folders, console, tracking
    "eval.batch_size", "eval.batch_tokens",  # how evaluation is batched
    "eval.max_new_tokens", "eval.prompts", "eval.num_prompts",  # the greedy answers shown before and after
    "train.save_adapter",
)
SHOWN_DIFFERENCES = 3  # differing keys a refusal names
SEARCHED = "searched"  # how a refusal shows a key that one side searches
UNKNOWN = object()  # a key one side does not have (added or removed by another version of ftharness)


@dataclass(frozen=True)
class StudySettings:
    """The settings of a study's trials: every fixed key's value, and the keys it searches."""

    fixed: Dict[str, Any]  # dotted key -> value, as JSON stores it
    searched: List[str]

    @classmethod
    def of(cls, job_config: DictConfig, searched: Iterable[str]) -> "StudySettings":
        """The settings of a sweep whose jobs get `job_config` (the composed config less its `hydra` node, with
        the command line's fixed overrides and none of the searched keys) and search the keys `searched`."""
        searched = sorted(set(searched))
        flat = flat_config(OmegaConf.to_container(job_config, resolve=True))
        fixed = {key: value for key, value in sorted(flat.items()) if not _under(key, [*NOT_SETTINGS, *searched])}
        return cls(json.loads(json.dumps(fixed)), searched)  # JSON's own types: compared as the study stores them

    @classmethod
    def stored(cls, study: optuna.Study) -> Optional["StudySettings"]:
        """The settings the study stored when it was made; None for a study made before they were stored."""
        record = study.user_attrs.get(StudyAttr.SETTINGS)
        return cls(record["fixed"], record["searched"]) if record else None

    def store(self, study: optuna.Study) -> None:
        study.set_user_attr(StudyAttr.SETTINGS, {"fixed": self.fixed, "searched": self.searched})

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps([self.fixed, self.searched], sort_keys=True).encode()).hexdigest()[:6]

    def differences(self, current: "StudySettings") -> List[str]:
        """`key: stored value (now current value)` for each key whose value or role differs."""
        rows = []
        for key in sorted({*self.fixed, *self.searched, *current.fixed, *current.searched}):
            was, now = self._value(key), current._value(key)
            if was is not UNKNOWN and now is not UNKNOWN and was != now:
                rows.append(f"{key}: {_shown(was)} (now {_shown(now)})")
        return rows

    def _value(self, key: str) -> Any:
        """The key's value; SEARCHED for a searched key; UNKNOWN where this side does not know the key."""
        if _under(key, self.searched):
            return SEARCHED
        return self.fixed.get(key, UNKNOWN)

    def lines(self) -> List[str]:
        """`key=value` per fixed key, then the searched keys: what `python -m ftharness.study --settings` prints."""
        return [f"{key}={_shown(value)}" for key, value in self.fixed.items()] + \
            [f"searched: {', '.join(self.searched)}"]


def check_settings(study: optuna.Study, current: StudySettings, storage_url: str, name_key: str) -> Optional[str]:
    """Raise when the study was made with other settings (the way out renames it through `name_key`); store them in
    a study that has none. Returns a note for the console when the study had none but trials already (made by an
    earlier ftharness), else None."""
    stored = StudySettings.stored(study)
    if stored is None:
        current.store(study)
        if study.get_trials(deepcopy=False):
            return (f"study {study.study_name} has no record of its settings (made by an earlier ftharness): "
                    "it takes this sweep's")
        return None
    differences = stored.differences(current)
    if differences:
        more = len(differences) - SHOWN_DIFFERENCES
        shown = "; ".join(differences[:SHOWN_DIFFERENCES]) + (f"; and {more} more" if more > 0 else "")
        raise SweepConfigError(
            f"study {study.study_name} in {shown_url(storage_url)} was run with other settings: {shown}. This sweep "
            f"is another study: give it its own name ({name_key}={study.study_name}-{current.digest}) or storage "
            "(hydra.sweeper.storage=...)")
    return None


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in prefixes)


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
