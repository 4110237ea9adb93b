"""Shared machinery every method builds on.

* :mod:`.inputs` and :mod:`.baselines`: validating ``inputs``, extra forward
  arguments and ``baselines``; giving results back in the caller's form.
* :mod:`.batching`: splitting rows into ``batch_size`` blocks, sample-major
  layouts of copies, per-example sums.
* :mod:`.forward`, :mod:`.state`: calling the model, and the guard that
  restores its state.
* :mod:`.backprop`: gradients of scores (with a backward rule) w.r.t. leaves.
* :mod:`.graph`: the walk over one call's autograd graph that applies a backward rule
  node by node; :mod:`.excitation_rules`: the per-node rules of excitation backprop.
* :mod:`.tokens`: reading ViT tokens and channels-last maps as ``(N, C, h, w)``.
* :mod:`.layers`: finding a layer by name.
* :mod:`.quadrature`, :mod:`.randomness`, :mod:`.signatures`: integration
  rules, private random generators, keyword forwarding.
"""
