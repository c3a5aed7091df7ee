"""Model-side code: the embedder and the model host. torch/transformers/peft are imported only in here (and in the
activation/parametric cube modules), always lazily, so ``import memos`` stays light."""
