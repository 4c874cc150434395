"""``simpletir export --ckpt_path checkpoints/<run>/epoch_<N> --output_path DIR`` (the seed's
``scripts/model_merger.sh``, same flags): a Hugging Face model folder that transformers and vLLM load.

An ``hf``-backend checkpoint already keeps the policy as a Hugging Face folder (``model/``), so
export copies it (config, safetensors, tokenizer, generation config) into ``DIR`` atomically:
written beside ``DIR`` under a temporary name, checked (the config loads; every weight file is
readable), then renamed. ``--check-generate`` also loads the model with transformers and
generates a few tokens. A backend that shards its checkpoint (megatron) gathers the shards into
the same layout before this step.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simpletir.core.backend.base import MODEL_FOLDER
from simpletir.core.errors import SimpletirError
from simpletir.core.trainer.checkpoint import STATE_FILE, find_latest


class ExportError(SimpletirError):
    """The checkpoint cannot be exported (not a checkpoint, torn, or the output exists)."""


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder, or a run's checkpoint root (its ``latest`` is taken)."""
    if (path / STATE_FILE).is_file():
        return path
    latest = find_latest(path) if path.is_dir() else None
    if latest is not None:
        return latest
    raise ExportError(
        f"--ckpt_path {path}: not a complete checkpoint (no {STATE_FILE}); give checkpoints/<run>/epoch_<N> "
        "or checkpoints/<run>"
    )


def export_checkpoint(ckpt_path: Path, output_path: Path, *, overwrite: bool = False) -> Path:
    source = resolve_checkpoint(ckpt_path) / MODEL_FOLDER
    if not (source / "config.json").is_file() or not any(source.glob("*.safetensors")):
        raise ExportError(f"{source}: no config.json and safetensors weights to export")
    if output_path.exists() and not overwrite:
        raise ExportError(f"--output_path {output_path} exists; remove it or pass --overwrite")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_path.name}.", dir=output_path.parent))
    try:
        for item in source.iterdir():
            if item.is_file():
                shutil.copy2(item, tmp / item.name)
        check_hf_folder(tmp)
        os.chmod(tmp, 0o755)
        if output_path.exists():
            shutil.rmtree(output_path)
        os.rename(tmp, output_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output_path


def check_hf_folder(folder: Path) -> None:
    """The config and tokenizer load, and every safetensors file opens (cheap: no model built)."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    try:
        AutoConfig.from_pretrained(folder)
        AutoTokenizer.from_pretrained(folder)
        for file in folder.glob("*.safetensors"):
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
    except (OSError, ValueError) as exc:
        raise ExportError(f"the exported folder does not load: {exc}") from exc


def generate_sample(folder: Path, prompt: str = "1 + 1 =", max_new_tokens: int = 8) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model: Any = AutoModelForCausalLM.from_pretrained(folder)
    ids = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return str(tokenizer.decode(out[0][ids["input_ids"].shape[1] :], skip_special_tokens=True))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="simpletir export",
        description="Write a checkpoint's policy as a Hugging Face model folder for transformers and vLLM.",
    )
    parser.add_argument(
        "--ckpt_path", "--ckpt-path", required=True, type=Path, help="checkpoints/<run>/epoch_<N>"
    )
    parser.add_argument(
        "--output_path", "--output-path", required=True, type=Path, help="the folder to create"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --output_path if it exists")
    parser.add_argument("--check-generate", action="store_true", help="load it and generate a few tokens")
    args = parser.parse_args(list(argv) if argv is not None else None)
    folder = export_checkpoint(args.ckpt_path, args.output_path, overwrite=args.overwrite)
    print(f"exported {resolve_checkpoint(args.ckpt_path)} to {folder}")
    if args.check_generate:
        print(f"greedy sample: {generate_sample(folder)!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
