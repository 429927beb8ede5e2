"""The base config: every field the trainer reads, each with a one-line comment.

Other config files start from `get_config()` here and override. Command-line overrides:
`tempo-jax train --config=configs/X.py --config.rollout.n=4`.
"""

import dataclasses

import ml_collections

from tempo_jax import parallel, train
from tempo_jax.data.arithmetic import ArithmeticTaskConfig
from tempo_jax.data.row_validation import RowLimits


def get_config() -> ml_collections.ConfigDict:
    """All defaults; configs/*.py start from this and override."""
    c = ml_collections.ConfigDict()

    # tempo|tempo_mixed|tempo_frozen|ttrl|empo|intuitor|rlvr; upper bounds that read D_U's hidden
    # answers: oracle (TTRL's loop), tempo_oracle / tempo_mixed_oracle (TEMPO's loop, R_i hidden)
    c.method = "tempo"
    c.seed = 0  # master seed: model init, data order, sampling
    c.total_steps = 100  # test-time-training steps
    c.eval_every = 4  # evaluate every this many steps and at the end (0 = never, not even step 0)
    c.save_every = 10  # checkpoint every this many steps (and at the end)
    c.progress_bar = True  # console progress bar

    # --- model -------------------------------------------------------------------------------
    c.model = ml_collections.ConfigDict()
    c.model.preset = "tiny"  # a preset of tempo_jax.models (ignored when hf_path is set)
    c.model.overrides = ml_collections.ConfigDict()  # ModelConfig fields replacing the preset's
    c.model.hf_path = ""  # local HF checkpoint directory of the initial policy ('' = preset)
    c.model.critic_hf_path = ""  # local HF token-classification checkpoint of the critic
    c.model.param_dtype = "float32"  # float32 | bfloat16: stored parameters
    c.model.compute_dtype = "float32"  # float32 | bfloat16: activations and matmuls
    # auto | dense | blockwise | splash | cudnn: prefill and training attention (auto: splash on
    # TPU, cuDNN on GPU in bfloat16, blockwise otherwise; tempo_jax.models.attention).
    c.model.attention = "auto"
    c.model.attention_block_size = 512  # keys per block of the blockwise attention

    # --- tokenizer (tempo_jax.data.pipeline.data_config_from reads it) ------------------------
    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.kind = "sentencepiece"  # sentencepiece | hf
    c.tokenizer.path = ""  # .model file or HF directory; '' = train one for the built-in task
    c.tokenizer.vocab_size = 320  # size of a SentencePiece model trained for the built-in task
    c.tokenizer.prompt_template = "{question}\n"  # plain prompt; {question} is replaced
    c.tokenizer.chat = False  # render prompts with the checkpoint's chat template instead
    c.tokenizer.system_prompt = ""  # chat: a system message before each question ('' = none)
    c.tokenizer.chat_template = ""  # chat: a Jinja template replacing the checkpoint's ('' = its)
    c.tokenizer.chat_template_kwargs = ml_collections.ConfigDict()  # chat: template variables
    c.tokenizer.add_bos = True  # plain prompts: start with the tokenizer's BOS token (if any)

    # --- data --------------------------------------------------------------------------------
    c.data = ml_collections.ConfigDict()
    c.data.source = "builtin"  # builtin (arithmetic task) | files (local JSONL / Parquet)
    c.data.dir = ""  # where tfds builds datasets ('' = WORKDIR/data; for gs:// a local cache)
    c.data.labeled_files = ""  # comma-separated files of D_L (source = files)
    c.data.unlabeled_files = ""  # comma-separated files of D_U (answers used by evaluation only)
    c.data.eval_files = ""  # comma-separated files of the labeled holdout (split 'eval')
    c.data.mixed_files = ""  # comma-separated files of both kinds (is_labeled_field says which)
    c.data.question_field = "question"  # field holding the question text
    c.data.answer_field = "answer"  # field holding the answer (a string or a list of strings)
    c.data.labeled_question_field = ""  # D_L files' question field ('' = data.question_field)
    c.data.labeled_answer_field = ""  # D_L files' answer field ('' = data.answer_field)
    c.data.unlabeled_question_field = ""  # D_U files' question field ('' = data.question_field)
    c.data.unlabeled_answer_field = ""  # D_U files' answer field ('' = data.answer_field)
    c.data.eval_question_field = ""  # holdout files' question field ('' = data.question_field)
    c.data.eval_answer_field = ""  # holdout files' answer field ('' = data.answer_field)
    c.data.solution_field = ""  # D_L files' worked-solution field, for SFT ('' = none)
    c.data.is_labeled_field = "is_labeled"  # mixed files' field marking a labeled row
    # Longest accepted fields of a file row (tempo_jax.data.row_validation.RowLimits); longer
    # rows are skipped, or fail with data.strict.
    c.data.limits = ml_collections.ConfigDict(dataclasses.asdict(RowLimits()))
    c.data.strict = False  # a bad file row fails the run (naming file, row, field), not skipped
    c.data.task_seed = ArithmeticTaskConfig().seed  # built-in task: the problems' seed
    c.data.num_labeled = 2048  # built-in task: size of the labeled split
    c.data.num_unlabeled = 256  # built-in task: size of the unlabeled (test-time) split
    c.data.num_eval = 256  # built-in task: size of the holdout split 'eval'
    # Built-in task difficulty knobs per split (tempo_jax.data.arithmetic.Difficulty: min/max_steps,
    # min/max_digits, operations, max_multiplier, allow_negative), e.g.
    # --config.data.unlabeled_difficulty.max_steps=5.
    task = ArithmeticTaskConfig()
    for split in ("labeled", "unlabeled", "eval"):
        c.data[f"{split}_difficulty"] = ml_collections.ConfigDict(
            dataclasses.asdict(getattr(task, split))
        )
    c.data.max_prompt_length = 32  # P: prompts are left-truncated or dropped past this
    c.data.overlong = "truncate"  # truncate (left, as the authors) | drop
    c.data.pad_multiple = 0  # 0: pad prompts to P; k: to the batch's longest rounded up to k
    c.data.prompts_per_step = 8  # B: prompts per rollout batch
    # Prompts per policy optimizer update: each step's rollouts are split into B / this many
    # mini-batches of whole prompt groups, one update each (0 = B: one update per step).
    c.data.prompts_per_update = 0
    c.data.labeled_fraction = 0.5  # tempo_mixed: fraction of each mixed batch drawn from D_L

    # --- rollouts ----------------------------------------------------------------------------
    c.rollout = ml_collections.ConfigDict()
    c.rollout.n = 4  # samples per prompt
    c.rollout.temperature = 1.0  # sampling temperature
    c.rollout.top_p = 1.0  # nucleus threshold (1 = off)
    c.rollout.top_k = 0  # top-k (0 = off)
    c.rollout.max_new_tokens = 64  # L: response slots
    # Rows (prompts x n) sampled per compiled call, so the KV cache holds this many rows at
    # once; each chunk stops when its own rows have (0 = the whole batch in one call).
    c.rollout.max_rows_per_chunk = 0
    # static: one while_loop per chunk until its longest row ends (`sampling.Sampler`); paged:
    # continuous batching of decode slots over a paged KV cache (`sampling.Engine`, on the mesh).
    c.rollout.engine = "static"
    c.rollout.paged = ml_collections.ConfigDict()
    c.rollout.paged.page_size = 16  # tokens per KV page (64 / 128 on TPU)
    c.rollout.paged.num_slots = 0  # rows decoding at once (0 = every row of a chunk)
    c.rollout.paged.num_pages = 0  # pool pages a row shard (0 = from free HBM; CPU: full rows)
    c.rollout.paged.steps_per_call = 16  # decode steps per jitted call (host refills between)
    # A preempted row, readmitted: recompute (keeps its tokens; a prefill recomputes its keys and
    # values) | restart (decodes again from token 1). Same tokens either way.
    c.rollout.paged.preemption = "recompute"
    # Decode weights: replicated | tensor (split over decode_tensor chips; 0 = parallel.mesh.tensor
    # when > 1, else 4) | auto (the faster by `tempo-jax compile`'s rollout estimate, reported).
    c.rollout.paged.decode_layout = "auto"
    c.rollout.paged.decode_tensor = 0
    c.rollout.max_generation_batches = 10  # group filter: generation batches before an error

    # --- the TEMPO schedule ------------------------------------------------------------------
    c.tempo = ml_collections.ConfigDict()
    c.tempo.advantage = "em_token"  # em_token | em_outcome (TEMPO methods' estimator)
    c.tempo.recalibrate_every = 4  # phased tempo: an E-step before every k-th M-step
    # tempo_mixed: the critic's value-loss update on the mixed batch's labeled rows runs on every
    # k-th step (1 = every step, the authors' loop); the labeled rows stay in every step's batch
    # (policy update and whitening), so k varies only how often the critic is recalibrated.
    c.tempo.mixed_recalibrate_every = 1
    c.tempo.critic_updates = 2  # critic optimizer steps per E-step (and per mixed step)
    c.tempo.critic_warmup_steps = 4  # E-steps on the initial policy before TTT (0 = none)
    c.tempo.policy_trains_on_labeled = False  # phased tempo: M-step also on graded D_L rollouts
    # em_token whitening of a phased M-step: batch (its D_U tokens) | with_labeled (plus the last
    # graded D_L batch's tokens, as in the authors' mixed batch) | question (per prompt group).
    c.tempo.whiten_scope = "batch"
    c.tempo.estep_group_filter = False  # E-steps / warm-up drop all-right and all-wrong groups
    # Critic warm-up / E-steps: K corrupted copies of graded-right D_L rollouts (one step's
    # arithmetic or copied operand broken, target -1) join each critic batch (0 = none;
    # tempo_jax/tempo/critic_negatives.py). prompts_per_step x n + K must divide over the mesh's
    # row shards, as every batch does.
    c.tempo.critic_negatives = 0
    # The critic's initial decoder: 0 = a copy of the (SFT) policy, the authors' choice; N > 0 = a
    # copy of that policy fine-tuned on D_L's solutions for N more steps (the `sft` recipe, saved
    # under WORKDIR/critic_sft): a critic that computes the task better than the policy it checks.
    c.tempo.critic_sft_steps = 0
    # tempo_oracle / tempo_mixed_oracle: each D_U row's hidden-answer reward flips with this
    # probability (seeded per run seed, step and row): a reward of within-question AUROC 1 - p.
    c.tempo.oracle_flip_prob = 0.0

    # --- optimizers, losses, micro-batches, dtypes (tempo_jax.train) -------------------------
    c.train = train.get_config()

    # --- supervised fine-tuning before TTT ---------------------------------------------------
    c.sft = ml_collections.ConfigDict()
    c.sft.steps = 0  # SFT steps on D_L solutions before TTT (0 = skip)
    c.sft.batch_size = 32  # sequences per SFT step
    c.sft.learning_rate = 3e-3  # AdamW peak learning rate (cosine decay to 10%)
    c.sft.warmup_steps = 20  # linear warm-up steps

    # --- evaluation --------------------------------------------------------------------------
    c.eval = ml_collections.ConfigDict()
    c.eval.n = 8  # samples per problem (mean@n, pass@k, maj@n)
    c.eval.ks = (1, 2, 4, 8)  # pass@k values reported (k <= n)
    c.eval.temperature = 1.0  # sampling temperature of mean@n
    c.eval.num_problems = 64  # problems per split per evaluation (at most; fewer if the split is)
    c.eval.greedy = True  # also report greedy accuracy
    # label -> dataset split: the unlabeled TTT questions and the holdout.
    c.eval.splits = ml_collections.ConfigDict({"unlabeled": "unlabeled", "holdout": "eval"})

    # --- grader ------------------------------------------------------------------------------
    c.grader = ml_collections.ConfigDict()
    c.grader.num_workers = 2  # grading worker processes
    c.grader.timeout_s = 5.0  # wall-clock limit per graded answer (a timeout counts as wrong)

    # --- parallelism and checkpoints ---------------------------------------------------------
    c.parallel = parallel.get_config()
    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.keep = 3  # keep the last N checkpoints
    c.checkpoint.async_save = True  # save in the background
    c.checkpoint.min_free_mb = 256  # fail before training when the workdir has less free space
    c.checkpoint.max_consecutive_skips = 3  # stop after K steps in a row with a non-finite update
    c.checkpoint.async_timeout_s = 1200  # a background save failing after this long (Orbax's)
    # An eval metric (e.g. "eval/unlabeled/mean@8"): its best checkpoint is kept besides the last
    # `keep` (every eval step is then saved). "" = keep the last `keep` only.
    c.checkpoint.keep_best = ""
    c.checkpoint.keep_best_mode = "max"  # max | min: which value of keep_best is best
    return c
