"""The tiny stand-ins for Qwen3-VL-2B-Instruct and Qwen3-VL-Embedding-2B on machines without a
model hub: a tokenizer trained on the system's own words, the model factory, and the two
pretrainings that give them something to see. Entry points and tests use it; the production
packages never import it."""
