"""Evaluation of adapters and base models: loss/perplexity, exact match, ROUGE-L, accuracy.

- ``metrics``   pure metric functions (no model)
- ``examples``  which rows are read, which metrics fit them, prompt/reference pairs
- ``loading``   base model + PEFT adapter (safetensors only), or the bare base
- ``generate``  greedy batched generation with the chat template (left padding)
- ``scoring``   the loss pass and the generation pass
- ``job``       ``run_eval_job(request, reporter, ctx)``, the handler of ``eval`` jobs
"""
