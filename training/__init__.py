"""Ray Train entrypoints: teacher training, distillation and the whole pipeline (``training.pipeline``)."""
