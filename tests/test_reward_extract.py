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
