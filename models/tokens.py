"""The special-token strings the system places and parses: Qwen3-VL's own (the same in the
tiny stand-in tokenizer and the released one) and the two this project adds for SQR."""

# Qwen3-VL's special tokens in their id order.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
    "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
QWEN_ADDED_TOKENS = ["<tool_call>", "</tool_call>", "<think>", "</think>"]
REFINE_TOKEN = "<REFINE>"
SQR_SLOT_TOKEN = "<|sqr_slot|>"
# Tokens that only the prompt builder may place: the policy never samples them.
NEVER_GENERATED = ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",
                   "<|video_pad|>", SQR_SLOT_TOKEN]
