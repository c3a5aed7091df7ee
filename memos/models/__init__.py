"""Model-side code: the embedder and the model host. torch/transformers/peft are imported only in here (and in the
activation/parametric cube modules), always lazily, so ``import memos`` stays light."""

import os

# Before torch is first imported: OpenMP threads that spin while waiting steal the CPU from everything else on a
# small machine (embedding one sentence took 589-769 ms with the default and 36-50 ms with PASSIVE under load).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
