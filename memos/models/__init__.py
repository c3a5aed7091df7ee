"""Model-side code: the embedder and the model host. torch/transformers/peft are imported only in here (and in the
activation/parametric cube modules), always lazily, so ``import memos`` stays light."""

import os

# Before torch is first imported: OpenMP threads that spin while waiting steal the CPU from everything else on a
# small machine (embedding one sentence took 589-769 ms with the default and 36-50 ms with PASSIVE under load).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# ...but a thread that sleeps as soon as an operation ends pays a futex wake-up at the start of the next one, and
# training runs thousands of small operations a step. A short spin first (GNU OpenMP's count: ~30 us here; PASSIVE
# alone means 0) took a LoRA training step from 656 to 424 ms (0.65x, as fast as ACTIVE's 402 ms), while a 2-thread
# embedding beside 3 busy processes took 33 ms p50 against 27 ms with no spin (52 ms with 10000, 73 ms with the
# default policy). docs/parametric.md, "Faster distillation, fifth pass".
os.environ.setdefault("GOMP_SPINCOUNT", "3000")
