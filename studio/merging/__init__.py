"""Merging adapters: one base model's adapters combined into a new plain PEFT LoRA.

- :mod:`studio.merging.registry`: the merge methods by name (a method = one file + one line there);
- :mod:`studio.merging.methods`: the arithmetic on weight changes (linear, TIES, DARE);
- :mod:`studio.merging.lego`: LoRA-LEGO, which clusters the parents' rank units instead;
- :mod:`studio.merging.deltas`: each adapter's weight change per module, read through PEFT;
- :mod:`studio.merging.checks`: which adapters can be merged, with the reason when not;
- :mod:`studio.merging.job`: the ``merge`` job that ties them together and registers the result.
"""
