"""Shared machinery every method builds on.

* :mod:`.inputs` and :mod:`.baselines`: validating ``inputs``, extra forward
  arguments and ``baselines``; giving results back in the caller's form.
* :mod:`.batching`: splitting rows into ``batch_size`` blocks, sample-major
  layouts of copies, per-example sums.
* :mod:`.forward`, :mod:`.state`: calling the model, and the guard that
  restores its state.
* :mod:`.backprop`: gradients of scores (with a backward rule) w.r.t. leaves.
* :mod:`.layers`: finding a layer by name.
* :mod:`.quadrature`, :mod:`.randomness`, :mod:`.signatures`: integration
  rules, private random generators, keyword forwarding.
"""
