"""``simpletir export``: a checkpoint's policy as a Hugging Face folder that transformers loads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from simpletir.cli import main
from simpletir.core.backend.hf import HFBackend
from simpletir.core.config_load import load_config
from simpletir.core.rollout.models import resolve_model
from simpletir.core.trainer.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HFBackend, Path]]:
    """A backend whose weights moved away from tiny-qwen2's, and its checkpoint (step 3)."""
    config = load_config(None, ["model_name=tiny-qwen2", "trainer.device=cpu"])
    backend = HFBackend(resolve_model("tiny-qwen2"), config)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in backend.model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.01)
    root = tmp_path_factory.mktemp("checkpoints") / "run"
    save_checkpoint(root, 3, backend, {"step": 3}, keep=2)
    yield backend, root
    backend.close()


def one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("simpletir: error: "), err
    return err


def test_export_round_trip_gives_the_trainers_logits(
    trained: tuple[HFBackend, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    backend, root = trained
    out = tmp_path / "exported"
    assert main(["export", "--ckpt_path", str(root / "epoch_3"), "--output_path", str(out)]) == 0
    assert f"to {out}" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert "optimizer.pt" not in names and "trainer_state.json" not in names  # the model only
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]  # no temporary folder beside it

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("What is $2 + 3 * 4$? Give the integer value.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        exported = model(input_ids=ids).logits
        trainer = backend.model(input_ids=ids).logits
        original = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-qwen2"))(input_ids=ids).logits
    assert torch.allclose(exported, trainer, atol=1e-6, rtol=0)
    assert not torch.allclose(original, trainer, atol=1e-3)  # the export is the trained weights


def test_export_takes_a_run_folder_and_overwrite(
    trained: tuple[HFBackend, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, root = trained
    out = tmp_path / "exported"
    out.mkdir()
    (out / "old.txt").write_text("replace me")
    argv = ["export", "--ckpt-path", str(root), "--output-path", str(out), "--overwrite"]
    assert main(argv) == 0  # checkpoints/<run>: its latest checkpoint
    assert "epoch_3" in capsys.readouterr().out
    assert not (out / "old.txt").exists() and (out / "model.safetensors").is_file()


def test_export_errors_are_one_line(
    trained: tuple[HFBackend, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, root = trained
    # not a checkpoint: an empty folder, a torn checkpoint, a path that does not exist
    empty = tmp_path / "empty"
    empty.mkdir()
    torn = tmp_path / "run" / "epoch_1"
    (torn / "model").mkdir(parents=True)
    for path in (empty, torn, tmp_path / "missing"):
        argv = ["export", "--ckpt_path", str(path), "--output_path", str(tmp_path / "o")]
        line = one_error_line(capsys, argv)
        assert f"--ckpt_path {path}" in line and "not a complete checkpoint" in line
    assert not (tmp_path / "o").exists()

    # the output exists: refused, and left exactly as it was
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    line = one_error_line(capsys, ["export", "--ckpt_path", str(root / "epoch_3"), "--output_path", str(out)])
    assert f"--output_path {out} exists" in line
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "run", "taken"]  # no temp folder
