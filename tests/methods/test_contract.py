"""The method contract (rlpost/methods/__init__.py): a method declares Needs, reads typed frozen contexts, and
the trainer applies what it returns (sampler, LR controller, rollout params, KL coefficient, metrics)."""
import ast
import contextlib
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from rlpost.config import ConfigError, load_config
from rlpost.methods import METHODS, MethodHooks, Needs, StepContext, SetupContext, combine_needs

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[2]
PROMPTS = 4
SMALL = ["rollout.prompts_per_step=4", "rollout.num_generations=2", "data.num_train=50", "data.num_eval=4",
         "trainer.eval_steps=-1", "trainer.save_steps=0", "trainer.report_to=[]", "trainer.progress_bar=false",
         "trainer.num_threads=1", "optim.steps_per_generation=2", "optim.micro_batch_size=4", "algo.beta=0.04",
         "optim.learning_rate=1e-4"]


class InOrderSampler:
    """Draws training rows 0, 1, 2, ... and records every draw."""

    def __init__(self):
        self.draws: list[list[int]] = []

    def next_indices(self, count: int) -> list[int]:
        start = sum(len(d) for d in self.draws)
        self.draws.append(list(range(start, start + count)))
        return self.draws[-1]

    def update(self, metrics: dict) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {"draws": self.draws}

    def load_state_dict(self, state: dict) -> None:
        self.draws = state["draws"]


class HalfLR:
    """An LR controller that halves every optimizer step's learning rate."""
    needs_grad_stats = False

    def observe(self, grad_stats: dict) -> dict:
        return {}

    def lr_scale(self, step: int) -> float:
        return 0.5

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class ToyMethod(MethodHooks):
    """Declares every need, provides a sampler and an LR controller, sets the KL coefficient and the rollout's
    max_tokens, and records the contexts it is given."""

    def __init__(self, kl_coef: float = 0.25, max_tokens: int = 3):
        self.coef, self.max_tokens = kl_coef, max_tokens
        self.sampler = InOrderSampler()
        self.setup_ctx, self.extras_ctx, self.after_ctx = None, [], []
        self.hooked_rows = 0

    def setup(self, ctx: SetupContext) -> Needs:
        self.setup_ctx = ctx
        return Needs(entropies=True, sum_p_sq=True, old_forward_hooks=(self.count_rows,), sampler=self.sampler,
                     lr_controller=HalfLR())

    @contextlib.contextmanager
    def count_rows(self, model, micro_batch):
        yield
        self.hooked_rows += len(micro_batch)

    def rollout_params(self, params, purpose: str, step: int):
        return dataclasses.replace(params, max_tokens=self.max_tokens) if purpose == "rollout" else params

    def kl_coef(self) -> float | None:
        return self.coef

    def extras(self, ctx: StepContext):
        self.extras_ctx.append(ctx)
        return super().extras(ctx)

    def after_update(self, ctx: StepContext) -> dict:
        self.after_ctx.append(ctx)
        return {"toy/rows": float(len(ctx.batch))}


def _trainer(tmp_path, *overrides):
    from rlpost.trainer import Trainer
    cfg = load_config(str(ROOT / "configs/tiny/arith_grpo.yaml"),
                      [*SMALL, f"trainer.output_dir={tmp_path}", *overrides])
    return Trainer(cfg)


def test_trainer_applies_what_a_method_declares(tmp_path):
    with METHODS.scoped():
        METHODS.add("toy", ToyMethod)
        trainer = _trainer(tmp_path, "trainer.max_steps=2", "method={toy: {}}").setup()
        toy = trainer.methods["toy"]
        trainer.train()
        trainer.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] >= 1]
    assert len(steps) == 2
    # sampler: the trainer drew its prompts from the method's sampler
    assert trainer.sampler is toy.sampler and toy.sampler.draws == [[0, 1, 2, 3], [4, 5, 6, 7]]
    for ctx, drawn in zip(toy.extras_ctx, toy.sampler.draws):
        assert sorted({t.prompt.id for t in ctx.trajectories}) == sorted(trainer.train_prompts[i].id for i in drawn)
    # LR controller: every optimizer step ran at half the (constant) learning rate
    assert [r["lr"] for r in steps] == [0.5e-4, 0.5e-4]
    # KL coefficient: the learner's beta is the method's, and the KL term is on
    assert trainer.learner.settings.beta == 0.25 and all("kl" in r for r in steps)
    # rollout params: training completions are at most max_tokens long
    assert all(r["completion/mean_length"] <= 3 for r in steps)
    # needs: entropies and sum_p_sq computed in the old-policy pass, whose hook saw every row of both steps
    for ctx in toy.extras_ctx:
        B, T = ctx.batch.response_mask.shape
        assert ctx.fixed.old_entropies.shape == ctx.fixed.sum_p_sq.shape == ctx.fixed.ref_logprobs.shape == (B, T)
    assert toy.hooked_rows == sum(len(ctx.batch) for ctx in toy.extras_ctx) == 2 * PROMPTS * 2
    assert all("policy/entropy" in r for r in steps)
    # step contexts: the step, the learner's own partition, update metrics only after the update
    assert [ctx.step for ctx in toy.extras_ctx] == [ctx.step for ctx in toy.after_ctx] == [0, 1]
    for before, after in zip(toy.extras_ctx, toy.after_ctx):
        B = len(before.batch)
        assert [r.tolist() for r in before.mini_batches] == [list(range(B // 2)), list(range(B // 2, B))]
        assert before.update_metrics is None and {"loss", "kl", "lr"} <= set(after.update_metrics)
        assert after.fixed is before.fixed and after.batch is before.batch
    assert all(r["toy/rows"] == 2 * PROMPTS for r in steps)
    # the setup context's learner settings are a copy: a method cannot change the learner through them
    assert toy.setup_ctx.learner_settings is not trainer.learner.settings
    assert toy.setup_ctx.reward_names == ["arithmetic"] and toy.setup_ctx.has_ref_model


def test_a_method_lr_controller_excludes_algo_lr_controller(tmp_path):
    with METHODS.scoped():
        METHODS.add("toy", ToyMethod)
        trainer = _trainer(tmp_path, "method={toy: {}}", "algo.lr_controller=oblr_snr", "optim.micro_batch_size=2")
        with pytest.raises(ConfigError, match="drop algo.lr_controller"):
            trainer.setup()
        trainer.close()


def test_contexts_hold_only_their_fields_and_are_frozen():
    assert [f.name for f in dataclasses.fields(StepContext)] == [
        "step", "batch", "fixed", "trajectories", "mini_batches", "evaluate", "all_reduce_sum", "update_metrics"]
    assert [f.name for f in dataclasses.fields(SetupContext)] == [
        "cfg", "model", "tokenizer", "model_path", "train_prompts", "reward_names", "advantage_params",
        "has_ref_model", "learner_settings"]
    ctx = StepContext(step=0, batch=None, fixed=None, trajectories=[], mini_batches=[], evaluate=dict,
                      all_reduce_sum=lambda x: x)
    assert not hasattr(ctx, "trainer") and not hasattr(ctx, "learner") and not hasattr(ctx, "engine")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.trainer = object()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.step = 1


def test_combined_needs():
    def hook(model, micro_batch):
        return contextlib.nullcontext()

    sampler, controller = InOrderSampler(), HalfLR()
    both = combine_needs({"a": Needs(entropies=True, old_forward_hooks=(hook,), sampler=sampler),
                          "b": Needs(sum_p_sq=True, old_forward_hooks=(hook, hook), lr_controller=controller)})
    assert both == Needs(entropies=True, sum_p_sq=True, old_forward_hooks=(hook, hook, hook), sampler=sampler,
                         lr_controller=controller)
    assert combine_needs({}) == Needs()
    with pytest.raises(ConfigError, match="method.a and method.c both provide the sampler"):
        combine_needs({"a": Needs(sampler=sampler), "b": Needs(), "c": Needs(sampler=InOrderSampler())})
    with pytest.raises(ConfigError, match="both provide the lr controller"):
        combine_needs({"a": Needs(lr_controller=controller), "b": Needs(lr_controller=HalfLR())})


def _hooks(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            yield from (f for f in node.body if isinstance(f, ast.FunctionDef))


def _root(node):
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


@pytest.mark.parametrize("path", sorted((ROOT / "rlpost/methods").glob("*.py")), ids=lambda p: p.name)
def test_method_modules_never_take_the_trainer_nor_assign_outside_self(path):
    """No hook takes a trainer (or learner / engine); attribute assignments only ever target the method itself."""
    tree = ast.parse(path.read_text())
    for fn in _hooks(tree):
        names = {a.arg for a in fn.args.args + fn.args.kwonlyargs}
        assert not names & {"trainer", "learner", "engine"}, f"{path.name}: {fn.name}{sorted(names)}"
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AugAssign, ast.AnnAssign)) else []
        for target in targets:
            for t in (target.elts if isinstance(target, ast.Tuple) else [target]):
                if isinstance(t, ast.Attribute):
                    assert _root(t) == "self", f"{path.name}:{t.lineno} assigns {ast.unparse(t)}"
