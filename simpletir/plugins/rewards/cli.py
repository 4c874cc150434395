"""``simpletir score --response TEXT --answer GOLD [--reward NAME]``: one verdict, printed as JSON.

Handy to check how a reward reads an answer before trusting an evaluation::

    $ simpletir score --response 'so the answer is \\boxed{025}' --answer 25
    {"reward": "math_verify", "score": 1.0, "reason": "correct", "extracted": "025", ...}

``--response -`` reads the response from stdin (long model outputs). Exit status 0 whatever the
verdict; 2 for a usage error (unknown reward, bad option).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from simpletir.core.errors import SimpletirError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simpletir score",
        description="Score one response against a ground truth with a reward plugin; prints JSON.",
    )
    parser.add_argument("--response", required=True, help="the model's response text ('-' reads stdin)")
    parser.add_argument("--answer", required=True, help="the ground-truth answer, e.g. 25 or '\\frac{1}{2}'")
    parser.add_argument(
        "--reward", default="math_verify", help="reward plugin by name (default: math_verify)"
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a reward option, as plugin_config.<reward>.<KEY> (repeatable), e.g. last_number_fallback=true",
    )
    return parser


def _options(reward: str, pairs: Sequence[str]) -> dict[str, object]:
    import yaml

    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SimpletirError(f"--option {pair!r}: expected KEY=VALUE")
        options[key.strip()] = yaml.safe_load(value)  # "true" -> True, "2.5" -> 2.5, as in configs
    return {reward: options} if options else {}


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    response = sys.stdin.read() if args.response == "-" else args.response
    try:
        from simpletir.core.config import ExperimentConfig
        from simpletir.core.plugins import make_plugin_manager

        config = ExperimentConfig(reward=args.reward, plugin_config=_options(args.reward, args.option))
        reward = make_plugin_manager().build("reward", args.reward, config)
    except SimpletirError as exc:
        print(f"simpletir score: error: {exc}", file=sys.stderr)
        return 2
    try:
        result = reward.score(response, args.answer)
    finally:
        reward.close()
    verdict = {
        "reward": args.reward,
        "score": result.score,
        "reason": result.reason,
        "extracted": result.extracted,
        "ground_truth": args.answer,
        "extra": dict(result.extra),
    }
    print(json.dumps(verdict, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
