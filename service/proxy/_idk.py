"""Adding an "I don't know" choice to a multiple-choice request (docs/idk.md).

When a model's configuration (`add_idk_option: true`) or the request
(`calibration.add_idk_option: true`) asks for it, the gateway appends an IDK choice to the
options it scores and shows that choice to the model. Choosing it is an abstention
(`abstain_reason: "idk_option"`, decided in `_confidence.py`).

The label: `idk_label` when configured; otherwise the next letter (or number) when every option is
a single letter (or number) in sequence — "A".."D" gets "E" — and otherwise the IDK text itself
(string options such as capitals get the string "I don't know").

Where the line goes (one rule for chat and completions, applied to the last user message's text
or to the completion prompt):

1. after the last line that lists an option: it starts with one of the option labels followed by
   ``.`` / ``)`` / ``:`` (or ``(X)``), or with a bullet (``-``, ``*``, ``•``); the new line copies
   that line's indentation and style ("E. I don't know", "- I don't know");
2. no such line: chat appends the line at the end of the message; completions insert it before
   the prompt's last line (the answer cue, e.g. "Answer:") or, for a one-line prompt, append it.

Token-id prompts are left alone (the gateway does not tokenize): the choice is then scored but
not shown, so say it in the prompt yourself.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import Any

__all__ = ["choose_label", "idk_line", "insert_in_messages", "insert_in_prompt", "insert_in_text"]

_BULLET = re.compile(r"^(\s*)([-*•])\s+\S")


def choose_label(options: Sequence[str], text: str, label: str | None = None) -> str:
    """The IDK option's label for these options (see the module docstring)."""
    if label:
        return label
    letters = string.ascii_uppercase
    if all(len(o) == 1 and o in letters for o in options):
        position = letters.index(options[-1]) + 1
        if list(options) == list(letters[position - len(options) : position]) and position < 26:
            return letters[position]
    if all(o.isdigit() for o in options):
        numbers = [int(o) for o in options]
        if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            return str(numbers[-1] + 1)
    return text


def idk_line(label: str, text: str) -> str:
    """How the choice is shown when no listed option gives a style: "E. I don't know"."""
    return text if label == text else f"{label}. {text}"


def _option_line(line: str, options: Sequence[str]) -> re.Match[str] | None:
    for option in options:
        match = re.match(rf"^(\s*)(\(?{re.escape(option)}[.):])\s", line)
        if match:
            return match
    return _BULLET.match(line)


def _styled(match: re.Match[str], label: str, text: str) -> str:
    indent, marker = match.group(1), match.group(2)
    if marker in ("-", "*", "•"):
        return f"{indent}{marker} {text}"
    if marker.startswith("("):
        return f"{indent}({label}) {text}"
    return f"{indent}{label}{marker[-1]} {text}"


def insert_in_text(
    text: str, options: Sequence[str], label: str, idk_text: str, *, chat: bool
) -> str:
    """`text` with the IDK choice shown (rule in the module docstring)."""
    lines = text.split("\n")
    for i in range(len(lines) - 1, -1, -1):
        match = _option_line(lines[i], options)
        if match:
            lines.insert(i + 1, _styled(match, label, idk_text))
            return "\n".join(lines)
    line = idk_line(label, idk_text)
    if chat or len(lines) == 1:
        return text.rstrip("\n") + "\n" + line + ("\n" if text.endswith("\n") and not chat else "")
    lines.insert(len(lines) - 1, line)
    return "\n".join(lines)


def insert_in_prompt(prompt: Any, options: Sequence[str], label: str, idk_text: str) -> Any:
    """Completions: the prompt (a string or a list of strings) with the IDK choice shown."""
    if isinstance(prompt, str):
        return insert_in_text(prompt, options, label, idk_text, chat=False)
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return [insert_in_text(p, options, label, idk_text, chat=False) for p in prompt]
    return prompt


def insert_in_messages(
    messages: list[Any], options: Sequence[str], label: str, idk_text: str
) -> list[Any]:
    """Chat: the messages with the IDK choice shown in the last user message (new dicts)."""
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            new_content: Any = insert_in_text(content, options, label, idk_text, chat=True)
        elif isinstance(content, list):
            texts = [
                j for j, p in enumerate(content) if isinstance(p, dict) and p.get("type") == "text"
            ]
            new_content = list(content)
            if texts:
                j = texts[-1]
                part = content[j]
                new_content[j] = {
                    **part,
                    "text": insert_in_text(
                        str(part.get("text", "")), options, label, idk_text, chat=True
                    ),
                }
            else:
                new_content.append({"type": "text", "text": idk_line(label, idk_text)})
        else:
            return messages
        return [*messages[:i], {**message, "content": new_content}, *messages[i + 1 :]]
    return messages
