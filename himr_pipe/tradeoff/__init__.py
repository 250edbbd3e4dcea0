"""``himr-pipe tradeoff``: what each privacy setting leaks and costs, measured on the owner's own data.

The leak of a setting and its cost in accuracy both depend on the data: on
digits every bit of information sits in 1-pixel seams (a gap destroys it),
on photos the patches carry texture and edges of their own. So the owner
measures both on a labelled sample of their own images, with the product's
own code paths, before encrypting the whole set:

1. **Sample**: ``samples`` images of SRC (an ImageNet-style folder), drawn
   per class in proportion to the class sizes (stratified), deterministic
   for ``seed``, split into train and validation (``val_share``). The sample
   is a folder of links in the work directory, never inside SRC.
2. **Encrypt** each candidate setting with ``himr-pipe encrypt-shards``
   itself (``--seed``, ``--no-audit``, the user's ``--format``; train with
   ``seed``, validation with ``seed + 1``).
3. **Attack** the stored validation shards with the product's audit
   (:func:`himr_pipe.audit.report.audit_out`): neighbour and direct accuracy
   of the strongest attack we have, and whether the leak budget is met.
   These are *lower bounds* on the leak: a stronger attack may recover more.
4. **Train** the same small model with the same budget on every setting
   (:data:`RECIPE`, through :func:`himr_pipe.train.trainer.train`, on a GPU
   where there is one), ``seeds`` training seeds each, and report held-out
   top-1, its spread over seeds and the cost against ``none``.
5. **Recommend** the setting that meets the leak budget at the smallest
   cost. ``none`` is never recommended; if no setting meets the budget, say so.

The sample must be large enough for the table to mean something, and the
command refuses (a usage error) before any work when it is not:

* the 95% half-width of a top-1 estimate on ``n_val`` validation images is
  at most ``1.96 * sqrt(p (1 - p) / n_val) <= 0.98 / sqrt(n_val)`` (worst
  case p = 0.5). It must be at most :data:`MAX_HALF_WIDTH` (0.10, so
  ``n_val >= 97``); even then two settings closer than about 1.4 times the
  half-width cannot be told apart, which the table says. ``n_val`` counts
  each class's validation share of its draw rounded per class, so the
  smallest ``samples`` depends on the class sizes
  (:func:`.sample.smallest_samples`; the refusal names it);
* every class needs :data:`MIN_TRAIN_PER_CLASS` training and
  :data:`MIN_VAL_PER_CLASS` validation images in the sample (a class with
  fewer is not learnt, or not measured, by a small model).

With ``--work DIR`` everything is kept, and a rerun into the same folder (after a crash, or with more
``--seeds``) reuses the shards and every finished training and attack (``DIR/results.json``).

The same code runs the benchmark (``benchmarks/bench_tradeoff.py``) on the
shapes proxy (:func:`himr_pipe.sample_data.make_shapes_classification`) and
on digits.

The package, by role: :mod:`.settings` (the candidate settings, the recipe and :class:`TradeoffRequest`, the
request whose defaults the command reads), :mod:`.sample` (the sample and its refusal rule), :mod:`.measure`
(one setting encrypted, attacked and trained; the time estimate), :mod:`.study` (:func:`run_tradeoff`, its
cache and the recommendation) and :mod:`.report` (the table and the report files).
"""

from .measure import encrypt, estimate, leak, train_one
from .report import format_table, markdown, notes, table_rows, write_report
# the refusal rule's constants stay in .sample, which reads them at each call (a copy here would not be read)
from .sample import check_sample, draw_sample, half_width, list_classes, smallest_samples, write_sample
from .settings import (AUDIT_SAMPLES, CANDIDATES, CLOSE, RECIPE, VAL_SHARE, Candidate, Recipe, TradeoffError,
                       TradeoffRequest, default_setting, pick_settings, refusal)
from .study import recommend, run_tradeoff

__all__ = ["AUDIT_SAMPLES", "CANDIDATES", "CLOSE", "RECIPE", "VAL_SHARE", "Candidate", "Recipe", "TradeoffError", "TradeoffRequest",
           "check_sample", "default_setting", "draw_sample", "encrypt", "estimate", "format_table", "half_width",
           "leak", "list_classes", "markdown", "notes", "pick_settings", "recommend", "refusal", "run_tradeoff", "smallest_samples",
           "table_rows", "train_one", "write_report", "write_sample"]

