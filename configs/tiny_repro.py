"""The paper's transductive regime at CPU scale: a small D_U that is also the evaluated split.

Starts from configs/tiny_arith.py (the same 1.7M-parameter model, tokenizer task and 400-step SFT
on D_L) and changes what the paper's regime needs (TEMPO_ALGORITHM.md §7):

- D_U is 32 three-step questions, trained on for many epochs (8 prompts a step: one epoch
  every 4 steps, 6 epochs in 24 steps) and evaluated itself (`eval.splits`: D_U only; the
  labeled holdout stays a separate split, unused here to save time). Three steps sit at the
  long end of D_L's 2-3, where the SFT policy is right about two times in three: base D_U
  mean@8 0.647 ± 0.092, maj@8 0.729, pass@8 0.917 (3 seeds, docs/tiny_repro/), so the headroom
  (pass@8 - mean@8) is large and the majority carries signal.
- 8 samples a prompt (GRPO groups and majority votes of 8), pass@k for every k <= 8, no greedy
  pass, a critic warmed up for 8 E-steps.

`configs/tiny_repro.py:shifted` is the same regime on a D_U shifted from D_L: 3-4-step chains,
so about half of the test-time questions are one step longer than any D_L question. The
tokenizer is trained on every split's difficulty, so the variant fine-tunes its own SFT policy
(same D_L, same recipe).

Run by launch/sweep.py (README, "The paper's claims at CPU scale") for base, oracle, tempo,
tempo_frozen, ttrl, empo, intuitor and tempo with recalibrate_every 1, 2, 4, 8 over 3 seeds.

A critic of a value head alone ranks questions, not the answers to one question: its step-0 D_U
AUROC within a question is 0.542 ± 0.024 over seeds 0-4 with this warm-up (8 E-steps x 2
updates at lr 1e-4; pooled 0.666), and neither 4x the warm-up, counterfactual hard negatives
(`tempo.critic_negatives`), a longer SFT for the critic (`tempo.critic_sft_steps`) nor a
pairwise ranking loss moved it (README, "What moved the critic's AUROC"). The answers the policy
gets wrong hold a token its own language model finds unlikely, so this config's critic adds
0.1 x the lowest log-prob its language model gives a response token so far
(`train.critic_likelihood_weight`): 0.776 ± 0.021 within a question over seeds 0-4 (pooled
0.894), measured by benchmarks/critic_auroc.py.
"""

import importlib.util
import pathlib

import ml_collections


def _tiny_arith() -> ml_collections.ConfigDict:
    path = pathlib.Path(__file__).with_name("tiny_arith.py")
    spec = importlib.util.spec_from_file_location("tiny_arith", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """The study regime; `variant` "shifted" moves D_U off D_L (module docstring)."""
    if variant not in ("", "shifted"):
        raise ValueError(f"configs/tiny_repro.py: unknown variant {variant!r}; use '' or 'shifted'")
    c = _tiny_arith()
    c.total_steps = 24
    c.eval_every = 6
    c.save_every = 6

    c.data.num_unlabeled = 32
    c.data.unlabeled_difficulty.min_steps = 3
    c.data.unlabeled_difficulty.max_steps = 3
    c.data.max_prompt_length = 16  # 3-step questions are at most 15 tokens with BOS
    c.data.prompts_per_step = 8
    c.rollout.n = 8
    c.rollout.max_new_tokens = 40  # D_L solutions are at most 28 tokens, 3-step ones ~30

    c.tempo.critic_warmup_steps = 8
    c.tempo.critic_updates = 2
    c.tempo.recalibrate_every = 4
    # 3x below tiny_arith's RLVR rate: at 1e-4 the self-rewarded methods are dominated by update
    # noise (README), while the oracle gains at both.
    c.train.policy_optimizer.learning_rate = 3e-5
    c.train.critic_optimizer.learning_rate = 1e-4
    # The critic reads its own language model's likelihood of the written tokens (module
    # docstring): it lifts the within-question AUROC from 0.54 to 0.78 (5 seeds).
    c.train.critic_likelihood_weight = 0.1

    c.eval.n = 8
    c.eval.ks = (1, 2, 3, 4, 5, 6, 7, 8)
    c.eval.num_problems = 32
    c.eval.greedy = False
    c.eval.splits = ml_collections.ConfigDict({"unlabeled": "unlabeled"})
    if variant == "shifted":
        # Longer chains: 3-4 steps, so about half of D_U is one step longer than any D_L
        # question (D_L is 2-3); everything else, D_L and the SFT included, is the same (4-step
        # prompts and solutions still fit the 16 prompt and 40 response tokens: at most 15 and
        # 36 + EOS, tempo_jax/data/arithmetic.py).
        c.data.unlabeled_difficulty.max_steps = 4
    return c
