"""Typed run configuration: YAML file + dotted CLI overrides -> validated dataclasses.

    rlpost train configs/tiny/arith_grpo.yaml algo.loss=dapo rollout.num_generations=8

Every field is documented once, here, by the comment on its line. TRL ``GRPOConfig`` names are used
where the concept exists, and TRL's spelling is accepted anywhere as an alias (``ALIASES``), so a TRL user
can write ``num_generations=8`` or ``beta=0.04`` at the top level. Unknown keys fail with the closest
known key; wrong types name the key and the expected type. Components chosen by name
(``algo.advantage``, ``algo.loss`` ...) take either a name or ``{name: ..., <its params>}``; :func:`load_config`
resolves them all (rlpost/resolve.py: names, param names and types, method and distributed rules) before
anything loads, and ``rlpost validate`` prints the result.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml


class ConfigError(ValueError):
    """A config problem, with the offending key in the message."""


Component = Union[str, dict]  # a registered name, or {name: ..., **params}


@dataclass
class ModelConfig:
    name_or_path: str = "tiny:qwen2:arithmetic"  # HF hub id, local folder, or tiny:<qwen2|llama>:<task>[:seed]
    dtype: str = "float32"                    # float32 | bfloat16 | float16 | auto
    gradient_checkpointing: bool = False      # recompute activations in backward: less memory, ~30% slower
    trust_remote_code: bool = False           # run code shipped with a hub checkpoint (off by default)
    attn_implementation: str | None = None    # e.g. sdpa, eager, flash_attention_2; unset: transformers default (sdpa; on CPU with GQA rlpost's sdpa_gqa, same values)
    revision: str | None = None               # hub revision
    model_init_kwargs: dict = field(default_factory=dict)  # extra from_pretrained kwargs
    lora: "LoraSettings" = field(default_factory=lambda: LoraSettings())  # LoRA adapters (peft); r: 0 = off
    load_in_4bit: bool = False                # QLoRA: 4-bit base weights via bitsandbytes (CUDA only), needs lora.r > 0
    bnb_4bit_quant_type: str = "nf4"          # nf4 | fp4 (load_in_4bit)
    bnb_4bit_compute_dtype: str = "bfloat16"  # matmul dtype of the 4-bit layers


@dataclass
class LoraSettings:
    """``model.lora``: train low-rank adapters only (peft). See docs/distributed.md, "LoRA / QLoRA"."""
    r: int = 0                                # adapter rank; 0 = full fine-tuning (no LoRA)
    alpha: float = 16.0                       # lora_alpha: the update is scaled by alpha / r
    dropout: float = 0.0                      # lora_dropout (0 keeps sampler and learner log-probs equal)
    target_modules: Any = "all-linear"        # "all-linear", or a list of module names (q_proj, v_proj, ...)
    bias: str = "none"                        # none | all | lora_only
    use_rslora: bool = False                  # scale by alpha / sqrt(r)
    modules_to_save: list = field(default_factory=list)  # extra modules trained fully and saved (e.g. lm_head)
    init_lora_weights: Any = True             # peft's init (True: B = 0, so training starts at the base model)
    adapter_path: str | None = None           # start from a saved adapter instead of a fresh one
    save_merged: bool = True                  # final_model/merged: a merged full model beside the adapter
    sync: str = "adapter"                     # vllm / vllm_server get: adapter (LoRA tensors, vLLM's LoRA) | merged (W + scale * B @ A); docs/distributed.md


@dataclass
class DataConfig:
    task: str | None = "arithmetic"           # synthetic task (rlpost.tasks) or None to use train_path
    task_kwargs: dict = field(default_factory=dict)  # passed to the task's make_split (e.g. digits)
    train_path: str | None = None             # local jsonl/json/parquet/csv file or dir, or a hub dataset id
    eval_path: str | None = None              # held-out prompts; for tasks, the task's test split
    train_split: str = "train"                # split name when loading a dataset id / folder
    eval_split: str = "test"
    num_train: int = 2000                     # rows drawn from a synthetic task's train split
    num_eval: int = 128                       # held-out rows evaluated every trainer.eval_steps
    prompt_column: str = "prompt"             # text prompt or a list of chat messages
    answer_column: str | None = "answer"      # required column for the reward functions (None: none)
    system_prompt: str | None = None          # prepended as a system message
    few_shot: list = field(default_factory=list)  # chat turns ({role, content}) put between the system prompt and the question
    chat_template: bool = True                # format prompts with the tokenizer's chat template
    shuffle_dataset: bool = True              # shuffle training prompts each epoch
    sampler: Component = "uniform"            # prompt sampler: uniform | gain_rl | ...
    overlong_prompts: str = "error"           # a prompt with no room for max_completion_length tokens in the model's
                                              # context: error | drop (with a counted warning) | truncate_left


@dataclass
class RolloutConfig:
    engine: str = "hf"                        # hf (transformers generate) | vllm | vllm_server
    workflow: Component = "single_turn"       # single_turn | apr (spawn/join trees) | a2fm (routed modes + tools) | multi_turn (your environment, docs/environments.md)
    num_generations: int = 8                  # group size G: completions per prompt (>= 2)
    prompts_per_step: int = 8                 # prompts per RL step (batch = prompts_per_step * G)
    max_completion_length: int = 32           # cap on generated tokens
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0                            # 0 = off
    min_p: float = 0.0                        # keep tokens with p >= min_p * p_max (after temperature); 0 = off
    repetition_penalty: float = 1.0           # >1 discourages tokens already seen (sampling only: the learner does not apply it)
    stop: list = field(default_factory=list)  # stop strings
    return_entropy: bool = False              # per-token entropies from the sampler (HAPO needs them)
    logits_processor: Component | None = None  # registered logits processor (e.g. hapo adaptive temperature)
    generation_batch_size: int | None = None  # sequences generated per engine call (None: all at once)
    async_level: int = 0                      # 0: synchronous loop; k >= 1: the batch of step t is generated on the weights
                                              # of step max(0, t-k) while the learner trains (1 = one-step-off); prime-rl's
                                              # max_async_level (rlpost/rollout/pipeline.py, README "Asynchronous rollouts")
    # vLLM engine options (rollout.engine=vllm / vllm_server)
    gpu_memory_utilization: float = 0.3       # vLLM memory share (CPU memory on CPU builds)
    max_model_len: int | None = None          # vLLM context length; default prompt + completion cap
    enable_prefix_caching: bool = True
    enforce_eager: bool = True
    enable_sleep_mode: bool = False           # offload vLLM weights/KV cache during the learner step
    tensor_parallel_size: int = 1             # rollout.engine=vllm: shard the sampler over this many devices (vLLM TP; rlpost serve workers take --tensor-parallel-size)
    server_urls: list = field(default_factory=list)  # vllm_server workers, e.g. ["http://127.0.0.1:8001"]
    server_token: str | None = None           # shared secret sent to rlpost serve workers
    timeout_s: float = 600.0                  # upper bound on any wait for an engine
    weight_sync: str = "file"                 # vllm_server weight transport: file (torch.save under weight_sync_dir) | dist (torch.distributed broadcast: gloo on CPU, nccl on GPU)
    weight_sync_dir: str | None = None        # directory trainer and workers share for weight_sync=file (None: /dev/shm, else the temp dir)


@dataclass
class AlgoConfig:
    advantage: Component = "grpo"             # grpo | dr_grpo | rloo | hapo | adora | oblr | constrained ...
    scale_rewards: str = "group"              # grpo advantage: divide by the std of the group | batch | none
    loss: Component = "grpo"                  # policy loss: grpo | dapo | dr_grpo | bnpo | gspo | clip | hapo ...
    loss_agg: str = "auto"                    # token-mean | seq-mean-token-mean | seq-mean-token-sum-norm | auto (the loss's default)
    epsilon: float = 0.2                      # lower clip range
    epsilon_high: float | None = None         # upper clip range (DAPO clip-higher: 0.28); None = epsilon
    dual_clip_c: float | None = None          # dual-clip bound for negative advantages (e.g. 3.0)
    delta: float | None = None                # two-sided clip cap on the ratio for A < 0
    importance_sampling_level: str = "token"  # token | sequence (GSPO)
    beta: float = 0.0                         # KL *loss* coefficient (beta * KL_t added to the loss); 0 loads no reference model
    kl_estimator: str = "k3"                  # KL loss estimator: k1 | k2 | k3 (k1 in the loss has zero expected gradient)
    kl_reward: "KLRewardSettings" = field(default_factory=lambda: KLRewardSettings())  # KL in the reward; coef 0 = off
    entropy_coef: float = 0.0                 # entropy bonus weight (subtracted from the loss)
    num_iterations: int = 1                   # inner epochs per generation batch (PPO-style mu)
    mask_truncated_completions: bool = False  # drop completions that hit the length cap from the loss
    dynamic_sampling: bool = False            # DAPO: drop groups with all-equal rewards, refill from new prompts
    max_refill_rounds: int = 3                # bound on dynamic-sampling refills per step
    lr_controller: Component | None = None    # e.g. oblr_snr (OBLR-PO); None = schedule only
    extra: dict = field(default_factory=dict)  # method-specific shared state (e.g. constrained multipliers)
    vllm_importance_sampling_correction: bool = False  # weight the loss by the truncated IS ratio learner/sampler (rlpost/algos/mismatch.py)
    vllm_importance_sampling_mode: str = "sequence_mask"  # token_truncate | token_mask | sequence_truncate | sequence_mask
    vllm_importance_sampling_clip_max: float = 3.0  # C_max: ratios above are clipped (truncate) or zeroed (mask)
    vllm_importance_sampling_clip_min: float | None = None  # C_min: ratios below are clipped / zeroed (None: no lower bound)
    top_entropy_quantile: float = 1.0         # rho: the policy loss keeps the batch's top-rho tokens by entropy (1 = all; Wang et al. 2025: 0.2)
    sync_ref_model: bool = False              # TR-DPO-style reference update every ref_model_sync_steps (needs beta > 0)
    ref_model_mixup_alpha: float = 0.6        # pi_ref <- alpha * pi_theta + (1 - alpha) * pi_ref
    ref_model_sync_steps: int = 512           # RL steps between reference updates


@dataclass
class KLRewardSettings:
    """``algo.kl_reward``: a per-token penalty −coef·KL_t(π_old ‖ π_ref) on the sampled tokens, added to the
    rewards before the advantage (outcome estimators see score − coef·Σ_t KL_t). Math and controllers:
    rlpost/algos/kl_reward.py; when to use it rather than the KL loss (algo.beta): docs/algos/kl.md."""
    coef: float = 0.0                         # beta (the adaptive controller's start); 0 = off, no reference model for it
    controller: str = "fixed"                 # fixed | adaptive (Ziegler et al. 2019: beta *= 1 + clip(KL/target - 1, +-0.2) * n/horizon)
    target: float | None = None               # adaptive: target KL per sequence (the step's mean of sum_t KL_t); required
    horizon: float = 10000.0                  # adaptive: n / horizon is the gain, n = completions in the step (Ziegler: 10000)
    estimator: str = "k1"                     # per-token KL of the penalty: k1 (log pi_old - log pi_ref; verl's default) | k2 | k3


@dataclass
class RewardConfig:
    name: str = "arithmetic"                  # built-in name, or "module:function" for your own
    weight: float = 1.0
    kwargs: dict = field(default_factory=dict)


@dataclass
class OptimConfig:
    optimizer: str = "adamw"                  # adamw | adam | sgd | lion | any pytorch_optimizer name
    learning_rate: float = 1e-6
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0                # 0 disables clipping
    max_consecutive_skipped_steps: int = 3    # optimizer steps with a non-finite gradient norm are skipped (counted in
                                              # train/skipped_steps); this many in a row stop the run (0: never stop)
    lr_scheduler_type: str = "constant"       # constant | linear | cosine (all with warm-up)
    warmup_steps: int = 0
    warmup_ratio: float = 0.0                 # used when warmup_steps == 0
    micro_batch_size: int = 16                # sequences per forward/backward (memory knob)
    max_tokens_per_micro_batch: int = 0       # >0: micro-batches hold as many length-sorted rows as fit in this many
                                              # padded tokens (rows x longest row), instead of micro_batch_size rows
    steps_per_generation: int = 1             # optimizer steps per generation batch (mini-batches)
    logprob_chunk_size: int = 0               # >0: LM head + log-softmax over this many completion tokens at a time (no [B,W,V] logits)
    padding_free: bool = False                # pack each micro-batch into one row (position_ids restart per sample): no pad tokens
    shared_prefix: bool = True                # the completions of a prompt share one forward over it (same values, less work)


@dataclass
class TrainerConfig:
    output_dir: str = "runs/default"
    max_steps: int = 100                      # RL steps (one generation batch each)
    seed: int = 0
    eval_steps: int = 10                      # evaluate every N steps (0 = only at start and end)
    eval_temperature: float | None = None     # None: greedy decoding for eval
    eval_num_generations: int = 1             # samples per eval prompt (accuracy is their mean)
    eval_benchmarks: list = field(default_factory=list)  # rlpost eval benchmarks run every eval_steps, e.g. ["arithmetic", "gsm8k=data/test.jsonl"]
    eval_benchmark_limit: int = 64            # problems per benchmark during training (a fixed seeded subset)
    eval_prompt_format: str = "benchmark"     # eval_benchmarks prompts: benchmark (the spec's template, user turn only) |
                                              # training (eval_prompt_template, then data.system_prompt, few_shot, chat template)
    eval_prompt_template: str = "{prompt}"    # with eval_prompt_format=training: the question as the training prompts word it
    eval_extractor: str | None = None         # answer extractor for eval_benchmarks (None: each benchmark's own)
    eval_max_tokens: int | None = None        # generation length for eval_benchmarks (None: each benchmark's own)
    eval_metrics: list = field(default_factory=list)  # metrics over the whole held-out set, logged as eval/<key>:
                                              # registered names (crlhf_score) or module:function(prompts, completions, columns)
    save_steps: int = 50                      # checkpoint every N steps (0 = only the final model)
    save_total_limit: int = 2                 # checkpoints kept
    resume_from_checkpoint: str | None = None  # "latest", or a checkpoint folder
    report_to: list = field(default_factory=lambda: ["tensorboard"])  # tensorboard | wandb | trackio | none
    run_name: str | None = None
    log_completions: bool = False             # every step's completions (prompt, completion, rewards, advantage) to completions.jsonl
    num_completions_to_print: int = 1         # with log_completions: how many of them to print each step
    progress_bar: bool = True
    num_threads: int | None = None            # torch intra-op threads (None: torch's default)
    device: str = "auto"                      # auto | cpu | cuda


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    rewards: list[RewardConfig] = field(default_factory=lambda: [RewardConfig()])
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    method: dict = field(default_factory=dict)  # per-paper sections (hapo, adora, oblr, gain_rl, constrained, ...)
    distributed: "DistributedConfig" = field(default_factory=lambda: DistributedConfig())  # multi-process learner


@dataclass
class DistributedConfig:
    """``distributed``: the learner on several processes (torchrun / accelerate launch / deepspeed launcher).
    See docs/distributed.md. With backend none (the default) everything runs in one process."""
    backend: str = "none"                     # none | ddp | deepspeed | fsdp2 (torch fully_shard per decoder layer)
    zero_stage: int = 2                       # deepspeed: 2 (optimizer state + gradients sharded) | 3 (+ parameters)
    offload_optimizer: bool = False           # deepspeed: optimizer state in CPU memory
    offload_param: bool = False               # deepspeed ZeRO-3: parameters in CPU memory; fsdp2: parameters, gradients and the optimizer step in CPU memory
    mixed_precision: str = "none"             # fsdp2: none | bfloat16 | float16 compute dtype (weights stay model.dtype=float32; gradients reduced in float32)
    reshard_after_forward: bool = True        # fsdp2: free each layer's gathered parameters after its forward (gathered again in backward)
    dist_backend: str = "auto"                # gloo | nccl | auto (nccl when CUDA is available, else gloo)
    rollout: str = "split"                    # split: each rank generates its own prompts | replicate: every rank generates the whole batch (single-process samples; debugging)
    timeout_s: float = 1800.0                 # collective-operation timeout: a dead rank surfaces as an error after this
    deepspeed_config: Any = None              # extra DeepSpeed config: a JSON file path or a mapping, merged over rlpost's
    find_unused_parameters: bool = False      # ddp: for models whose forward skips parameters


# TRL GRPOConfig / TrainingArguments spelling -> our dotted key.
ALIASES: dict[str, str] = {
    "num_generations": "rollout.num_generations",
    "max_completion_length": "rollout.max_completion_length",
    "temperature": "rollout.temperature",
    "top_p": "rollout.top_p",
    "top_k": "rollout.top_k",
    "min_p": "rollout.min_p",
    "repetition_penalty": "rollout.repetition_penalty",
    "generation_batch_size": "rollout.generation_batch_size",
    "vllm_gpu_memory_utilization": "rollout.gpu_memory_utilization",
    "vllm_max_model_length": "rollout.max_model_len",
    "vllm_enable_sleep_mode": "rollout.enable_sleep_mode",
    "beta": "algo.beta",
    "epsilon": "algo.epsilon",
    "epsilon_high": "algo.epsilon_high",
    "delta": "algo.delta",
    "loss_type": "algo.loss",
    "scale_rewards": "algo.scale_rewards",
    "num_iterations": "algo.num_iterations",
    "mask_truncated_completions": "algo.mask_truncated_completions",
    "importance_sampling_level": "algo.importance_sampling_level",
    "entropy_coef": "algo.entropy_coef",
    "learning_rate": "optim.learning_rate",
    "weight_decay": "optim.weight_decay",
    "max_grad_norm": "optim.max_grad_norm",
    "lr_scheduler_type": "optim.lr_scheduler_type",
    "warmup_steps": "optim.warmup_steps",
    "warmup_ratio": "optim.warmup_ratio",
    "steps_per_generation": "optim.steps_per_generation",
    "per_device_train_batch_size": "optim.micro_batch_size",
    "ppo_max_token_len_per_gpu": "optim.max_tokens_per_micro_batch",   # verl's dynamic batch size
    "output_dir": "trainer.output_dir",
    "max_steps": "trainer.max_steps",
    "seed": "trainer.seed",
    "eval_steps": "trainer.eval_steps",
    "save_steps": "trainer.save_steps",
    "save_total_limit": "trainer.save_total_limit",
    "report_to": "trainer.report_to",
    "run_name": "trainer.run_name",
    "log_completions": "trainer.log_completions",
    "num_completions_to_print": "trainer.num_completions_to_print",
    "resume_from_checkpoint": "trainer.resume_from_checkpoint",
    "gradient_checkpointing": "model.gradient_checkpointing",
    "trust_remote_code": "model.trust_remote_code",
    "model_init_kwargs": "model.model_init_kwargs",
    "model_name_or_path": "model.name_or_path",
    "shuffle_dataset": "data.shuffle_dataset",
    "max_prompt_length": None,  # removed from TRL (PR #4847): rejected with a pointer
    "top_entropy_quantile": "algo.top_entropy_quantile",
    "sync_ref_model": "algo.sync_ref_model",
    "ref_model_mixup_alpha": "algo.ref_model_mixup_alpha",
    "ref_model_sync_steps": "algo.ref_model_sync_steps",
    "vllm_importance_sampling_correction": "algo.vllm_importance_sampling_correction",
    "vllm_importance_sampling_mode": "algo.vllm_importance_sampling_mode",
    "vllm_importance_sampling_clip_max": "algo.vllm_importance_sampling_clip_max",
    "vllm_importance_sampling_clip_min": "algo.vllm_importance_sampling_clip_min",
    "max_async_level": "rollout.async_level",   # prime-rl's name for the staleness bound
}
SECTION_ALIASES = {(k.split(".")[0], k.split(".")[1]): v for k, v in {
    "rollout.beta": "algo.beta", "algo.temperature": "rollout.temperature",
    "algo.num_generations": "rollout.num_generations", "algo.learning_rate": "optim.learning_rate",
    "algo.loss_type": "algo.loss", "optim.lr": "optim.learning_rate", "trainer.learning_rate": "optim.learning_rate",
    "rollout.n": "rollout.num_generations", "rollout.max_tokens": "rollout.max_completion_length",
}.items()}


# ----------------------------------------------------------------------------------------------
# loading


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """YAML file (optional) + ``key=value`` overrides -> validated :class:`Config` (types, ranges, the rules
    between fields). Registry names, component params and method rules are the resolver's:
    ``rlpost.resolve.load_resolved`` does both, and the trainer resolves a config it is given once."""
    raw = normalise_aliases(read_yaml_sections(path))
    for item in overrides or []:
        key, value = parse_override(item)
        set_dotted(raw, key, value)
    reward_weights = raw.pop("reward_weights", None)   # TRL's name: one weight per reward function, in order
    cfg = from_dict(Config, raw, "")
    if reward_weights is not None:
        apply_reward_weights(cfg, reward_weights)
    validate(cfg)
    return cfg


def apply_reward_weights(cfg: Config, weights) -> None:
    """``reward_weights=[w1, w2, ...]`` sets ``rewards[k].weight`` (TRL's GRPOConfig.reward_weights)."""
    names = [r.name for r in cfg.rewards]
    if not isinstance(weights, list) or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
        raise ConfigError(f"reward_weights: expected a list of numbers, one per reward function, got {weights!r}")
    if len(weights) != len(names):
        raise ConfigError(f"reward_weights has {len(weights)} weights for {len(names)} reward functions "
                          f"(rewards: {', '.join(names)})")
    for reward, weight in zip(cfg.rewards, weights):
        reward.weight = float(weight)


def read_yaml_sections(path: str | Path | None) -> dict:
    """The YAML file's top-level mapping ({} without a file); clear errors for a missing file or bad YAML."""
    if path is None:
        return {}
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return raw


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. algo.loss=dapo)")
    key, text = item.split("=", 1)
    key = key.strip().lstrip("-")
    value = yaml.safe_load(text) if text.strip() else ""
    return resolve_alias(key), value


def resolve_alias(key: str) -> str:
    if key in ALIASES:
        if ALIASES[key] is None:
            raise ConfigError(f"{key} was removed from TRL's GRPOConfig; rlpost truncates nothing silently: "
                              "filter long prompts in your dataset")
        return ALIASES[key]
    parts = key.split(".")
    if len(parts) == 2 and tuple(parts) in SECTION_ALIASES:
        return SECTION_ALIASES[tuple(parts)]
    return key


def normalise_aliases(raw: dict) -> dict:
    """Move alias keys (top level or inside a section) to their canonical dotted place."""
    out: dict = {}
    for key, value in raw.items():
        if key in ALIASES:
            set_dotted(out, resolve_alias(key), value)
        elif isinstance(value, dict) and key in {f.name for f in dataclasses.fields(Config)} and key != "method":
            for sub, subval in value.items():
                set_dotted(out, resolve_alias(f"{key}.{sub}"), subval)
        else:
            out[key] = value
    return out


def set_dotted(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        if part.isdigit() and isinstance(node, list):
            node = node[int(part)]
            continue
        nxt = node.get(part)
        if not isinstance(nxt, (dict, list)):
            nxt = {}
            node[part] = nxt
        node = nxt
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_scalar(value: Any, tp, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_scalar(value, arg, key)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if tp is Any:
        return value
    if origin is list or tp is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and tp is list:
            return [value] if value != "" else []
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected bool (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads 1e-6 as a string
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected float, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # e.g. scale_rewards: false (TRL allows bool)
            return str(value).lower() if key.endswith("scale_rewards") else _fail(key, tp, value)
        if isinstance(value, (int, float)):
            return str(value)
        raise ConfigError(f"{key}: expected str, got {value!r}")
    return value


def check_field_types(cls, values: dict, where: str) -> dict:
    """``values`` for dataclass ``cls`` with each value checked (and converted: YAML's "1e-6" is a float)
    against the field's annotation; a mismatch raises ConfigError naming ``where``, the key and the type."""
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):   # an annotation that does not resolve here: leave the values as they are
        return dict(values)
    return {key: value if key not in hints or (isinstance(value, bool) and hints[key] is str)  # TRL's scale_rewards: false
            else _check_scalar(value, hints[key], f"{where}.{key}") for key, value in values.items()}


def _fail(key, tp, value):
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def from_dict(cls, raw: Any, prefix: str):
    """Build dataclass ``cls`` from ``raw``; unknown keys fail with the closest known key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields) + list(ALIASES), n=1, cutoff=0.6)
            hint = f"; did you mean {prefix}{close[0]}?" if close else ""
            raise ConfigError(f"unknown config key {dotted!r}{hint} (known in "
                              f"{prefix.rstrip('.') or 'top level'}: {', '.join(fields)})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, dotted + ".")
        elif typing.get_origin(tp) is list and typing.get_args(tp) and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            item_cls = typing.get_args(tp)[0]
            if not isinstance(value, list):
                raise ConfigError(f"{dotted}: expected a list of {item_cls.__name__} mappings, got {value!r}")
            kwargs[key] = [from_dict(item_cls, {"name": v} if isinstance(v, str) else v, f"{dotted}.{i}.")
                           for i, v in enumerate(value)]
        else:
            kwargs[key] = _check_scalar(value, tp, dotted)
    obj = cls(**kwargs)
    obj.__dict__["_explicit"] = frozenset(raw)   # the keys the YAML or the command line set (see explicit_fields)
    return obj


def explicit_fields(section) -> dict:
    """The fields of a config section that the user set (in the YAML or on the command line, even to the global
    default's value) or that differ from the defaults (set by code), so that a component's own defaults (e.g.
    GSPO's epsilon 3e-4, HAPO's epsilon_high 0.2) win unless the user set the knob: ``algo.loss=gspo
    algo.epsilon=0.2`` runs GSPO with epsilon 0.2."""
    defaults = type(section)()
    given = section.__dict__.get("_explicit", frozenset())
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section)
            if f.name in given or getattr(section, f.name) != getattr(defaults, f.name)}


def component(spec: Component | None) -> tuple[str | None, dict]:
    """``"grpo"`` or ``{name: grpo, scale: none}`` -> ("grpo", {"scale": "none"})."""
    if spec is None:
        return None, {}
    if isinstance(spec, str):
        return spec, {}
    spec = dict(spec)
    if "name" not in spec:
        raise ConfigError(f"a component mapping needs a 'name' key, got {spec!r}")
    return spec.pop("name"), spec


def validate(cfg: Config) -> None:
    """Cross-field rules (registry names are checked when the trainer builds components)."""
    r, a, o, t = cfg.rollout, cfg.algo, cfg.optim, cfg.trainer
    if r.num_generations < 2:
        raise ConfigError(f"rollout.num_generations must be >= 2 (a group needs a baseline), got {r.num_generations}")
    if r.prompts_per_step < 1:
        raise ConfigError("rollout.prompts_per_step must be >= 1")
    if r.max_completion_length < 1:
        raise ConfigError("rollout.max_completion_length must be >= 1")
    if not 0.0 < r.top_p <= 1.0:
        raise ConfigError(f"rollout.top_p must be in (0, 1], got {r.top_p}")
    if not 0.0 <= r.min_p <= 1.0:
        raise ConfigError(f"rollout.min_p must be in [0, 1] (0 = off), got {r.min_p}")
    if r.repetition_penalty <= 0:
        raise ConfigError(f"rollout.repetition_penalty must be > 0 (1 = off), got {r.repetition_penalty}")
    if r.temperature < 0:
        raise ConfigError(f"rollout.temperature must be >= 0, got {r.temperature}")
    if a.epsilon_high is not None and a.epsilon_high < 0 or a.epsilon < 0:
        raise ConfigError("algo.epsilon and algo.epsilon_high must be >= 0")
    if a.beta < 0:
        raise ConfigError(f"algo.beta must be >= 0, got {a.beta}")
    if a.num_iterations < 1:
        raise ConfigError("algo.num_iterations must be >= 1")
    if o.micro_batch_size < 1 or o.steps_per_generation < 1:
        raise ConfigError("optim.micro_batch_size and optim.steps_per_generation must be >= 1")
    if not 0.0 < a.top_entropy_quantile <= 1.0:
        raise ConfigError(f"algo.top_entropy_quantile must be in (0, 1] (1 = every token), got {a.top_entropy_quantile}")
    if a.top_entropy_quantile < 1.0 and cfg.distributed.backend != "none":
        raise ConfigError("algo.top_entropy_quantile < 1 is single-process for now (the entropy quantile is taken over "
                          "the whole batch); set distributed.backend=none or algo.top_entropy_quantile=1")
    _validate_kl_reward(a.kl_reward)
    if a.sync_ref_model:
        if a.beta <= 0 and a.kl_reward.coef <= 0:
            raise ConfigError("algo.sync_ref_model needs a reference model: set algo.beta > 0 or algo.kl_reward.coef > 0")
        if not 0.0 <= a.ref_model_mixup_alpha <= 1.0 or a.ref_model_sync_steps < 1:
            raise ConfigError("algo.ref_model_mixup_alpha must be in [0, 1] and algo.ref_model_sync_steps >= 1, got "
                              f"{a.ref_model_mixup_alpha} and {a.ref_model_sync_steps}")
        if cfg.model.lora.r > 0:
            raise ConfigError("algo.sync_ref_model does not work with model.lora: the reference is the adapter-free "
                              "base model itself (as in TRL, which refuses it with PEFT too)")
        if cfg.distributed.backend == "deepspeed" and cfg.distributed.zero_stage == 3:
            raise ConfigError("algo.sync_ref_model with ZeRO-3 (partitioned parameters) is not supported; use ZeRO-2 or ddp")
        if cfg.distributed.backend == "fsdp2":
            raise ConfigError("algo.sync_ref_model with distributed.backend=fsdp2 (sharded parameters) is not supported; "
                              "use distributed.backend=ddp or deepspeed with zero_stage 2")
    if o.max_tokens_per_micro_batch < 0:
        raise ConfigError(f"optim.max_tokens_per_micro_batch must be >= 0 (0 = off), got {o.max_tokens_per_micro_batch}")
    if (r.prompts_per_step * r.num_generations) % o.steps_per_generation:
        raise ConfigError(f"optim.steps_per_generation ({o.steps_per_generation}) must divide the generation batch "
                          f"rollout.prompts_per_step * rollout.num_generations = {r.prompts_per_step * r.num_generations}")
    if o.lr_scheduler_type not in ("constant", "linear", "cosine"):
        raise ConfigError(f"optim.lr_scheduler_type must be constant, linear or cosine, got {o.lr_scheduler_type!r}")
    if model_dtype := cfg.model.dtype:
        if model_dtype not in ("float32", "bfloat16", "float16", "auto"):
            raise ConfigError(f"model.dtype must be float32, bfloat16, float16 or auto, got {model_dtype!r}")
    if r.async_level < 0:
        raise ConfigError(f"rollout.async_level must be >= 0 (0 = synchronous, 1 = one-step-off), got {r.async_level}")
    if r.weight_sync not in ("file", "dist"):
        raise ConfigError(f"rollout.weight_sync must be file or dist, got {r.weight_sync!r}")
    if a.vllm_importance_sampling_mode not in ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask"):
        raise ConfigError("algo.vllm_importance_sampling_mode must be token_truncate, token_mask, sequence_truncate "
                          f"or sequence_mask, got {a.vllm_importance_sampling_mode!r}")
    if cfg.data.task is None and cfg.data.train_path is None:
        raise ConfigError("set data.task (a synthetic task) or data.train_path (your prompts)")
    if not cfg.rewards:
        raise ConfigError("rewards: at least one reward function is needed")
    if t.max_steps < 1:
        raise ConfigError("trainer.max_steps must be >= 1")
    if t.eval_prompt_format not in ("benchmark", "training"):
        raise ConfigError(f"trainer.eval_prompt_format must be benchmark or training, got {t.eval_prompt_format!r}")
    if "{prompt}" not in t.eval_prompt_template:
        raise ConfigError("trainer.eval_prompt_template must contain {prompt} (where the benchmark question goes)")
    for i, turn in enumerate(cfg.data.few_shot):
        if not (isinstance(turn, dict) and set(turn) >= {"role", "content"}):
            raise ConfigError(f"data.few_shot[{i}] must be a {{role, content}} chat turn, got {turn!r:.80}")
    for name in t.report_to:
        if name not in ("tensorboard", "wandb", "trackio", "none", "jsonl"):
            raise ConfigError(f"trainer.report_to: unknown tracker {name!r} (tensorboard, wandb, trackio, none)")
    _validate_scale_options(cfg)


def _validate_kl_reward(k: KLRewardSettings) -> None:
    """algo.kl_reward: coef >= 0; a known controller and estimator; adaptive needs target > 0 and horizon > 0."""
    if k.coef < 0:
        raise ConfigError(f"algo.kl_reward.coef must be >= 0 (0 = off), got {k.coef}")
    if k.controller not in ("fixed", "adaptive"):
        raise ConfigError(f"algo.kl_reward.controller must be fixed or adaptive, got {k.controller!r}")
    if k.estimator not in ("k1", "k2", "k3"):
        raise ConfigError(f"algo.kl_reward.estimator must be k1, k2 or k3, got {k.estimator!r}")
    if k.controller == "adaptive":
        if k.target is None or k.target <= 0:
            raise ConfigError(f"algo.kl_reward.target must be > 0 with controller adaptive (a sequence KL, e.g. 6.0 "
                              f"in Ziegler et al.), got {k.target}")
        if k.horizon <= 0:
            raise ConfigError(f"algo.kl_reward.horizon must be > 0, got {k.horizon}")
        if k.coef <= 0:
            raise ConfigError("algo.kl_reward.controller adaptive multiplies algo.kl_reward.coef: set coef > 0 (its start)")
    elif k.target is not None:
        raise ConfigError("algo.kl_reward.target is used by controller adaptive only; set algo.kl_reward.controller=adaptive "
                          "or drop the target")


def _validate_scale_options(cfg: Config) -> None:
    """distributed / LoRA / memory options (world-size rules are checked at start-up, rlpost/distributed/sharding.py)."""
    d, m, o = cfg.distributed, cfg.model, cfg.optim
    if d.backend not in ("none", "ddp", "deepspeed", "fsdp2"):
        raise ConfigError(f"distributed.backend must be none, ddp, deepspeed or fsdp2, got {d.backend!r}")
    if d.zero_stage not in (2, 3):
        raise ConfigError(f"distributed.zero_stage must be 2 or 3, got {d.zero_stage}")
    if d.dist_backend not in ("gloo", "nccl", "auto"):
        raise ConfigError(f"distributed.dist_backend must be gloo, nccl or auto, got {d.dist_backend!r}")
    if d.rollout not in ("split", "replicate"):
        raise ConfigError(f"distributed.rollout must be split or replicate, got {d.rollout!r}")
    if d.backend == "fsdp2":
        _validate_fsdp2(cfg)
    elif (d.offload_optimizer or d.offload_param) and d.backend != "deepspeed":
        raise ConfigError("distributed.offload_optimizer / offload_param need distributed.backend=deepspeed or fsdp2")
    elif d.offload_param and d.zero_stage != 3:
        raise ConfigError("distributed.offload_param needs distributed.zero_stage=3")
    if d.mixed_precision != "none" and d.backend != "fsdp2":
        raise ConfigError(f"distributed.mixed_precision={d.mixed_precision} is an FSDP2 option (distributed.backend="
                          "fsdp2); DeepSpeed follows model.dtype, one process and DDP train in model.dtype")
    if m.lora.r < 0:
        raise ConfigError(f"model.lora.r must be >= 0 (0 = no LoRA), got {m.lora.r}")
    if m.load_in_4bit and m.lora.r == 0:
        raise ConfigError("model.load_in_4bit (QLoRA) trains adapters only: set model.lora.r (e.g. 16)")
    if m.lora.sync not in ("adapter", "merged"):
        raise ConfigError(f"model.lora.sync must be adapter or merged, got {m.lora.sync!r}")
    if m.lora.r == 0 and m.lora.adapter_path:
        raise ConfigError("model.lora.adapter_path needs model.lora.r > 0")
    if m.bnb_4bit_quant_type not in ("nf4", "fp4"):
        raise ConfigError(f"model.bnb_4bit_quant_type must be nf4 or fp4, got {m.bnb_4bit_quant_type!r}")
    if o.logprob_chunk_size < 0:
        raise ConfigError(f"optim.logprob_chunk_size must be >= 0 (0 = off), got {o.logprob_chunk_size}")


def _validate_fsdp2(cfg: Config) -> None:
    """What ``distributed.backend: fsdp2`` does not do (rlpost/distributed/fsdp2.py), each with the reason."""
    d, m, o = cfg.distributed, cfg.model, cfg.optim
    if d.mixed_precision not in ("none", "bfloat16", "float16"):
        raise ConfigError(f"distributed.mixed_precision must be none, bfloat16 or float16, got {d.mixed_precision!r}")
    if d.mixed_precision != "none" and m.dtype != "float32":
        raise ConfigError(f"distributed.mixed_precision={d.mixed_precision} keeps float32 master weights: set "
                          f"model.dtype=float32 (got {m.dtype}), or drop mixed_precision to train in model.dtype")
    if d.offload_optimizer:
        raise ConfigError("distributed.offload_optimizer is a DeepSpeed option: FSDP2 offloads the parameters, their "
                          "gradients and the optimizer step together; set distributed.offload_param=true")
    if m.load_in_4bit:
        raise ConfigError("model.load_in_4bit (QLoRA) with distributed.backend=fsdp2: bitsandbytes' 4-bit weights "
                          "cannot be sharded as DTensors; use distributed.backend=ddp or deepspeed")
    if o.logprob_chunk_size > 0:
        raise ConfigError("optim.logprob_chunk_size with distributed.backend=fsdp2: the chunked LM head runs outside "
                          "the model's forward (and is recomputed in backward), which FSDP2's gathers do not cover "
                          "(not verified); use distributed.backend=deepspeed or ddp, or optim.logprob_chunk_size=0")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: "Config | dict", path: str | Path) -> None:
    """Write a config (or its resolved mapping, rlpost/resolve.py); secrets (the serve token) are redacted."""
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    if data["rollout"].get("server_token"):
        data["rollout"]["server_token"] = "<redacted>"
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
