"""Every shipped config composes; every invalid value fails validation with its key, value and what is allowed."""

import pytest
from hydra.errors import ConfigCompositionException

from conftest import CONF, FIXTURES, compose_config
from ftharness.config.validation import ConfigError, target_module_names, validate

GROUP_OPTIONS = [(group.name, option.stem) for group in sorted(CONF.iterdir())
                 if group.is_dir() and group.name not in ("local", "experiment")
                 for option in sorted(group.glob("*.yaml"))]


NEEDS_DATA = {"file": "messages.jsonl", "emollm": "emollm.json"}  # data presets for the user's own files


@pytest.mark.parametrize("group,option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_group_option_composes_and_validates(group, option):
    data = [f"data.path={FIXTURES / NEEDS_DATA[option]}"] if group == "data" and option in NEEDS_DATA else []
    validate(compose_config(f"{group}={option}", *data, tiny=False))


def test_a_data_preset_for_files_asks_for_the_path():
    with pytest.raises(ConfigError, match="data.path=None is invalid: your data file"):
        validate(compose_config("data=file", tiny=False))


@pytest.mark.parametrize("experiment", [p.stem for p in (CONF / "experiment").glob("*.yaml")])
def test_every_experiment_composes(experiment):
    validate(compose_config(f"experiment={experiment}"))


def test_qlora_presets_quantize_the_base():
    assert compose_config("lora=qlora").lora.quantization == "4bit"
    assert compose_config("experiment=qlora-llama-3.1-8b", tiny=False).lora.quantization == "4bit"


@pytest.mark.parametrize("override,key,allowed", [
    ("lora.r=0", "lora.r", "[1, inf]"),
    ("lora.dropout=1.5", "lora.dropout", "[0, 1)"),
    ("optim.lr=-1", "optim.lr", "(0, 10]"),
    ("lora.target_modules=[q_proj,w_proj]", "lora.target_modules", "q_proj"),
    ("lora.target_modules=everything", "lora.target_modules", "all-linear"),
    ("data.path=/nonexistent/chats.jsonl", "data.path", "existing"),
    ("model.name_or_path=embedded:nope", "model.name_or_path", "embedded:smollm2-135m-instruct"),
    ("model.name_or_path=/nonexistent/model", "model.name_or_path", "existing local folder"),
    ("data.format=yaml", "data.format", "sharegpt"),
    ("data.eval_size=0", "data.eval_size", "whole number"),
    ("data.train_size=2.5", "data.train_size", "whole number"),
    ("data.label_noise=1", "data.label_noise", "[0, 1)"),
    ("data.train_on=prompts", "data.train_on", "last"),
    ("model.chat_template=vicuna", "model.chat_template", "llama2"),
    ("train.precision=fp8", "train.precision", "bf16"),
    ("train.share_prefix=always", "train.share_prefix", "auto, true, false"),
    ("train.compile=sometimes", "train.compile", "auto, true, false"),
    ("model.attention=flash", "model.attention", "eager"),
    ("model.attention=flash_attention_2", "model.attention", "flash-attn package"),  # not installed here
    ("tracker.mode=online", "tracker.mode", "cloud"),
    ("objective.metric=bleu", "objective.metric", "eval_loss"),
    ("lora.scaling=sqrt", "lora.scaling", "standard, rslora"),
    ("optim.loraplus_ratio=0.5", "optim.loraplus_ratio", "1 or more"),
])
def test_invalid_values_name_key_value_and_allowed(override, key, allowed):
    with pytest.raises(ConfigError) as caught:
        validate(compose_config(override))
    message = str(caught.value)
    assert message.startswith(f"{key}=") and override.split("=", 1)[1].split(",")[-1].strip("[]") in message
    assert allowed in message


def test_a_boolean_in_an_error_shows_as_the_config_writes_it():
    with pytest.raises(ConfigError, match="^lora.target_modules=true is invalid: a named set"):
        validate(compose_config("lora.target_modules=true"))


def test_the_synthetic_task_may_have_no_test_split():
    validate(compose_config("data.test_size=0"))


def test_quantized_full_finetuning_is_refused():
    with pytest.raises(ConfigError, match="lora.quantization"):
        validate(compose_config("lora=none", "lora.quantization=4bit"))


def test_unknown_key_and_wrong_type_fail_at_composition():
    with pytest.raises(ConfigCompositionException, match="lora.rank"):
        compose_config("lora.rank=8")
    with pytest.raises(ConfigCompositionException, match="lora.r"):
        compose_config("lora.r=eight")


@pytest.mark.parametrize("value,expected", [
    ("all-linear", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    ("attention", ["q_proj", "k_proj", "v_proj", "o_proj"]),
    ("qk", ["q_proj", "k_proj"]),
    ("mlp", ["gate_proj", "up_proj", "down_proj"]),
    ("[q_proj,v_proj]", ["q_proj", "v_proj"]),
])
def test_target_module_sets_expand(value, expected):
    assert target_module_names(compose_config(f"lora.target_modules={value}")) == expected
