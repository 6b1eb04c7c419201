"""Models: the tiny Qwen3-VL policy and embedder factory, the SQR heads (refine and
append projectors), and the one loader that opens tiny and real checkpoints alike
from a local Hugging Face directory."""
