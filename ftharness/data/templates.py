"""Named chat templates, for base models whose tokenizer has none (`model.chat_template=<name>`).

Each template is the Jinja text transformers' `apply_chat_template` renders, with the usual variables:
`messages` (role / content dicts: system, user, assistant), `add_generation_prompt`, `bos_token` and
`eos_token`. The slots, per turn:
- system: how (and whether) a system prompt is printed — some formats fold it into the first user turn;
- user: the prompt wrapper, which ends where the assistant's reply starts (the generation prompt);
- assistant: the reply and its end-of-turn marker, which the loss covers along with the reply.
Assistant-only labels never depend on markers inside these texts: `encode_chat` (ftharness/data/tokenization.py)
finds each reply by rendering message prefixes, so a template added here needs no other change.
"""

from typing import Dict, Optional

CHAT_TEMPLATES: Dict[str, str] = {
    # <|im_start|>role\ncontent<|im_end|>\n — Qwen, SmolLM, many others.
    "chatml": (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    # Llama-2-chat: <s>[INST] <<SYS>>\nsystem\n<</SYS>>\n\nuser [/INST] reply </s>
    "llama2": (
        "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}"
        "{% set messages = messages[1:] %}{% else %}{% set sys = none %}{% endif %}"
        "{% for m in messages %}"
        "{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' }}"
        "{% if loop.first and sys %}{{ '<<SYS>>\\n' + sys + '\\n<</SYS>>\\n\\n' }}{% endif %}"
        "{{ m['content'] + ' [/INST]' }}"
        "{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}"
        "{% endfor %}"
    ),
    # Llama-3 / 3.1 instruct headers.
    "llama3": (
        "{{ bos_token }}{% for m in messages %}"
        "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
        "{% endif %}"
    ),
    # deepseek-llm-chat: "User: ...\n\nAssistant: reply<eos>", a system prompt printed as a plain first line.
    "deepseek": (
        "{{ bos_token }}{% for m in messages %}"
        "{% if m['role'] == 'system' %}{{ m['content'] + '\\n\\n' }}"
        "{% elif m['role'] == 'user' %}{{ 'User: ' + m['content'] + '\\n\\n' }}"
        "{% else %}{{ 'Assistant: ' + m['content'] + eos_token }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
    ),
    # Alpaca: "### Instruction:\n...\n\n### Response:\nreply<eos>", a system prompt as a preamble.
    "alpaca": (
        "{% for m in messages %}"
        "{% if m['role'] == 'system' %}{{ m['content'] + '\\n\\n' }}"
        "{% elif m['role'] == 'user' %}{{ '### Instruction:\\n' + m['content'] + '\\n\\n' }}"
        "{% else %}{{ '### Response:\\n' + m['content'] + eos_token + '\\n\\n' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
    ),
    # No markup: turns separated by blank lines, replies ended by eos. For base models.
    "plain": (
        "{% for m in messages %}"
        "{% if m['role'] == 'assistant' %}{{ m['content'] + eos_token + '\\n\\n' }}"
        "{% else %}{{ m['content'] + '\\n\\n' }}{% endif %}"
        "{% endfor %}"
    ),
}


def resolve_chat_template(value: Optional[str]) -> Optional[str]:
    """A registry name becomes its Jinja text; Jinja text (or None: the tokenizer's own) passes through."""
    return CHAT_TEMPLATES.get(value, value) if value else None
