"""Benchmarks. The single entry point, ``python -m benchmarks``, prints one table: for each
(model, method) on real MNIST, the wall time against the eager floor and the hardware floor,
the peak RSS and the verdict; it also writes ``results.json`` and ``results.md`` under
``--out`` (default ``runs/bench``). The other scripts in this folder are older, single-purpose
figures (``python benchmarks/<name>.py``).

Rows. Models: ``cnn`` (the small CNN) and ``cnn-heavy`` (the classic Keras MNIST CNN: two
unpadded 3x3 convolutions of 32 and 64 channels, a 9,216-wide dense layer). Methods:
NeuralCleanse (``nc``, ``imc`` preset, full budget), ABS (``abs``), STRIP (``strip``: the
paper's variant; ``strip-original``), TrojanNN (``trojannn``) and TrojanNN* (``imc``), all at
their default parameters, and ``nc-serial`` (NeuralCleanse one label at a time: asked for, or
on CUDA). The detectors inspect a BadNet model (size 0.15, opaque white, target 0; 1 epoch
fine-tuned from the clean model); the attacks start from the clean model. Both are cached in
``<out>/<model>/{clean,badnet}`` and reused (``--fresh`` rebuilds them).

Columns (``benchmarks.harness.COLUMNS``):

* wall (s): the method as a user runs it: a detector's ``inspect(model, data)``, STRIP's
  ``evaluate_filter`` (fit on 1,000 clean inputs, score 1,000 clean and the stamped ones), an
  attack's ``fit(model, data)``; not the model loading. On CUDA the clock is read after a
  synchronisation.
* eager floor (s): the same number of forward (and, where the method back-propagates,
  backward-to-input; with the weight gradients and an SGD step for re-training steps) passes of
  the same model at the same batch sizes in plain eager PyTorch (``x.requires_grad_(True);
  model(x) -> scalar -> backward``), timed in the same process just before the method. The
  passes are counted from the method's parameters (``benchmarks.methods``: NeuralCleanse's
  full ``budget_steps()`` x every label, so its early stop counts as a gain), or from what the
  method recorded where that decides its result (ABS's candidates, the attacks' epochs and
  outer iterations); a batch size known only after the run is timed after it, in a fresh
  process. Each (kind, batch) is timed, after one warm-up, over 20 iterations or 3 s, whichever
  comes first (at most as many as the method runs), and extrapolated linearly to the count.
  glibc's allocator is at its defaults for the floor, as a plain PyTorch program has it.
* speed vs floor: eager floor / wall; above 1x the method beats plain eager PyTorch.
* vs floor, tuned allocator: the same ratio against the floor timed again after the method,
  under the allocator settings the toolkit applies (:mod:`eviltwins.allocator`: freed memory
  kept for reuse, so fewer page faults): how much of the gain is the method's own passes,
  layout and exact rewrites rather than the allocator.
* GFLOP: the floor's work, counted with ``torch.utils.flop_counter.FlopCounterMode`` over one
  iteration of each (kind, batch) and multiplied by its count.
* hardware floor (s): those FLOPs / the device's fp32 peak, measured in the same run as the best
  of a few timings of an n x n @ n x n matmul (n = 2048 on CPU, 8192 on CUDA; TF32 off).
* share of peak: FLOPs / wall / peak.
* peak RSS (MB, MiB): the peak resident memory of the whole row process (interpreter, torch,
  model, data in memory and the method's work), each row in a fresh subprocess
  (``python -m benchmarks.row``); the floor runs first, then its memory is freed and the peak
  mark reset (Linux ``/proc/self/clear_refs``), so the figure is the method's.
* verdict: detectors: the flagged labels and the target's key score (NeuralCleanse's anomaly
  index, ABS's REASR), expected: label 0 flagged (``ok``); STRIP: F1 and AUC; attacks: ASR,
  efficacy and clean-accuracy drop.

A row of ``results.json`` (``rows``): ``model``, ``method``, ``label`` (the method's name),
``device``, ``dataset``, ``quick``, ``wall_s``, ``floor_s``, ``speed_vs_floor``,
``allocator_tuned``, ``floor_tuned_s``, ``speed_vs_tuned_floor``, ``flops``,
``hw_floor_s``, ``share_of_peak``, ``peak_flops_per_s``, ``peak_rss_mb``,
``rss_at_start_mb`` (before the method), ``rss_peak_reset`` (whether the peak mark was reset),
``verdict``, ``ok`` (bool, or null where nothing is expected), ``threads``, ``floor_phases``
(per phase: ``name``, ``kind`` fwd|bwd_input|train, ``batch``, ``count``, ``iter_s``,
``iter_flops``, ``timed_iters``, ``floor_s``) and ``details`` (the figures behind the verdict);
a failed row has ``error``. The document also holds ``command``, ``hardware`` and ``peaks``.
"""
