"""Serving: the batched multi-adapter engine behind the playground, and PEFT's pool for what it cannot serve.

``scheduler.py`` gives each base model one thread that owns its engine:
requests from any thread join the running batch between decode steps and
stream back (the playground's panes are one batch). ``pool.py`` +
``generation.py`` answer with PEFT the few adapters that have no plain-LoRA
export (``modules_to_save``, trained biases, LoRA on embeddings): one base
model in memory, adapters attached by name, one reply at a time under a lock.
``servable.py`` turns DoRA, MiSS, LoRAPrune and the other PEFT types into a
plain LoRA the engine serves (exact or SVD at a rank, the error measured).

``bank.py`` + ``lora_ops.py`` + ``engine.py`` are an S-LoRA-style engine
(composition spec §8): many requests, each on its own LoRA adapter or none,
decoded together with one forward per step on one base model. Why it is written
here rather than taken from a library:

- vLLM, SGLang and LoRAX serve many adapters with custom GPU kernels; they need
  a GPU (vLLM is an optional extra here) and nothing of theirs runs on the CPUs
  most studio users have.
- PEFT's ``generate(..., adapter_names=[...])`` does run a mixed batch (per
  layer it loops over the distinct adapters, like our segmented path), but
  every adapter must be loaded into the PeftModel as modules for as long as it
  may be asked for (no bounded slots, no paging from host RAM, no pinning),
  the batch is static (every row runs until the longest one ends; nothing
  joins mid-way), one generate call has one temperature/top-p/seed/stop for
  all rows, and decode steps still loop per adapter where one gather-BMM does.
  The engine adds those: a fixed number of slots per layer with LRU paging,
  gather-BMM for decode and segments for prefill, rows leaving and joining
  between decode steps, per-row sampling. DoRA and other non-LoRA adapters
  join the batch through their plain-LoRA export (``servable.py``).
"""
