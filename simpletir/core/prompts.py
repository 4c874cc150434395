"""The default instruction around each question, assembled from the chosen tools.

With ``rollout.prompt_template`` unset (the default), the rollout builds the template from

* a fixed opening (:data:`OPENING`),
* each chosen tool's ``instructions`` (plain text, in ``tools:`` order; a tool without the
  attribute adds nothing),
* the answer format's ``instruction`` (:mod:`simpletir.core.answers`), and
* the question (:data:`QUESTION`).

For the ``python`` tool with the ``boxed`` answer format this is SimpleTIR's prompt,
byte for byte (:data:`simpletir.core.config.DEFAULT_PROMPT_TEMPLATE`; a test asserts it).
Instructions are plain text: braces in them are escaped here, so a tool never has to double
them. An explicit ``rollout.prompt_template`` replaces all of this.
"""

from __future__ import annotations

from collections.abc import Iterable

OPENING = "Solve the following problem step by step. "
# SimpleTIR's instruction for its code interpreter, as plain text: with the boxed answer
# format, the default prompt assembled from it is SimpleTIR's prompt byte for byte
# (simpletir.core.config.DEFAULT_PROMPT_TEMPLATE). The python tool uses it, and so does the
# python-like scripted tool of simpletir.core.rollout.testing, so both see the same prompt.
PYTHON_TOOL_INSTRUCTIONS = (
    "You now have the ability to selectively write executable Python code to enhance your reasoning "
    "process. The Python code will be executed by an external sandbox, and the output (after "
    '"Code execution result: ") is returned to aid your reasoning and help you arrive at the final '
    "answer. The Python code should be complete scripts, including necessary imports.\n"
    "Each code snippet is wrapped with\n```python\ncode snippet\n```\n"
)
QUESTION = "\n*user question:*\n{question}"


def _literal(text: str) -> str:
    """``text`` as a piece of a ``str.format`` template that formats back to ``text``."""
    return text.replace("{", "{{").replace("}", "}}")


def tool_instructions(tools: Iterable[object]) -> list[str]:
    """Each tool's ``instructions`` (attribute or property), skipping tools without any."""
    found = []
    for tool in tools:
        text = getattr(tool, "instructions", None)
        if text:
            found.append(str(text) if str(text).endswith("\n") else f"{text}\n")
    return found


def assemble_prompt_template(instructions: Iterable[str], answer_instruction: str) -> str:
    """The ``{question}`` template: opening, tool instructions, answer instruction, question."""
    body = "".join(instructions) + answer_instruction
    return _literal(OPENING + body) + QUESTION
