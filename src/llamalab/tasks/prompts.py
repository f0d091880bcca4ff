"""The one place prompts become tokens: training and evaluation both encode through here.

A prompt is the task's jinja2 template, used either as plain text or as the user turn of the
model's own chat template (never a hand-written imitation of it).
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import jinja2
import jinja2.meta

from llamalab.config import LlamalabError
from llamalab.runs.files import write_text_atomic
from llamalab.tasks.data import Example
from llamalab.tasks.task import Task

PromptFormat = Literal["plain", "chat"]


class _NoValue(ValueError):
    """A template printed a field that has no value (null, NaN): jinja would write "None" or "nan" into the prompt."""


def _no_value(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _printable(value: object) -> object:
    if _no_value(value):
        raise _NoValue
    return value


# `finalize` sees each {{ ... }} value as it is printed: `{% if title %}Title: {{ title }}{% endif %}` still skips
# an empty title, but a printed null is refused rather than written as "None".
_JINJA = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False,
                            finalize=_printable)


@functools.lru_cache(maxsize=64)
def _template(source: str) -> jinja2.Template:
    """A compiled prompt template (compiling takes ~1 ms, rendering a few µs: once per template, not per example)."""
    return _JINJA.from_string(source)


def example_start(template: str) -> tuple[Literal["opening", "later", "none"], str]:
    """How a plain-format generation that runs on into a made-up next example is recognised: a blank line, then
    the template's opening words (the first line of its literal start); a template that starts with a field
    (`{{ text }}\\nSentiment:`) has none, so there it is a blank line, then the template itself up to its first
    literal line (`run_on_pattern`)."""
    literals = [part.strip().split("\n")[0].strip() for part in _TAG.split(template)]
    if literals[0]:
        return "opening", literals[0]
    later = next((line for line in literals[1:] if line), "")
    return ("later", later) if later else ("none", "")


_TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_BLANK_LINE = r"\r?\n[ \t\r]*\n"  # Windows line breaks (\r\n) too
_SHAPING = re.compile(r"\{%|\{\{-|-\}\}")  # control blocks and whitespace trimming: what renders is not the source


def run_on_pattern(template: str) -> str | None:
    """The regex of a made-up next example in a plain generation (None: nothing literal to know one by). After a
    blank line: the opening words; or, for a template that starts with a field, the template up to the end of
    its first literal line, each field some text without a blank line, its line breaks as they are (so a
    paragraph of the answer that merely contains those words is not cut); where control blocks or trimmed
    whitespace make the rendered text differ from the source, text without a blank line and then that line."""
    kind, words = example_start(template)
    if kind == "opening":
        return _BLANK_LINE + r"\s*" + re.escape(words)
    if kind == "none":
        return None
    if _SHAPING.search(template):  # conditional text, trimmed whitespace: the literal line anywhere after a field
        return _BLANK_LINE + rf"(?:(?!{_BLANK_LINE}).)*?" + re.escape(words)
    pattern = []
    for part in re.split(f"({_TAG.pattern})", template, flags=re.DOTALL):
        if part.startswith("{{"):
            pattern.append(rf"(?:(?!{_BLANK_LINE}).)+?")  # a field: some text, no blank line in it
        elif part.startswith(("{%", "{#")):
            continue  # control and comments write nothing themselves
        elif part.strip():
            lead = part[: len(part) - len(part.lstrip())]
            pattern.append(_spacing(lead) + re.escape(part.lstrip().split("\n")[0].rstrip()))
            return _BLANK_LINE + "".join(pattern)
        else:
            pattern.append(_spacing(part))
    return None


def run_on_rule(template: str, list_labels: bool) -> str | None:
    """What `answer_text` does, in words, for the methods (None: a plain answer is not cut)."""
    kind, _ = example_start(template)
    if list_labels or kind == "opening":
        return "the answer ends where a blank line is followed by the prompt's opening words"
    if kind == "none":
        return None
    if _SHAPING.search(template):
        return ("the answer ends at a blank line followed by text without a blank line and then the template's "
                "first literal line")
    return ("the answer ends at a blank line followed by the template's start up to its first literal line (its "
            "fields as text without a blank line, its line breaks as written)")


def _spacing(whitespace: str) -> str:
    """Whitespace as a pattern: its line breaks exactly, spaces and tabs around them as any."""
    return r"[ \t]*" + r"\r?\n[ \t]*" * whitespace.count("\n")


@dataclass(frozen=True)
class Encoded:
    """Token ids of a prompt and of what follows it (an answer, or a label being scored)."""

    prompt_ids: list[int]
    answer_ids: list[int]

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.answer_ids


@dataclass(frozen=True)
class Prompter:
    """Renders and encodes a task's examples for one tokenizer in one prompt format."""

    task: Task
    tokenizer: object
    format: PromptFormat
    shots: tuple[Example, ...] = ()
    # Generating a label (instead of scoring each one) needs the allowed answers spelled out.
    list_labels: bool = False

    def user_text(self, example: Example) -> str:
        try:
            text = _template(self.task.prompt.template).render(**example.fields)
        except jinja2.UndefinedError as exc:
            # jinja says "'txt' is undefined": name the field, the template, and what the example does have.
            name = re.fullmatch(r"'(.+)' is undefined", exc.message or "")
            uses = f"field {name.group(1)!r}, which" if name else f"something ({exc.message}) that"
            raise LlamalabError(
                f"task {self.task.name!r}: prompt.template {self.task.prompt.template!r} uses {uses} example "
                f"{example.source} does not have; its fields: {', '.join(example.fields)}. Fix the template, or "
                "map a field of the data with `fields:` on its data file"
            ) from None
        except jinja2.TemplateSyntaxError as exc:
            raise LlamalabError(f"task {self.task.name!r}: prompt.template line {exc.lineno}: {exc.message}") from None
        except _NoValue:
            used = jinja2.meta.find_undeclared_variables(_JINJA.parse(self.task.prompt.template))
            empty = sorted(f for f in used if f in example.fields and _no_value(example.fields[f])) or ["a field"]
            raise LlamalabError(
                f"task {self.task.name!r}: prompt.template prints {', '.join(map(repr, empty))}, which example "
                f"{example.source} has no value for (null): give the row a value, or print it only when it has one "
                f"({{% if {empty[0]} %}}...{{% endif %}})"
            ) from None
        except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise LlamalabError(
                f"task {self.task.name!r}: prompt.template {self.task.prompt.template!r} fails on example "
                f"{example.source} ({type(exc).__name__}: {exc}); a template renders fields as text: fix it"
            ) from None
        if self.list_labels:
            choices = ", ".join(self.task.answer.verbalize(label) for label in self.task.answer.labels)
            text = f"Answer with exactly one of: {choices}.\n\n{text}"
        return text

    def prompt(self, example: Example) -> str:
        """The exact text the model sees before its answer."""
        if self.format == "chat":
            return self._chat_template(self.messages(example), add_generation_prompt=True)
        parts = [f"{self.task.prompt.system}\n\n"] if self.task.prompt.system else []
        for shot in self.shots:
            parts.append(self.user_text(shot) + self.continuation(self.task.answer.target(shot.answer)) + "\n\n")
        parts.append(self.user_text(example))
        return "".join(parts)

    def answer_text(self, generation: str) -> str:
        """A generation up to where the model starts another example: in plain format a model may run on past its
        answer, repeating the prompt's pattern (see `run_on_pattern`). Chat answers end at end-of-turn."""
        if self.format != "plain":
            return generation
        pattern = (_BLANK_LINE + r"\s*" + re.escape("Answer with exactly one of:") if self.list_labels
                   else run_on_pattern(self.task.prompt.template))
        cut = re.search(pattern, generation, flags=re.DOTALL) if pattern else None
        return generation[: cut.start()] if cut else generation

    def continuation(self, answer: str) -> str:
        """What follows the prompt for a given answer text (without an end-of-turn marker)."""
        return answer if self.format == "chat" else self.task.prompt.target_delimiter + answer

    def completion(self, example: Example) -> str:
        """The training target: the answer plus the end-of-turn marker, so the model learns to stop."""
        answer = self.task.answer.target(example.answer)
        if self.format == "plain":
            return self.continuation(answer) + (self.tokenizer.eos_token or "")
        prompt = self.prompt(example)
        full = self._chat_template(
            [*self.messages(example), {"role": "assistant", "content": answer}], add_generation_prompt=False
        )
        if not full.startswith(prompt):
            raise LlamalabError(
                "the model's chat template renders the conversation differently from its generation prompt; "
                "use prompt.format: plain for this model"
            )
        return full[len(prompt) :]

    def encode(self, prompt: str, continuation: str) -> Encoded:
        """Tokenize prompt + continuation the way lm-evaluation-harness does.

        The whole string is tokenized once and split where the prompt's own tokens end, so the
        answer tokens are the ones the model would really produce after this prompt. Trailing
        spaces of the prompt move to the continuation (they belong to the answer's first token).
        """
        stripped = prompt.rstrip(" ")
        continuation = prompt[len(stripped) :] + continuation
        special = self.format == "plain"  # chat templates write their own BOS
        whole = self.tokenizer(stripped + continuation, add_special_tokens=special)["input_ids"]
        context = self.tokenizer(stripped, add_special_tokens=special)["input_ids"]
        if whole[: len(context)] != context:
            # The boundary merged into one token: fall back to separate tokenization.
            answer = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
            return Encoded(context, answer)
        return Encoded(context, whole[len(context) :])

    def encode_training(self, example: Example) -> Encoded:
        return self.encode(self.prompt(example), self.completion(example))

    def messages(self, example: Example) -> list[dict[str, str]]:
        """The prompt as chat messages (what a chat API receives)."""
        messages = [{"role": "system", "content": self.task.prompt.system}] if self.task.prompt.system else []
        for shot in self.shots:
            messages.append({"role": "user", "content": self.user_text(shot)})
            messages.append({"role": "assistant", "content": self.task.answer.target(shot.answer)})
        messages.append({"role": "user", "content": self.user_text(example)})
        return messages

    def _chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise LlamalabError("this model's tokenizer has no chat template: use prompt.format: plain")
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )


def store_chat_template(tokenizer, folder: Path) -> dict[str, str | None]:
    """Write the tokenizer's chat template into a run folder; return its hash for the record."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return {"chat_template_sha256": None}
    write_text_atomic(folder / "chat_template.jinja", template)
    return {"chat_template_sha256": hashlib.sha256(template.encode()).hexdigest()}
