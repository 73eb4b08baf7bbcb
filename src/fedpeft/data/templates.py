"""Prompt templates: how a canonical example becomes a (prompt, response) pair.

A small fixed table keyed by name; users with their own format pass a :class:`PromptTemplate` object instead of
a name. Formatting uses ``str.format`` on the template only, so braces inside example text are safe.

Two kinds of entry, one interface (``bind`` to a tokenizer, ``render`` an example):

- :class:`PromptTemplate`: plain text formats (``alpaca`` for instructions, the label-word formats of the
  classification datasets); tokenization adds BOS / EOS itself.
- :class:`ChatTemplate` (``chat``): the model's own chat template (``tokenizer.chat_template``), user turn =
  instruction (+ input), assistant turn = output; the rendered text already carries the model's special tokens
  (turn markers, end-of-turn, BOS when the template writes it), so tokenization adds none.

:func:`choose_template` picks the template a dataset is encoded with: the configured name, else ``chat`` for an
instruction dataset when the tokenizer has a chat template, else the dataset's own template.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from fedpeft.errors import ConfigError

_TEXT_FIELDS = ("instruction", "input", "output", "task")


def _fields(example: Mapping[str, Any]) -> dict[str, str]:
    return {key: str(example.get(key) or "") for key in _TEXT_FIELDS}


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
    instruction:
        An instruction format: a dataset whose own template this is gets ``chat`` by default when the model's
        tokenizer has a chat template (see :func:`choose_template`). False for label-word formats.
    """

    name: str
    prompt: str
    response: str = "{output}"
    prompt_no_input: str | None = None
    add_eos: bool = True
    instruction: bool = False

    def bind(self, tokenizer: Any) -> PromptTemplate:
        """Plain text formats need no tokenizer: returns ``self``."""
        del tokenizer
        return self

    def render(self, example: Mapping[str, Any]) -> tuple[str, str]:
        """``(prompt, response)`` of one example (see :func:`build_prompt`)."""
        fields = _fields(example)
        no_input = self.prompt_no_input is not None and not fields["input"].strip()
        fmt = self.prompt_no_input if no_input and self.prompt_no_input is not None else self.prompt
        try:
            return fmt.format(**fields), self.response.format(**fields)
        except (KeyError, IndexError) as err:
            raise ConfigError("template", self.name, f"placeholders among {sorted(fields)} (got {err})") from None


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template (``tokenizer.chat_template`` set and non-empty)."""
    return bool(getattr(tokenizer, "chat_template", None))


def model_name(tokenizer: Any) -> str:
    """The model a tokenizer was loaded for, as error messages name it."""
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


@dataclass(frozen=True)
class ChatTemplate:
    """The model's own chat template: user turn = instruction (+ a blank line + input), assistant turn = output.

    The table entry is unbound; :meth:`bind` attaches a tokenizer (an error naming the model when it has no chat
    template). :meth:`render` gives the generation prompt (the conversation up to and including the assistant
    header, ``apply_chat_template(..., add_generation_prompt=True)``) and the answer text (the reference for
    generation metrics); :meth:`conversation` the whole rendered exchange, which is what training encodes.
    """

    name: str = "chat"
    tokenizer: Any = field(default=None, compare=False, repr=False)
    #: The rendered conversation ends the turn itself (the template's end-of-turn token): no EOS of ours.
    add_eos: bool = False
    instruction: bool = False

    def bind(self, tokenizer: Any) -> ChatTemplate:
        """This template rendering with ``tokenizer``'s chat template.

        Raises
        ------
        ConfigError
            Field ``template`` when the tokenizer has no chat template, naming the model.
        """
        if not has_chat_template(tokenizer):
            raise ConfigError(
                "template",
                self.name,
                f"a model whose tokenizer has a chat template (model {model_name(tokenizer)!r} has none; use "
                "'alpaca' or leave data.template unset)",
            )
        return replace(self, tokenizer=tokenizer)

    @staticmethod
    def messages(example: Mapping[str, Any], answer: bool = True) -> list[dict[str, str]]:
        """The conversation of one example: a user turn and (with ``answer``) the assistant turn."""
        fields = _fields(example)
        user = fields["instruction"]
        if fields["input"].strip():
            user = f"{user}\n\n{fields['input']}" if user else fields["input"]
        turns = [{"role": "user", "content": user}]
        if answer:
            turns.append({"role": "assistant", "content": fields["output"]})
        return turns

    def _apply(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        if self.tokenizer is None:
            raise ConfigError("template", self.name, "a template bound to a tokenizer: get_template('chat', tokenizer)")
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        return str(text)

    def render(self, example: Mapping[str, Any]) -> tuple[str, str]:
        """``(generation prompt, answer)``: the prompt ends with the assistant header; the answer is the output."""
        return self._apply(self.messages(example, answer=False), True), _fields(example)["output"]

    def conversation(self, example: Mapping[str, Any]) -> str:
        """The whole exchange as the chat template renders it (prompt, answer, end-of-turn and what follows)."""
        return self._apply(self.messages(example), False)


#: A named entry of :data:`TEMPLATES`.
Template = PromptTemplate | ChatTemplate

ALPACA = PromptTemplate(
    name="alpaca",
    prompt="### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
    prompt_no_input="### Instruction:\n{instruction}\n\n### Response:\n",
    instruction=True,
)

CHAT = ChatTemplate()

# Classification templates end the prompt right before the label word; the response starts with a space so its
# first token is the same " word" token that label_word_ids scores.
SST2_TEMPLATE = PromptTemplate(name="sst2", prompt="Review: {input}\nSentiment:", response=" {output}", add_eos=False)
QNLI_TEMPLATE = PromptTemplate(name="qnli", prompt="{input}\nAnswer:", response=" {output}", add_eos=False)
RTE_TEMPLATE = PromptTemplate(name="rte", prompt="{input}\nAnswer:", response=" {output}", add_eos=False)

#: Every named template.
TEMPLATES: dict[str, Template] = {t.name: t for t in (ALPACA, CHAT, SST2_TEMPLATE, QNLI_TEMPLATE, RTE_TEMPLATE)}


def template_names() -> list[str]:
    """Names accepted wherever a template name is configured."""
    return sorted(TEMPLATES)


def get_template(template: str | Template, tokenizer: Any = None) -> Template:
    """Look a template up by name (a template object passes through); with ``tokenizer``, bound to it.

    Raises
    ------
    ConfigError
        Field ``template`` with the known names; or, for ``chat``, naming the model whose tokenizer has no chat
        template.
    """
    if isinstance(template, str):
        try:
            tpl = TEMPLATES[template]
        except KeyError:
            raise ConfigError("template", template, template_names()) from None
    else:
        tpl = template
    return tpl if tokenizer is None else tpl.bind(tokenizer)


def choose_template(configured: str | Template | None, dataset_template: str, tokenizer: Any) -> Template:
    """The template a dataset is encoded with for this tokenizer, bound to it.

    ``configured`` (``data.template``) wins when set. Otherwise an instruction dataset (its own template is an
    instruction format such as ``alpaca``) gets ``chat`` when the tokenizer has a chat template; everything else,
    label-word classification datasets included, keeps its own template.

    Examples
    --------
    >>> from fedpeft.models import load_tokenizer
    >>> choose_template(None, "alpaca", load_tokenizer("tiny-small")).name  # no chat template
    'alpaca'
    """
    if configured is None:
        own = get_template(dataset_template)
        configured = CHAT.name if own.instruction and has_chat_template(tokenizer) else dataset_template
    return get_template(configured, tokenizer)


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """The token the chat template closes an assistant turn with (``[]`` without a chat template or when it
    closes the turn with plain text only).

    Found by rendering a conversation with a marker answer and taking the first special token after the marker:
    ``<|im_end|>`` for ChatML, ``<|eot_id|>`` for Llama 3, ``<end_of_turn>`` for Gemma, ``</s>`` for Llama 2.
    """
    if not has_chat_template(tokenizer):
        return []
    marker = "FEDPEFTENDOFANSWER"
    text = ChatTemplate(tokenizer=tokenizer).conversation({"instruction": "hi", "output": marker})
    if marker not in text:
        return []
    tail = text[text.rindex(marker) + len(marker) :]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
    return [int(i) for i in ids if i in special][:1]


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Token ids that end a generation: EOS and the chat template's end-of-turn token, without duplicates."""
    eos = getattr(tokenizer, "eos_token_id", None)
    ids = ([] if eos is None else [int(eos)]) + end_of_turn_ids(tokenizer)
    return list(dict.fromkeys(ids))


def build_prompt(example: Mapping[str, Any], template: str | Template, tokenizer: Any = None) -> tuple[str, str]:
    """Render one example as ``(prompt, response)``.

    Parameters
    ----------
    example:
        A canonical row (``instruction``, ``input``, ``output``, ``task``; missing text fields read as ``""``).
    template:
        Template name or object (``chat``: bound to a tokenizer, or give ``tokenizer``).
    tokenizer:
        The model's tokenizer, for ``chat``.

    Returns
    -------
    tuple[str, str]
        The prompt (no loss) and the response (loss); for plain templates their concatenation is the training
        text. For ``chat`` the prompt is the generation prompt and the response the answer text;
        :meth:`ChatTemplate.conversation` is the training text.

    Examples
    --------
    >>> build_prompt({"instruction": "Say hi.", "input": "", "output": "hi"}, "alpaca")
    ('### Instruction:\\nSay hi.\\n\\n### Response:\\n', 'hi')
    """
    return get_template(template, tokenizer).render(example)
