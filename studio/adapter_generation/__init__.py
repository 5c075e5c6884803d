"""ICM-LoRA adapter generation (spec §6): new LoRA weights from a task vector, without training.

* :mod:`.flatten` -- a PEFT LoRA checkpoint <-> a flat per-tensor z-scored vector θ.
* :mod:`.task_vector` -- c_t, the base model's mean last hidden state over ~30 task examples.
* :mod:`.cvae` -- the conditional VAE over θ and its size presets (paper, small, tiny).
* :mod:`.training` -- fitting the CVAE (spec defaults: lr 2e-4, batch 2, cosine, seed 2024).
* :mod:`.generator` -- train on checkpoints of several tasks, save/load, generate a PEFT adapter.

"generation" elsewhere in the studio means text generation; hence the longer package name.
"""
