"""LoRA through peft (model.lora): merged weights for engine sync, adapters that peft loads, a run that learns."""
import copy
import json
import math

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from rlpost.config import ConfigError, ModelConfig, load_config
from rlpost.models.lora import (AdapterDisabledView, load_adapter_state_into, merged_named_parameters,
                                quantization_kwargs, save_final)


@pytest.fixture()
def peft_model(random_tiny_model):
    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)  # B != 0
    return get_peft_model(copy.deepcopy(random_tiny_model).float(), cfg)


def test_merged_weights_equal_merge_and_unload_without_touching_the_model(peft_model, random_tiny_model):
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    merged = dict(merged_named_parameters(peft_model))
    reference = dict(copy.deepcopy(peft_model).merge_and_unload().named_parameters())
    assert sorted(merged) == sorted(reference) == sorted(n for n, _ in random_tiny_model.named_parameters())
    for name, tensor in reference.items():
        assert torch.allclose(merged[name], tensor, atol=1e-6), name
    assert not torch.allclose(merged["model.layers.0.self_attn.q_proj.weight"],
                              dict(random_tiny_model.named_parameters())["model.layers.0.self_attn.q_proj.weight"])
    for n, p in peft_model.named_parameters():  # the trained model is unchanged (no merge in place)
        assert torch.equal(p, before[n]), n


def test_engine_sync_sends_hf_names_to_the_engine(peft_model):
    from rlpost.distributed.weight_sync import sync_engine
    from rlpost.engines.hf import HFEngine
    from rlpost.models.tokenizer import build_char_tokenizer
    target = copy.deepcopy(peft_model).merge_and_unload()
    for p in target.parameters():
        p.data.zero_()
    sync_engine(HFEngine(target, build_char_tokenizer()), peft_model)  # unknown names would raise
    x = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        assert torch.allclose(target(input_ids=x).logits, peft_model(input_ids=x).logits, atol=1e-5)


def test_saved_adapter_loads_in_peft_and_merged_copy_in_transformers(peft_model, random_tiny_model, tmp_path,
                                                                     char_tokenizer):
    save_final(peft_model, char_tokenizer, tmp_path / "final")
    assert (tmp_path / "final" / "adapter_config.json").exists()
    loaded = PeftModel.from_pretrained(copy.deepcopy(random_tiny_model).float(), tmp_path / "final")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "final" / "merged")
    x = torch.randint(0, 50, (2, 11))
    with torch.no_grad():
        want = peft_model(input_ids=x).logits
        assert torch.allclose(loaded(input_ids=x).logits, want, atol=1e-5)
        assert torch.allclose(merged(input_ids=x).logits, want, atol=1e-4)
    # resume path: adapter weights go back into a live peft model
    fresh = get_peft_model(copy.deepcopy(random_tiny_model).float(), LoraConfig(r=4, lora_alpha=8,
                                                                               target_modules="all-linear"))
    load_adapter_state_into(fresh, tmp_path / "final")
    with torch.no_grad():
        assert torch.allclose(fresh(input_ids=x).logits, want, atol=1e-5)


def test_reference_view_is_the_base_model(peft_model, random_tiny_model):
    view = AdapterDisabledView(peft_model)
    x = torch.randint(0, 50, (1, 7))
    with torch.no_grad():
        assert torch.allclose(view(input_ids=x).logits, random_tiny_model.float()(input_ids=x).logits, atol=1e-5)
    assert list(view.parameters()) == []  # no second copy of the weights


def test_load_model_trains_adapters_only(tiny_model_path):
    from rlpost.models.loading import load_model
    cfg = load_config(None, ["model.lora.r=8", "model.lora.target_modules=[q_proj,v_proj]"]).model
    model = load_model(str(tiny_model_path), cfg, "cpu")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(("q_proj" in n or "v_proj" in n) for n in trainable)


def test_qlora_needs_bitsandbytes_and_cuda():
    with pytest.raises(ConfigError, match="load_in_4bit"):
        load_config(None, ["model.load_in_4bit=true"])
    cfg = ModelConfig(load_in_4bit=True)
    cfg.lora.r = 8
    try:
        import bitsandbytes  # noqa: F401
        expected = "CUDA"
    except ImportError:
        expected = "bitsandbytes"
    with pytest.raises(RuntimeError, match=expected):
        quantization_kwargs(cfg, torch.device("cpu"))


def test_lora_update_raises_the_surrogate_through_the_adapters_only(random_tiny_model, char_tokenizer):
    """One learner update of a peft model (B = 0 at the start, so it starts at the base model): the GRPO surrogate
    sum_t A_t * log pi(y_t) rises (first order: SGD moves along its gradient), and only adapter weights move. A
    property of the math on any float path, unlike a reward threshold after a short run (measured with
    scripts/learning_spread.py: a 25-40-step LoRA run's reward gain ranged -0.04..+0.07 over seeds)."""
    from rlpost.algos.losses import ClipParams
    from rlpost.batch import collate
    from rlpost.config import OptimConfig
    from rlpost.learner import Learner, LearnerSettings, batched_logprobs, build_scheduler
    from rlpost.types import Prompt, Sample, Trajectory
    torch.manual_seed(0)
    model = get_peft_model(copy.deepcopy(random_tiny_model).float(),
                           LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")).train()
    prompt = char_tokenizer("12+34=", add_special_tokens=False)["input_ids"]
    trajs = [Trajectory(Prompt(0, "p"), 0, [Sample(prompt_ids=prompt, completion_ids=[10 + i, 20 + i, 30],
                                                    logprobs=[0.0] * 3)], "", reward=float(i % 2)) for i in range(4)]
    batch = collate(trajs, char_tokenizer.pad_token_id)
    adv = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]]).expand(4, 3) * batch.response_mask
    settings = LearnerSettings("grpo", ClipParams(), "token-mean", max_completion_length=3, max_grad_norm=0.0)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    learner = Learner(model, opt, build_scheduler(opt, OptimConfig(), 1), settings)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    with torch.no_grad():
        before = batched_logprobs(model, batch, settings, False)[0]
    learner.update(batch, adv, learner.prepare(batch))
    with torch.no_grad():
        after = batched_logprobs(model, batch, settings, False)[0]
    gain = ((after - before) * adv).sum().item()
    assert gain > 1e-4, gain
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)
    assert any("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.slow
def test_lora_run_trains_and_saves_a_peft_adapter(tmp_path, tiny_model_path):
    """25 GRPO steps with rank-16 adapters at lr 1e-3 through `rlpost train` (seconds on 2 CPU cores): the run
    logs finite losses with non-zero gradients, the final adapter loads with peft, its logits equal those of the
    merged copy and differ from the base model's. (Whether the reward rises in 25 steps depends on the seed and
    the float path; the learning direction is tested above.)"""
    from rlpost.cli import main
    out = tmp_path / "lora"
    code = main(["train", "configs/tiny/arith_grpo.yaml", f"trainer.output_dir={out}", "trainer.max_steps=25",
                 "trainer.eval_steps=0", "data.num_eval=8", "trainer.progress_bar=false", "trainer.report_to=[]",
                 "model.lora.r=16", "model.lora.alpha=32", "optim.learning_rate=1e-3"])
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 25 and all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in steps)
    final = out / "final_model"
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    trained = PeftModel.from_pretrained(base, final)
    merged = AutoModelForCausalLM.from_pretrained(final / "merged")
    x = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        assert torch.allclose(trained(input_ids=x).logits, merged(input_ids=x).logits, atol=1e-4)
        assert not torch.allclose(trained(input_ids=x).logits,
                                  AutoModelForCausalLM.from_pretrained(tiny_model_path)(input_ids=x).logits, atol=1e-3)


def test_continuing_an_adapter_starts_from_it_and_references_it(peft_model, random_tiny_model, tmp_path,
                                                                char_tokenizer):
    """model.lora.adapter_path: the policy starts from the saved adapter (trainable) and the reference model
    (algo.beta > 0) is that starting policy, not the bare base model."""
    from rlpost.models.lora import reference_model
    from rlpost.models.loading import load_model
    base_dir = tmp_path / "base"
    copy.deepcopy(random_tiny_model).float().save_pretrained(base_dir)
    char_tokenizer.save_pretrained(base_dir)
    save_final(peft_model, char_tokenizer, tmp_path / "adapter", save_merged=False)
    cfg = load_config(None, ["model.lora.r=4", f"model.lora.adapter_path={tmp_path / 'adapter'}"]).model
    policy = load_model(str(base_dir), cfg, "cpu")
    ref = reference_model(str(base_dir), cfg, "cpu", policy)
    x = torch.randint(0, 50, (2, 8))
    with torch.no_grad():
        want = peft_model(input_ids=x).logits
        assert torch.allclose(policy(input_ids=x).logits, want, atol=1e-5)
        assert torch.allclose(ref(input_ids=x).logits, want, atol=1e-4)
    assert any(p.requires_grad for n, p in policy.named_parameters() if "lora_" in n)
    assert not any(p.requires_grad for p in ref.parameters())
