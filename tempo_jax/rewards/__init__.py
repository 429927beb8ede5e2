"""tempo_jax.rewards: the math answer grader and the baselines' self-rewards.

Import the submodules you need; this package file imports nothing, so that loading one reward (for
example self_rewards) does not start or import the grader's machinery.

  math             public grading API: extract_boxed, grade, grade_batch, answers_equivalent,
                   cluster_answers, GradingPool
  boxed            last-box extraction
  latex_normalize  Hendrycks-MATH style string normalisation
  quick_match      cheap in-process verdicts (strings, plain numbers, size limits)
  expression_parser, equivalence
                   parser-based symbolic / numeric equivalence and math-verify (worker side)
  grading_pool, grading_worker
                   worker processes with per-task time and memory limits
  clusters         equivalence clustering of answers within prompt groups
"""
