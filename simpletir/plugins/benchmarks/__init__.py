"""Built-in benchmarks: AIME 2024/2025, MATH500 and the SimpleTIR training sets, plus ``arith``.

Each answers to its own name and to the seed's dataset name (``deepscaler/aime``...), so both
``valid_dataset="aime24 aime25"`` and ``valid_dataset="deepscaler/aime deepscaler/aime25"`` work.

| name | alias (SimpleTIR) | file under data_dir | hub (source=hub) |
|---|---|---|---|
| aime24 | deepscaler/aime | deepscaler/aime.parquet | HuggingFaceH4/aime_2024 (train) |
| aime25 | deepscaler/aime25 | deepscaler/aime25.parquet | math-ai/aime25 (test) |
| math500 | simplelr_math_35/test | simplelr_math_35/test.parquet | HuggingFaceH4/MATH-500 (test) |
| simplelr_train | simplelr_math_35/train | simplelr_math_35/train.parquet | none (set hub_dataset) |
| deepscaler_train | deepscaler/train | deepscaler/train.parquet | agentica-org/DeepScaleR-Preview-Dataset |
| arith | | generated in code (held-out set) | |
| arith_train | | generated in code, disjoint from arith | |
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from simpletir import hookimpl
from simpletir.core.specs import BenchmarkSpec
from simpletir.plugins.benchmarks import arith
from simpletir.plugins.benchmarks.parquet import BenchmarkOptions, HubSource, parquet_factory

# (name, alias, data file, hub source, split, description)
_FILE_BENCHMARKS: tuple[tuple[str, str, str, HubSource | None, Literal["train", "test"], str], ...] = (
    ("aime24", "deepscaler/aime", "deepscaler/aime", HubSource("HuggingFaceH4/aime_2024", "train"), "test",
     "AIME 2024, 30 problems (integer answers, some with leading zeros)"),
    ("aime25", "deepscaler/aime25", "deepscaler/aime25", HubSource("math-ai/aime25", "test"), "test",
     "AIME 2025, 30 problems"),
    ("math500", "simplelr_math_35/test", "simplelr_math_35/test", HubSource("HuggingFaceH4/MATH-500", "test"),
     "test", "MATH500: 500 MATH test problems (LaTeX answers: fractions, intervals, tuples, matrices)"),
    ("simplelr_train", "simplelr_math_35/train", "simplelr_math_35/train", None, "train",
     "SimpleLR-Zoo MATH levels 3-5 training set (8,523 problems)"),
    ("deepscaler_train", "deepscaler/train", "deepscaler/train",
     HubSource("agentica-org/DeepScaleR-Preview-Dataset", "train"), "train",
     "DeepScaleR-Preview training set (~40.3k problems)"),
)  # fmt: skip


@hookimpl
def register_benchmarks() -> Iterable[BenchmarkSpec]:
    specs = [
        BenchmarkSpec(
            name=name,
            factory=parquet_factory(name, data_file, hub),
            config_cls=BenchmarkOptions,
            description=description,
            aliases=(alias,),
            split=split,
            data_files=(data_file,),
        )
        for name, alias, data_file, hub, split, description in _FILE_BENCHMARKS
    ]
    specs.append(
        BenchmarkSpec(
            name=arith.NAME,
            factory=arith.build,
            config_cls=arith.ArithOptions,
            description="easy generated arithmetic (a op b op c) for smoke tests; no data file",
            split="test",
        )
    )
    specs.append(
        BenchmarkSpec(
            name=arith.TRAIN_NAME,
            factory=arith.build_train,
            config_cls=arith.ArithOptions,
            description="generated arithmetic for training: never a question of 'arith' (same options)",
            split="train",
        )
    )
    return specs
