"""Prompt templates: how a canonical example becomes a (prompt, response) pair.

A small fixed table keyed by name; users with their own format pass a :class:`PromptTemplate` object instead of
a name. Formatting uses ``str.format`` on the template only, so braces inside example text are safe.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedpeft.errors import ConfigError


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt format over the canonical fields ``instruction``, ``input``, ``output``, ``task``.

    Parameters
    ----------
    name:
        Table key.
    prompt:
        Format string of the prompt.
    response:
        Format string of the response (what the loss is computed on).
    prompt_no_input:
        Prompt used when ``input`` is empty (``None``: always :attr:`prompt`).
    add_eos:
        Whether tokenization appends EOS to the response by default: True for generation so the model learns to
        stop; False for label-word classification, which scores only the first response token.
    """

    name: str
    prompt: str
    response: str = "{output}"
    prompt_no_input: str | None = None
    add_eos: bool = True


ALPACA = PromptTemplate(
    name="alpaca",
    prompt="### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
    prompt_no_input="### Instruction:\n{instruction}\n\n### Response:\n",
)

# Classification templates end the prompt right before the label word; the response starts with a space so its
# first token is the same " word" token that label_word_ids scores.
SST2_TEMPLATE = PromptTemplate(name="sst2", prompt="Review: {input}\nSentiment:", response=" {output}", add_eos=False)
QNLI_TEMPLATE = PromptTemplate(name="qnli", prompt="{input}\nAnswer:", response=" {output}", add_eos=False)
RTE_TEMPLATE = PromptTemplate(name="rte", prompt="{input}\nAnswer:", response=" {output}", add_eos=False)

#: Every named template.
TEMPLATES: dict[str, PromptTemplate] = {t.name: t for t in (ALPACA, SST2_TEMPLATE, QNLI_TEMPLATE, RTE_TEMPLATE)}


def template_names() -> list[str]:
    """Names accepted wherever a template name is configured."""
    return sorted(TEMPLATES)


def get_template(template: str | PromptTemplate) -> PromptTemplate:
    """Look a template up by name (a :class:`PromptTemplate` passes through).

    Raises
    ------
    ConfigError
        Field ``template`` with the known names.
    """
    if isinstance(template, PromptTemplate):
        return template
    try:
        return TEMPLATES[template]
    except KeyError:
        raise ConfigError("template", template, template_names()) from None


def build_prompt(example: Mapping[str, Any], template: str | PromptTemplate) -> tuple[str, str]:
    """Render one example as ``(prompt, response)``.

    Parameters
    ----------
    example:
        A canonical row (``instruction``, ``input``, ``output``, ``task``; missing text fields read as ``""``).
    template:
        Template name or object.

    Returns
    -------
    tuple[str, str]
        The prompt (no loss) and the response (loss); their concatenation is the training text.

    Examples
    --------
    >>> build_prompt({"instruction": "Say hi.", "input": "", "output": "hi"}, "alpaca")
    ('### Instruction:\\nSay hi.\\n\\n### Response:\\n', 'hi')
    """
    tpl = get_template(template)
    fields = {key: str(example.get(key) or "") for key in ("instruction", "input", "output", "task")}
    fmt = tpl.prompt_no_input if (tpl.prompt_no_input is not None and not fields["input"].strip()) else tpl.prompt
    try:
        return fmt.format(**fields), tpl.response.format(**fields)
    except (KeyError, IndexError) as err:
        raise ConfigError("template", tpl.name, f"placeholders among {sorted(fields)} (got {err})") from None
