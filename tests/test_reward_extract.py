"""Answer extraction: the last complete \\boxed{}, tool output included, code skipped."""

from __future__ import annotations

import pytest

from simpletir.plugins.rewards.extract import extract_answer, last_boxed, last_number, plain_integer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{42}.", "42"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\frac{\\sqrt{3}}{2}} done", "\\frac{\\sqrt{3}}{2}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped set braces do not close the box
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\fbox{7}", "7"),
        ("$\\boxed 5$", "5"),
        ("\\boxed{ 12 }", "12"),
        # a truncated final box falls back to the last complete one
        ("\\boxed{3} and finally \\boxed{\\frac{1}{", "3"),
        ("no answer here", None),
        ("\\boxed{}", None),
        ("\\boxedfoo{3}", None),
    ],
)
def test_last_boxed(text: str, expected: str | None) -> None:
    assert last_boxed(text) == expected


def test_final_answer_printed_by_code_counts() -> None:
    # The sandbox prints \boxed{x} for final_answer(x); it follows the code in the response.
    text = (
        "Let me compute.\n```python\nfinal_answer(6 * 7)\n```\n"
        "Code execution result: \\boxed{42}\n"
        "That settles it."
    )
    assert last_boxed(text) == "42"


def test_boxed_inside_code_is_not_an_answer() -> None:
    # The *source* of a print is not an answer (its output would be); here the code never ran.
    text = "\\boxed{7} is my guess.\n```python\nprint(f'\\\\boxed{{{x}}}')\n```\n"
    assert last_boxed(text) == "7"
    unclosed = "answer \\boxed{5}\n```python\nprint('\\boxed{9}')"
    assert last_boxed(unclosed) == "5"


def test_last_number_fallback_is_opt_in() -> None:
    text = "The total is 1,234 apples, so 25 remain"
    assert extract_answer(text) is None
    found = extract_answer(text, last_number_fallback=True)
    assert found is not None and found.answer == "25" and found.source == "last_number"
    assert last_number("we get -3.5 and then 2/3") == "2/3"
    assert last_number("total 1,234") == "1234"
    boxed = extract_answer("7 and \\boxed{8} then 9", last_number_fallback=True)
    assert boxed is not None and boxed.answer == "8" and boxed.source == "boxed"


@pytest.mark.parametrize(("text", "value"), [("025", 25), ("-7", -7), (" 3 ", 3), ("+4", 4)])
def test_plain_integer(text: str, value: int) -> None:
    assert plain_integer(text) == value


@pytest.mark.parametrize("text", ["2.5", "1/2", "1,000", "x", "", "1e3", "9" * 60])
def test_not_plain_integer(text: str) -> None:
    assert plain_integer(text) is None


def test_degenerate_repetition_is_extracted_in_linear_time() -> None:
    # A collapsed policy can repeat "\boxed{" thousands of times without closing it. Extraction
    # runs in the parent (the reward) and on the rollout's event loop (the answer check after
    # every turn), outside any timeout: it must stay linear. The old scan restarted at every
    # box and took ~25 s on this input (about 70k characters).
    import time

    cases = [
        ("\\boxed{" * 10_000, None),
        ("\\boxed " * 10_000 + "\\boxed{", "\\boxed{"),  # short form: the next token
        ("x \\boxed{7} " + "\\boxed{{" * 8_000, "7"),
    ]
    for text, expected in cases:
        started = time.perf_counter()
        answer = last_boxed(text)
        assert time.perf_counter() - started < 1.0, text[:20]
        assert answer == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("} \\boxed{5}", "5"),  # a stray closing brace before the box
        ("{ \\boxed{5}", "5"),  # an unclosed brace before the box
        ("\\boxed{a\\\\{b}c}", "a\\\\{b}c"),  # "\\\\" (a LaTeX newline) then a real brace
        ("\\boxed{\\{1\\}} and \\boxed{2", "\\{1\\}"),  # the last box never closes
        ("\\boxed{1}} \\fbox{2}", "2"),
    ],
)
def test_last_boxed_brace_matching_edge_cases(text: str, expected: str) -> None:
    assert last_boxed(text) == expected


def test_bare_fenced_code_is_code_but_output_fences_are_kept() -> None:
    # The sandbox runs bare ``` blocks too, so a box in their source is not an answer ...
    assert last_boxed("Say \\boxed{1}\n```\nprint('\\\\boxed{2}')\n```\n") == "1"
    # ... while an output fence may hold the answer, and its closing fence opens no code block.
    assert last_boxed("```output\n\\boxed{3}\n```\nSo \\boxed{4}") == "4"
    assert last_boxed("```output\n\\boxed{3}\n```\nno box after") == "3"
